"""Running eval cases through the project's promptfoo: the one path the gate and the back-tests share.

    run_promptfoo_tests(tests=[(case, Target), ...], beat=..., repeat=1)  -> PromptfooResult
        builds the config (each case's assertions and llm-rubric exactly as reviews.suite.promptfoo_test
        writes them), then run_config(...)
    run_config(config=..., answers=..., beat=..., repeat=1)               -> PromptfooResult
        writes provider.py + answers.json + promptfooconfig.yaml into a temporary directory, runs
        `promptfoo eval` there with the quiet offline environment, a time limit and a heartbeat,
        stops it (the whole process group) on timeout or when `beat()` says the work is no longer
        ours, and parses results.json into one row per test and repeat.

The judge's calls keep the model endpoint's limits (runs.model_limits): for each eval, promptfoo is
pointed at a LimitingProxy on 127.0.0.1 (OPENAI_BASE_URL and every judge provider's apiBaseUrl, in
the config file written for that eval only), which forwards each call to the endpoint once it holds
one of the endpoint's slots (MODEL_MAX_CONCURRENT, MODEL_RPM, counted in Redis with the agent runs'
and every other model call's) and waits out 429 / 503 for their Retry-After. promptfoo's own `-j`
(GATE_CONCURRENCY, never above MODEL_MAX_CONCURRENT when that is set) only bounds one eval.

The answer promptfoo judges is served by a stored-answer provider (the seed's trace-output provider):
`answers.json` maps a key to an answer text, and each test names its key in the var `answer_key`
(the gate's tests name a run pk in `run_id`). So any text can be tested: a run's stored answer, a
proposal's fail or pass example.

Failures that mean nothing was judged raise PromptfooError (promptfoo missing, a malformed config,
an unreadable results file); a time limit, a run without results or a short results file come back
as `result.error` with whatever promptfoo wrote; a judge that did not answer is a row's `error`.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.conf import settings

from loopsite.childproc import PREEXEC
from loopsite.llm import endpoint, model_limits

HEARTBEAT_SECONDS = 2.0  # how often the caller's heartbeat runs while promptfoo runs
LOG_TAIL_CHARS = 6000
REQUEST_BACKOFF_MS = 1000  # promptfoo's wait before retrying a failed judge request (default 5000)
# How promptfoo's llm-rubric words a judge that did not answer (or did not answer JSON).
# "API error: <status>" is an answer that is not a verdict (e.g. the proxy's 502 / 504 for an endpoint it could
# not reach or that did not answer in time, or a 429 still refused after every retry).
JUDGE_ERROR_PREFIXES = ("API call error", "API error", "Could not extract JSON", "Error parsing", "Invalid JSON")
JUDGE_ERROR = "The judge did not answer: "

# The provider promptfoo runs: it serves a stored answer, as the seed's trace-output provider does.
PROVIDER_SOURCE = '''"""Loopsite's stored-answer provider for promptfoo: the answer named by the test's answer_key (or run_id)."""

import json
from pathlib import Path


def call_api(prompt, options, context):
    config = options.get("config") or {}
    path = Path(config.get("answers_file") or "answers.json")
    if not path.is_absolute():
        path = Path(__file__).resolve().parent / path
    answers = json.loads(path.read_text(encoding="utf-8"))
    variables = context.get("vars") or {}
    key = str(variables.get("answer_key") or variables.get("run_id"))
    if key not in answers:
        return {"error": f"No stored answer for {key} in {path.name}."}
    item = answers[key]
    return {"output": item["answer"], "metadata": {"trace_id": item["trace_id"], "question": item["question"]}}
'''
PROVIDER_FILE = "provider.py"
ANSWERS_FILE = "answers.json"
CONFIG_FILE = "promptfooconfig.yaml"
RESULTS_FILE = "results.json"
LOG_FILE = "promptfoo.log"


class PromptfooError(Exception):
    """promptfoo cannot judge anything as things stand; the message says why and what to do."""


@dataclass(frozen=True)
class Target:
    """One answer text to test a case on. `key` is unique within one promptfoo run."""

    key: str
    answer: str
    question: str
    trace_id: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)  # copied into the test's metadata (and each row's)


@dataclass
class PromptfooResult:
    rows: list[dict[str, Any]] = field(default_factory=list)  # parse_results rows + key, test_index, repeat_index, metadata
    config: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] | None = None  # promptfoo's results file
    log_tail: str = ""
    returncode: int | None = None
    seconds: float = 0.0
    timed_out: bool = False
    lost: bool = False  # beat() returned False: the work stopped being ours, promptfoo was stopped
    error: str = ""  # why the run as a whole has no (complete) results; "" when every test has its rows
    expected: int = 0  # tests x repeats


# --- the config ---------------------------------------------------------------------------------------


def provider_entry() -> dict[str, Any]:
    return {"id": f"file://{PROVIDER_FILE}", "label": "stored-answer", "config": {"answers_file": ANSWERS_FILE}}


def build_config(*, tests: Sequence[tuple[Any, Target]], description: str = "") -> tuple[dict[str, Any], dict[str, Any]]:
    """(promptfoo config, answers.json) for `tests`: each case's assertions and rubric as
    reviews.suite.promptfoo_test writes them, on its target's answer served by the provider."""
    from .suite import promptfoo_test

    config_tests, answers = [], {}
    for index, (case, target) in enumerate(tests):
        if target.key in answers and answers[target.key]["answer"] != target.answer:
            raise ValueError(f"Two different answers share the key {target.key!r}.")
        answers[target.key] = {"answer": target.answer, "question": target.question, "trace_id": target.trace_id}
        test = promptfoo_test(case)
        test["vars"] = {"answer_key": target.key, "question": target.question, "trace_id": target.trace_id}
        test["metadata"].update(target.metadata, answer_key=target.key, test_index=index)
        config_tests.append(test)
    config = {
        "description": description or f"Loopsite: {len(config_tests)} test(s) on stored answers",
        "prompts": ["{{question}}"],
        "providers": [provider_entry()],
        "tests": config_tests,
    }
    return config, answers


def write_files(directory: Path, *, config: dict[str, Any], answers: dict[str, Any]) -> Path:
    """provider.py, answers.json and promptfooconfig.yaml (JSON is valid YAML). Returns the config path."""
    (directory / PROVIDER_FILE).write_text(PROVIDER_SOURCE, encoding="utf-8")
    (directory / ANSWERS_FILE).write_text(json.dumps(answers, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    config_path = directory / CONFIG_FILE
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return config_path


def config_problems(config: Any, workdir: Path) -> list[str]:
    """What makes promptfoo fail slowly or obscurely, checked before it starts (promptfoo reports the rest).
    A missing Python provider file in particular makes promptfoo 0.121 restart its worker for minutes."""
    if not isinstance(config, dict):
        return ["the config is not a mapping"]
    problems = []
    providers = config.get("providers")
    if not isinstance(providers, list) or not providers:
        problems.append("`providers` must be a non-empty list")
    else:
        for provider in providers:
            provider_id = provider.get("id", "") if isinstance(provider, dict) else str(provider)
            if provider_id.startswith("file://") and not (workdir / provider_id[len("file://"):]).is_file():
                problems.append(f"the provider file {provider_id[len('file://'):]} does not exist")
    tests = config.get("tests")
    if not isinstance(tests, list) or not tests:
        problems.append("`tests` must be a non-empty list")
    elif not all(isinstance(test, dict) and isinstance(test.get("assert", []), list) for test in tests):
        problems.append("every test must be a mapping with a list of assertions")
    if not isinstance(config.get("prompts"), list) or not config.get("prompts"):
        problems.append("`prompts` must be a non-empty list")
    return problems


# --- running the CLI ----------------------------------------------------------------------------------


def judge_proxy():  # noqa: ANN201 - runs.model_limits.LimitingProxy, imported when an eval runs
    """The judge's way to the endpoint for one eval: each call waits for a slot and is cut off (a 504 promptfoo
    reports as the judge's error, without retrying it) after GATE_JUDGE_TIMEOUT_SECONDS."""
    from runs.model_limits import LimitingProxy

    timeout = settings.GATE_JUDGE_TIMEOUT_SECONDS
    return LimitingProxy(endpoint().base_url, model_limits(lease_seconds=timeout + 30), timeout=timeout)


def routed_config(config: dict[str, Any], judge_url: str) -> dict[str, Any]:
    """`config` with every OpenAI judge provider pointed at `judge_url` (the proxy); the rest unchanged."""
    def route(provider: Any) -> Any:
        if isinstance(provider, dict) and str(provider.get("id", "")).startswith("openai:"):
            return {**provider, "config": {**(provider.get("config") or {}), "apiBaseUrl": judge_url}}
        return provider

    tests = [
        {**test, "assert": [{**item, "provider": route(item["provider"])} if isinstance(item, dict) and "provider" in item
                            else item for item in test.get("assert") or []]} if isinstance(test, dict) else test
        for test in config.get("tests") or []
    ]
    return {**config, "tests": tests}


def promptfoo_env(workdir: Path, *, judge_url: str | None = None) -> dict[str, str]:
    """The quiet offline environment (FACTS.md) with the app's endpoint for the judge (through `judge_url`, the
    proxy, when given: the proxy then cuts off a silent judge, and promptfoo's own limit only bounds the
    waits for a slot or a Retry-After)."""
    ep = endpoint()
    timeout = settings.GATE_TIMEOUT_SECONDS if judge_url else settings.GATE_JUDGE_TIMEOUT_SECONDS
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("OPENAI_", "PROMPTFOO_")) and key not in ("SECRET_KEY", "DATABASE_URL")}
    env.update({
        "PROMPTFOO_DISABLE_TELEMETRY": "1",
        "PROMPTFOO_DISABLE_UPDATE": "1",
        "PROMPTFOO_DISABLE_SHARING": "1",
        "PROMPTFOO_CONFIG_DIR": str(workdir / ".promptfoo"),
        "PROMPTFOO_DISABLE_WAL_MODE": "1",
        "PROMPTFOO_PYTHON": sys.executable,
        "METADATA_SERVER_DETECTION": "none",
        "OPENAI_API_KEY": ep.api_key or "no-key",
        "OPENAI_BASE_URL": judge_url or ep.base_url,
        # A dead or silent judge fails in seconds: per-request timeout, short backoff (retries: suite.judge_provider).
        "REQUEST_TIMEOUT_MS": str(int(timeout * 1000)),
        "PROMPTFOO_REQUEST_BACKOFF_MS": str(REQUEST_BACKOFF_MS),
        # promptfoo's adaptive scheduler retries a refused judge as if rate-limited, with backoff up to minutes,
        # and ignores the provider's maxRetries; without it the provider's own bounded retries apply.
        "PROMPTFOO_DISABLE_ADAPTIVE_SCHEDULER": "1",
        "NO_COLOR": "1",
        "FORCE_COLOR": "0",
    })
    return env


def promptfoo_command(config_path: Path, results_path: Path, *, repeat: int = 1) -> list[str]:
    """The CLI call; cases are judged GATE_CONCURRENCY at a time (`-j`, promptfoo's --max-concurrency): each
    case mostly waits on the judge model. Never more at once than the endpoint allows (MODEL_MAX_CONCURRENT)."""
    concurrency = settings.GATE_CONCURRENCY
    if settings.MODEL_MAX_CONCURRENT:
        concurrency = min(concurrency, settings.MODEL_MAX_CONCURRENT)
    command = [settings.PROMPTFOO_BIN, "eval", "-c", str(config_path), "-o", str(results_path), "--no-cache",
               "--no-table", "-j", str(max(1, concurrency))]
    if repeat > 1:
        command += ["--repeat", str(repeat)]
    return command


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def tail(path: Path, limit: int = LOG_TAIL_CHARS) -> str:
    if not path.exists():
        return ""
    text = _ANSI.sub("", path.read_text(encoding="utf-8", errors="replace"))
    return text if len(text) <= limit else "…" + text[-limit:]


def last_lines(text: str, count: int = 6) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " | ".join(lines[-count:])[:1500]


@dataclass
class Outcome:
    returncode: int | None
    seconds: float
    timed_out: bool = False
    lost: bool = False  # the caller's row stopped being ours (beat() returned False)


def _stop(proc: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=3)
            return
        except subprocess.TimeoutExpired:
            continue


def not_installed_message(what: str) -> str:
    return (f"promptfoo is not installed: {settings.PROMPTFOO_BIN} does not exist. Run `make install` (npm ci) in "
            f"the project, or set PROMPTFOO_BIN, then re-run {what}.")


def run_cli(*, workdir: Path, config_path: Path, results_path: Path, beat: Callable[[], bool] | None = None,
            timeout_seconds: float, repeat: int = 1, what: str = "the gate", judge_url: str | None = None) -> Outcome:
    """Run the CLI from the project directory with a time limit, calling `beat()` every HEARTBEAT_SECONDS."""
    binary = settings.PROMPTFOO_BIN
    if not Path(binary).is_file():
        raise PromptfooError(not_installed_message(what))
    started = time.monotonic()
    with (workdir / LOG_FILE).open("wb") as log_file:
        try:
            proc = subprocess.Popen(
                promptfoo_command(config_path, results_path, repeat=repeat), cwd=settings.BASE_DIR,
                env=promptfoo_env(workdir, judge_url=judge_url), stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=PREEXEC,  # dies with the worker that started it
            )
        except OSError as exc:
            raise PromptfooError(f"Could not start promptfoo ({binary}): {exc}") from exc
        deadline = started + timeout_seconds
        try:
            while True:
                try:
                    proc.wait(timeout=max(0.05, min(HEARTBEAT_SECONDS, deadline - time.monotonic())))
                    break
                except subprocess.TimeoutExpired:
                    pass
                if time.monotonic() >= deadline:
                    _stop(proc)
                    return Outcome(proc.returncode, time.monotonic() - started, timed_out=True)
                if beat is not None and not beat():
                    _stop(proc)
                    return Outcome(proc.returncode, time.monotonic() - started, lost=True)
        except BaseException:
            _stop(proc)
            raise
    return Outcome(proc.returncode, time.monotonic() - started)


# --- reading the results ------------------------------------------------------------------------------


def _judge_error(components: list[dict]) -> str:
    """The reason of a rubric component whose judge did not answer (promptfoo then omits its `assertion`)."""
    for component in components:
        reason = str(component.get("reason") or "")
        if component["assertion"].get("type") == "llm-rubric" and reason.startswith(JUDGE_ERROR_PREFIXES):
            return reason
    return ""


def _with_assertions(components: list[dict], asserts: list[dict]) -> list[dict]:
    """Components with their assertion: promptfoo leaves it out when the check itself errored, so take the
    test's assertion at the same position (components follow the test's `assert` list in order)."""
    filled = []
    for index, component in enumerate(components):
        assertion = component.get("assertion")
        if not isinstance(assertion, dict):
            assertion = asserts[index] if index < len(asserts) and isinstance(asserts[index], dict) else {}
        filled.append({**component, "assertion": assertion})
    return filled


def _reason(grading: dict, components: list[dict]) -> str:
    """As the seed's promptfoo_summary: the overall reason, else the first failing component's, else the first's."""
    reason = str(grading.get("reason") or "")
    failing = next((c for c in components if isinstance(c, dict) and c.get("pass") is False), None)
    if not reason and failing:
        reason = str(failing.get("reason") or "")
    if not reason and components and isinstance(components[0], dict):
        reason = str(components[0].get("reason") or "")
    return reason


def parse_results(data: dict[str, Any]) -> list[dict[str, Any]]:
    """promptfoo's results file -> one dict per result, in promptfoo's test order: case_id, run_id, passed,
    score, reason, assertions, error, plus key, test_index, repeat_index (0 for the first run of a test,
    counted in promptfoo's testIdx order) and the test's metadata."""
    results = (data.get("results") or {}).get("results") or (data.get("results") or {}).get("outputs") or []
    results = sorted(enumerate(results), key=lambda pair: (_int(pair[1].get("testIdx"), pair[0]), pair[0]))
    seen: dict[Any, int] = defaultdict(int)
    rows = []
    for position, result in results:
        test_case = result.get("testCase") or {}
        metadata = test_case.get("metadata") or {}
        variables = test_case.get("vars") or {}
        grading = result.get("gradingResult") or {}
        components = _with_assertions([c for c in grading.get("componentResults") or [] if isinstance(c, dict)],
                                      list(test_case.get("assert") or []))
        error = ""
        if result.get("failureReason") == 2:  # promptfoo's ResultFailureReason.ERROR: no verdict at all
            error = str(result.get("error") or "promptfoo reported an error for this test.")
        elif judge := _judge_error(components):
            error = JUDGE_ERROR + judge
        score = result.get("score")
        test_index = metadata.get("test_index")
        identity = test_index if test_index is not None else (metadata.get("case_id"), variables.get("run_id"),
                                                              variables.get("answer_key"))
        repeat_index = seen[identity]
        seen[identity] += 1
        rows.append({
            "case_id": metadata.get("case_id"),
            "run_id": metadata.get("run_id") or variables.get("run_id"),
            "key": metadata.get("answer_key") or variables.get("answer_key") or "",
            "test_index": test_index if test_index is not None else position,
            "repeat_index": repeat_index,
            "metadata": metadata,
            "passed": bool(result.get("success")),
            "score": float(score) if isinstance(score, (int, float)) else None,
            "reason": _reason(grading, components)[:4000],
            "assertions": [
                {
                    "type": c["assertion"].get("type", ""),
                    "value": str(c["assertion"].get("value", ""))[:2000],
                    "pass": c.get("pass"),
                    "score": c.get("score"),
                    "reason": str(c.get("reason") or "")[:2000],
                }
                for c in components
            ],
            "error": error[:4000],
        })
    return rows


def _int(value: Any, default: int) -> int:
    return value if isinstance(value, int) else default


# --- the whole run ------------------------------------------------------------------------------------


def run_config(*, config: dict[str, Any], answers: dict[str, Any], beat: Callable[[], bool] | None = None,
               repeat: int = 1, timeout_seconds: float | None = None, what: str = "the gate",
               prefix: str = "loopsite-promptfoo-", temp_root: Path | None = None) -> PromptfooResult:
    """Run a built config (see build_config) in a temporary directory (inside `temp_root` when given,
    e.g. a work item's scratch_dir) and read its results."""
    repeat = max(1, int(repeat))
    timeout = settings.GATE_TIMEOUT_SECONDS if timeout_seconds is None else timeout_seconds
    tests = config.get("tests") if isinstance(config, dict) else None
    result = PromptfooResult(config=config, expected=(len(tests) if isinstance(tests, list) else 0) * repeat)
    with tempfile.TemporaryDirectory(prefix=prefix, dir=temp_root) as tmp, judge_proxy() as proxy:
        workdir = Path(tmp)
        config_path = write_files(workdir, config=routed_config(config, proxy.url) if isinstance(config, dict) else config,
                                  answers=answers)
        if problems := config_problems(config, workdir):
            raise PromptfooError(f"{what[0].upper()}{what[1:]}'s promptfoo config is malformed: {'; '.join(problems)}. "
                                 f"Nothing was run.")
        results_path = workdir / RESULTS_FILE
        outcome = run_cli(workdir=workdir, config_path=config_path, results_path=results_path, beat=beat,
                          timeout_seconds=timeout, repeat=repeat, what=what, judge_url=proxy.url)
        result.log_tail = tail(workdir / LOG_FILE)
        result.returncode, result.seconds = outcome.returncode, outcome.seconds
        result.timed_out, result.lost = outcome.timed_out, outcome.lost
        if outcome.lost:
            return result
        if outcome.timed_out:
            result.error = (f"promptfoo did not finish within {timeout} s and was stopped. "
                            f"Last output: {last_lines(result.log_tail) or '(none)'}")
            return result
        if not results_path.exists():
            result.error = (f"promptfoo exited with code {outcome.returncode} and wrote no results (a malformed config, "
                            f"or promptfoo could not start). Its output: {last_lines(result.log_tail) or '(none)'}")
            return result
        try:
            result.data = json.loads(results_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise PromptfooError(f"promptfoo's results file could not be read ({exc}). "
                                 f"Its output: {last_lines(result.log_tail)}") from exc
    result.rows = parse_results(result.data)
    if len(result.rows) != result.expected:
        result.error = (f"promptfoo returned {len(result.rows)} result(s) for {result.expected} test(s) (exit code "
                        f"{outcome.returncode}). Its output: {last_lines(result.log_tail)}")
    return result


def run_promptfoo_tests(*, tests: Sequence[tuple[Any, Target]], beat: Callable[[], bool] | None = None,
                        repeat: int = 1, timeout_seconds: float | None = None, what: str = "the gate",
                        description: str = "", prefix: str = "loopsite-promptfoo-") -> PromptfooResult:
    """Each (case, target) as a promptfoo test, run `repeat` times; rows carry test_index (the position in
    `tests`) and repeat_index. See the module docstring for what raises and what comes back as `error`."""
    if not tests:
        raise PromptfooError(f"Nothing to test: {what} has no case with an answer to judge.")
    config, answers = build_config(tests=tests, description=description)
    return run_config(config=config, answers=answers, beat=beat, repeat=repeat, timeout_seconds=timeout_seconds,
                      what=what, prefix=prefix)


def judge_errors(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [row for row in rows if row["error"].startswith(JUDGE_ERROR)]
