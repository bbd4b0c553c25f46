"""The promptfoo gate: the approved regression suite run on stored answers (the seed's Step 6).

    request_gate(cycle=... | harness=..., user)   a queued GateRun (the active one if there is one)
      -> tasks.run_gate_task                      claims it, then run_gate(gate_run)
    run_gate(gate_run)                            writes provider.py + answers.json + promptfooconfig.yaml
                                                  into a temporary directory, runs the project's promptfoo,
                                                  stores every row, the totals, the results file, the log tail

Which answers: each approved case is matched to one run of the gate's scope (a cycle's runs,
or without a cycle the harness's runs): its source run when that is in scope, else the latest
run there of the same question on the same dataroom. Cases with no such run are skipped and
listed. A matched run without an answer gives a row with an error instead of a verdict.

Failure is visible and fast: promptfoo missing, promptfoo exiting without results (a malformed
config), the time limit (GATE_TIMEOUT_SECONDS), a judge that does not answer (bounded retries
and a per-request timeout) all end with status failed and a readable reason; Re-run queues the
same gate run again. promptfoo's exit code 100 only means that some test failed.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from loopsite.llm import endpoint
from loopsite.models import AuditEvent
from loopsite.roles import APPROVER, ENGINEER, require_role
from runs.models import Harness, Run

from .models import Cycle, EvalCase, GateRow, GateRun
from .suite import promptfoo_test, suite_cases

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 2.0  # how often the worker beats while promptfoo runs
LOG_TAIL_CHARS = 6000
QUEUED_STALE_SECONDS = 300  # a queued gate run not claimed for this long lost its message
WAITING_STALE_SECONDS = 60  # a waiting gate run not checked for this long lost its poll
REQUEST_BACKOFF_MS = 1000  # promptfoo's wait before retrying a failed judge request (default 5000)
# How promptfoo's llm-rubric words a judge that did not answer (or did not answer JSON).
JUDGE_ERROR_PREFIXES = ("API call error", "Could not extract JSON", "Error parsing", "Invalid JSON")

# The provider promptfoo runs: it serves each run's stored answer, as the seed's trace-output provider does.
PROVIDER_SOURCE = '''"""Loopsite's stored-answer provider for promptfoo: the answer of the run named by the test's run_id."""

import json
from pathlib import Path


def call_api(prompt, options, context):
    config = options.get("config") or {}
    path = Path(config.get("answers_file") or "answers.json")
    if not path.is_absolute():
        path = Path(__file__).resolve().parent / path
    answers = json.loads(path.read_text(encoding="utf-8"))
    run_id = str((context.get("vars") or {}).get("run_id"))
    if run_id not in answers:
        return {"error": f"No stored answer for run {run_id} in {path.name}."}
    item = answers[run_id]
    return {"output": item["answer"], "metadata": {"trace_id": item["trace_id"], "question": item["question"]}}
'''
PROVIDER_FILE = "provider.py"
ANSWERS_FILE = "answers.json"
CONFIG_FILE = "promptfooconfig.yaml"
RESULTS_FILE = "results.json"
LOG_FILE = "promptfoo.log"


class GateError(Exception):
    """The gate cannot start or finish as things stand; the message is shown on the gate page."""


# --- what the gate runs -------------------------------------------------------------------------------


def scope_runs(gate_run: GateRun) -> list[Run]:
    """The runs whose answers this gate run may judge."""
    queryset = gate_run.cycle.runs.all() if gate_run.cycle_id else Run.objects.filter(harness_id=gate_run.harness_id)
    return list(queryset.select_related("question"))


def match_runs(cases: list[EvalCase], runs: list[Run]) -> dict[int, Run | None]:
    """case pk -> the run whose answer it judges: its source run when in `runs`, else the latest run of
    the same question on the same dataroom (succeeded runs first), else None."""
    by_pk = {run.pk: run for run in runs}
    ordered = sorted(runs, key=lambda run: (run.status == Run.Status.SUCCEEDED, run.finished_at or run.created_at,
                                            run.pk), reverse=True)
    by_question: dict[tuple[int, int], Run] = {}
    for run in ordered:
        by_question.setdefault((run.question_id, run.dataroom_id), run)
    matched: dict[int, Run | None] = {}
    for case in cases:
        source = case.source_run
        matched[case.pk] = by_pk.get(case.source_run_id) or by_question.get((source.question_id, source.dataroom_id))
    return matched


def has_answer(run: Run) -> bool:
    return run.status == Run.Status.SUCCEEDED and bool((run.final_answer or "").strip())


def no_answer_reason(run: Run) -> str:
    if run.status == Run.Status.SUCCEEDED:
        return f"Run #{run.pk} finished without an answer."
    if run.status == Run.Status.FAILED:
        return f"Run #{run.pk} failed, so there is no answer to judge: {(run.last_error or 'no reason stored')[:300]}"
    return f"Run #{run.pk} is still {run.get_status_display().lower()}."


def build_gate_config(*, cases, answers_by_case: dict[int, Run]) -> dict[str, Any]:
    """A promptfoo config: one test per case on the run it is matched to (reviews.suite.promptfoo_test),
    answered by the stored-answer provider (provider.py reading answers.json beside the config)."""
    tests = []
    for case in cases:
        run = answers_by_case[case.pk]
        test = promptfoo_test(case, run)
        test["vars"].pop("answer", None)  # the provider serves it from answers.json
        test["vars"]["run_id"] = run.pk
        test["metadata"].update(run_id=run.pk, source_run=case.source_run_id)
        tests.append(test)
    return {
        "description": f"Loopsite gate: {len(tests)} approved case(s) on stored answers",
        "prompts": ["{{question}}"],
        "providers": [{"id": f"file://{PROVIDER_FILE}", "label": "stored-answer",
                       "config": {"answers_file": ANSWERS_FILE}}],
        "tests": tests,
    }


def gate_answers(runs) -> dict[str, dict[str, str]]:
    """answers.json: run pk -> the run's stored answer, question and trace id."""
    return {str(run.pk): {"answer": run.final_answer or "", "question": run.question.text, "trace_id": run.trace_id}
            for run in runs}


def write_gate_files(directory: Path, *, config: dict[str, Any], answers: dict[str, Any]) -> Path:
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


@dataclass
class Plan:
    """What a gate run will judge: promptfoo tests, rows the app fills in itself, skipped cases."""

    tested: list[EvalCase] = field(default_factory=list)
    answers_by_case: dict[int, Run] = field(default_factory=dict)
    unanswered: list[tuple[EvalCase, Run]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    order: dict[int, int] = field(default_factory=dict)


def plan_gate(gate_run: GateRun) -> Plan:
    cases = list(suite_cases().select_related("source_run"))
    matched = match_runs(cases, scope_runs(gate_run))
    scope = f"cycle {gate_run.cycle_id}" if gate_run.cycle_id else f"harness {gate_run.harness.version}"
    plan = Plan(order={case.pk: index for index, case in enumerate(cases)})
    for case in cases:
        run = matched[case.pk]
        if run is None:
            plan.skipped.append({"case_id": case.pk, "eval_id": case.eval_id, "title": case.title,
                                 "reason": f"No run of its question in {scope}."})
        elif has_answer(run):
            plan.tested.append(case)
            plan.answers_by_case[case.pk] = run
        else:
            plan.unanswered.append((case, run))
    return plan


# --- requesting, polling and re-running ---------------------------------------------------------------


def enqueue(gate_run: GateRun) -> None:
    from .tasks import run_gate_task

    run_gate_task.delay_on_commit(gate_run.pk)


def active_gate(*, cycle: Cycle | None = None, harness: Harness | None = None, kind: str = GateRun.Kind.BASELINE):
    queryset = GateRun.objects.filter(status__in=GateRun.ACTIVE_STATUSES, kind=kind)
    queryset = queryset.filter(cycle=cycle) if cycle is not None else queryset.filter(cycle__isnull=True, harness=harness)
    return queryset.order_by("created_at", "pk").first()


def request_gate(*, cycle: Cycle | None = None, harness: Harness | None = None, user,
                 kind: str = GateRun.Kind.BASELINE, baseline: GateRun | None = None) -> GateRun:
    """Queue a gate run on a cycle's answers, or (no cycle) on `harness`'s latest answers per question.

    Idempotent while one of the same kind is active there: that one is returned. A candidate gate
    run waits (status waiting) until its cycle's runs have finished. `user` None: started by the app.
    """
    if user is not None:
        require_role(user, APPROVER, ENGINEER)
    if cycle is None and harness is None:
        raise ValueError("A gate run needs a cycle or a harness version.")
    with transaction.atomic():
        if cycle is not None:
            cycle = Cycle.objects.select_for_update().select_related("harness").get(pk=cycle.pk)
            harness = cycle.harness
        else:
            harness = Harness.objects.select_for_update().get(pk=harness.pk)
        active = active_gate(cycle=cycle, harness=harness, kind=kind)
        if active is not None:
            return active
        waiting = kind == GateRun.Kind.CANDIDATE
        gate_run = GateRun.objects.create(
            cycle=cycle, harness=harness, kind=kind, baseline=baseline, requested_by=user,
            status=GateRun.Status.WAITING if waiting else GateRun.Status.QUEUED, heartbeat_at=timezone.now(),
        )
        where = f"cycle {cycle.pk}" if cycle is not None else f"the latest answers of {harness.version}"
        AuditEvent.record(
            actor=user, action="gate.request", obj=gate_run,
            summary=f"{gate_run.get_kind_display()} gate run {gate_run.pk} requested on {where}"
                    + (f" against gate run {baseline.pk}" if baseline is not None else ""),
            after={"gate_run": gate_run.pk, "harness": harness.version, "cycle": cycle.pk if cycle else None,
                   "kind": kind, "baseline": baseline.pk if baseline is not None else None},
        )
        enqueue(gate_run)
    return gate_run


def rerun_gate(*, gate_run: GateRun, user) -> bool:
    """Queue a finished gate run again (approvers and engineers). False while it is still active."""
    require_role(user, APPROVER, ENGINEER)
    with transaction.atomic():
        if not gate_run.requeue(by=user):
            return False
        enqueue(gate_run)
    return True


def runs_still_active(gate_run: GateRun) -> int:
    if not gate_run.cycle_id:
        return 0
    return Run.objects.filter(cycles=gate_run.cycle_id, status__in=Run.ACTIVE_STATUSES).count()


def poll_waiting(*, gate_run: GateRun) -> bool:
    """A waiting gate run: queued once none of its cycle's runs is queued or running (True), else
    checked again in GATE_POLL_SECONDS by re-enqueueing the task (False). Of two deliveries of
    the same poll only one re-enqueues: the conditional UPDATE on heartbeat_at decides."""
    now = timezone.now()
    row = GateRun.objects.filter(pk=gate_run.pk, status=GateRun.Status.WAITING)
    if not runs_still_active(gate_run):
        return bool(row.update(status=GateRun.Status.QUEUED, heartbeat_at=now))
    if row.filter(Q(heartbeat_at=gate_run.heartbeat_at) if gate_run.heartbeat_at else Q(heartbeat_at__isnull=True)
                  ).update(heartbeat_at=now):
        from .tasks import run_gate_task

        run_gate_task.apply_async((gate_run.pk,), countdown=settings.GATE_POLL_SECONDS)
    return False


def gate_when_decided(*, cycle_id: int, user) -> None:
    """Called when an eval proposal is approved or rejected: once the transaction commits, start the
    gate if no proposal of the cycle is left undecided (and AUTO_GATE is on). Never breaks the decision."""
    transaction.on_commit(partial(_start_if_decided, cycle_id, user))


def _start_if_decided(cycle_id: int, user) -> GateRun | None:
    if not settings.AUTO_GATE:
        return None
    try:
        cycle = Cycle.objects.get(pk=cycle_id)
        statuses = set(cycle.eval_cases.values_list("status", flat=True))
        if EvalCase.Status.PROPOSED in statuses or EvalCase.Status.APPROVED not in statuses:
            return None
        return request_gate(cycle=cycle, user=user)
    except Exception:  # noqa: BLE001 - the decision stands even if the gate cannot start
        log.exception("cycle %s: could not start the gate after the last eval decision", cycle_id)
        return None


def on_gate_finished(gate_run: GateRun) -> None:
    """The one place that reacts to a finished gate run (succeeded or failed).

    The HALO step will be chained from here (e.g. request an optimization for a succeeded
    baseline gate run of a cycle). Keep it quick and let nothing in here fail the gate run.
    """
    log.info("gate run %s finished: %s (%s/%s passed)", gate_run.pk, gate_run.status, gate_run.passed, gate_run.total)
    from .optimization import halo_after_gate  # HALO starts on a cycle's succeeded gate (AUTO_HALO)

    halo_after_gate(gate_run)


# --- running promptfoo --------------------------------------------------------------------------------


def promptfoo_env(workdir: Path) -> dict[str, str]:
    """The quiet offline environment (FACTS.md) with the app's endpoint for the judge."""
    ep = endpoint()
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
        "OPENAI_BASE_URL": ep.base_url,
        # A dead or silent judge fails in seconds: per-request timeout, short backoff (retries: suite.judge_provider).
        "REQUEST_TIMEOUT_MS": str(int(settings.GATE_JUDGE_TIMEOUT_SECONDS * 1000)),
        "PROMPTFOO_REQUEST_BACKOFF_MS": str(REQUEST_BACKOFF_MS),
        "NO_COLOR": "1",
        "FORCE_COLOR": "0",
    })
    return env


def promptfoo_command(config_path: Path, results_path: Path) -> list[str]:
    return [settings.PROMPTFOO_BIN, "eval", "-c", str(config_path), "-o", str(results_path), "--no-cache", "--no-table"]


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def tail(path: Path, limit: int = LOG_TAIL_CHARS) -> str:
    if not path.exists():
        return ""
    text = _ANSI.sub("", path.read_text(encoding="utf-8", errors="replace"))
    return text if len(text) <= limit else "…" + text[-limit:]


def _last_lines(text: str, count: int = 6) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " | ".join(lines[-count:])[:1500]


@dataclass
class Outcome:
    returncode: int | None
    seconds: float
    timed_out: bool = False
    lost: bool = False  # the row stopped being ours (the sweep took it back)


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


def run_promptfoo(*, gate_run: GateRun, workdir: Path, config_path: Path, results_path: Path) -> Outcome:
    """Run the CLI from the project directory with a time limit, beating the row while waiting."""
    binary = settings.PROMPTFOO_BIN
    if not Path(binary).is_file():
        raise GateError(f"promptfoo is not installed: {binary} does not exist. Run `make install` (npm ci) in the "
                        f"project, or set PROMPTFOO_BIN, then re-run the gate.")
    started = time.monotonic()
    with (workdir / LOG_FILE).open("wb") as log_file:
        try:
            proc = subprocess.Popen(
                promptfoo_command(config_path, results_path), cwd=settings.BASE_DIR, env=promptfoo_env(workdir),
                stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
            )
        except OSError as exc:
            raise GateError(f"Could not start promptfoo ({binary}): {exc}") from exc
        deadline = started + settings.GATE_TIMEOUT_SECONDS
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
                if not gate_run.beat():
                    _stop(proc)
                    return Outcome(proc.returncode, time.monotonic() - started, lost=True)
        except BaseException:
            _stop(proc)
            raise
    return Outcome(proc.returncode, time.monotonic() - started)


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
    """promptfoo's results file -> one dict per test: case_id, run_id, passed, score, reason, assertions, error."""
    results = (data.get("results") or {}).get("results") or (data.get("results") or {}).get("outputs") or []
    rows = []
    for result in results:
        test_case = result.get("testCase") or {}
        metadata = test_case.get("metadata") or {}
        grading = result.get("gradingResult") or {}
        components = _with_assertions([c for c in grading.get("componentResults") or [] if isinstance(c, dict)],
                                      list(test_case.get("assert") or []))
        error = ""
        if result.get("failureReason") == 2:  # promptfoo's ResultFailureReason.ERROR: no verdict at all
            error = str(result.get("error") or "promptfoo reported an error for this test.")
        elif judge := _judge_error(components):
            error = f"The judge did not answer: {judge}"
        score = result.get("score")
        rows.append({
            "case_id": metadata.get("case_id"),
            "run_id": metadata.get("run_id") or (test_case.get("vars") or {}).get("run_id"),
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


class _Lost(Exception):
    """The gate run stopped being ours while it ran (the sweep re-queued or failed it): keep nothing."""


def _store(gate_run: GateRun, *, plan: Plan, parsed: list[dict[str, Any]], error: str = "", **fields) -> None:
    """Replace the gate run's rows and finish it (succeeded, or failed with `error`), if it is still ours."""
    cases = {case.pk: case for case in plan.tested} | {case.pk: case for case, _ in plan.unanswered}
    runs = {run.pk: run for run in plan.answers_by_case.values()} | {run.pk: run for _, run in plan.unanswered}
    rows: list[GateRow] = []
    for item in parsed:
        case = cases.get(item["case_id"])
        if case is None:
            continue
        rows.append(GateRow(
            gate_run=gate_run, eval_case=case, run=runs.get(int(item["run_id"])) if item["run_id"] else None,
            position=plan.order.get(case.pk, 0), eval_id=case.eval_id, title=case.title, passed=item["passed"],
            score=item["score"], reason=item["reason"], assertions=item["assertions"], error=item["error"],
        ))
    for case, run in plan.unanswered:
        rows.append(GateRow(gate_run=gate_run, eval_case=case, run=run, position=plan.order.get(case.pk, 0),
                            eval_id=case.eval_id, title=case.title, passed=False, error=no_answer_reason(run)))
    errors = sum(1 for row in rows if row.error)
    passed = sum(1 for row in rows if row.passed and not row.error)
    now = timezone.now()
    changes = dict(total=len(rows), passed=passed, errors=errors, failed=len(rows) - passed - errors,
                   finished_at=now, heartbeat_at=now, **fields)
    if error:
        changes.update(status=GateRun.Status.FAILED, last_error=error[-8000:])
    else:
        changes.update(status=GateRun.Status.SUCCEEDED, last_error="")
    with transaction.atomic():
        if not GateRun.objects.filter(pk=gate_run.pk, status=GateRun.Status.RUNNING).update(**changes):
            raise _Lost()
        GateRow.objects.filter(gate_run=gate_run).delete()
        GateRow.objects.bulk_create(rows)
    gate_run.refresh_from_db()


def run_gate(*, gate_run: GateRun) -> GateRun:
    """Run a claimed gate run to its end; every outcome is stored on the row."""
    ep = endpoint()
    GateRun.objects.filter(pk=gate_run.pk).update(judge_model=settings.OPENAI_JUDGE_MODEL, endpoint=ep.base_url)
    try:
        _run(gate_run)
    except _Lost:
        log.warning("gate run %s is no longer running here; its results were discarded", gate_run.pk)
        return gate_run
    except GateError as exc:
        _fail(gate_run, str(exc))
    except Exception as exc:  # noqa: BLE001 - a bug must leave a visible, re-runnable failure, not a stuck row
        log.exception("gate run %s failed", gate_run.pk)
        _fail(gate_run, f"Unexpected error ({type(exc).__name__}): {exc}")
    gate_run.refresh_from_db()
    try:
        on_gate_finished(gate_run)
    except Exception:  # noqa: BLE001
        log.exception("gate run %s: on_gate_finished failed", gate_run.pk)
    return gate_run


def _fail(gate_run: GateRun, error: str) -> None:
    log.warning("gate run %s failed: %s", gate_run.pk, error)
    with transaction.atomic():
        if gate_run.fail(error, total=0, passed=0, failed=0, errors=0):
            GateRow.objects.filter(gate_run=gate_run).delete()


def _run(gate_run: GateRun) -> None:
    plan = plan_gate(gate_run)
    if not plan.tested and not plan.unanswered:
        raise GateError("Nothing to judge: the regression suite has no approved case with a run of its question here"
                        + (f" ({len(plan.skipped)} case(s) skipped)." if plan.skipped else "."))
    config = build_gate_config(cases=plan.tested, answers_by_case=plan.answers_by_case)
    stored_config = {**config, "skipped": plan.skipped}
    if not plan.tested:  # every matched run lacks an answer: nothing for promptfoo to do
        _store(gate_run, plan=plan, parsed=[], config=stored_config, results=None, log_tail="", returncode=None)
        return
    with tempfile.TemporaryDirectory(prefix=f"loopsite-gate-{gate_run.pk}-") as tmp:
        workdir = Path(tmp)
        config_path = write_gate_files(workdir, config=config, answers=gate_answers(plan.answers_by_case.values()))
        if problems := config_problems(config, workdir):
            raise GateError(f"The gate's promptfoo config is malformed: {'; '.join(problems)}. Nothing was run.")
        results_path = workdir / RESULTS_FILE
        outcome = run_promptfoo(gate_run=gate_run, workdir=workdir, config_path=config_path, results_path=results_path)
        log_tail = tail(workdir / LOG_FILE)
        if outcome.lost:
            raise _Lost()
        common = dict(config=stored_config, log_tail=log_tail, returncode=outcome.returncode)
        if outcome.timed_out:
            gate_run.fail(f"promptfoo did not finish within {settings.GATE_TIMEOUT_SECONDS} s and was stopped. "
                          f"Last output: {_last_lines(log_tail) or '(none)'}", **common, total=0, passed=0, failed=0,
                          errors=0, results=None)
            GateRow.objects.filter(gate_run=gate_run).delete()
            return
        if not results_path.exists():
            gate_run.fail(f"promptfoo exited with code {outcome.returncode} and wrote no results (a malformed config, "
                          f"or promptfoo could not start). Its output: {_last_lines(log_tail) or '(none)'}",
                          **common, total=0, passed=0, failed=0, errors=0, results=None)
            GateRow.objects.filter(gate_run=gate_run).delete()
            return
        try:
            data = json.loads(results_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise GateError(f"promptfoo's results file could not be read ({exc}). Its output: {_last_lines(log_tail)}")
    parsed = parse_results(data)
    error = ""
    if len(parsed) != len(plan.tested):
        error = (f"promptfoo returned {len(parsed)} result(s) for {len(plan.tested)} test(s) (exit code "
                 f"{outcome.returncode}). Its output: {_last_lines(log_tail)}")
    elif failing := [item for item in parsed if item["error"]]:
        judge = [item for item in failing if item["error"].startswith("The judge did not answer")]
        if judge:
            error = (f"The judge ({settings.OPENAI_JUDGE_MODEL} at {endpoint().base_url}) did not answer for "
                     f"{len(judge)} of {len(parsed)} test(s): {judge[0]['error'][len('The judge did not answer: '):][:500]} "
                     f"Check the model endpoint, then re-run the gate.")
        else:
            error = f"promptfoo reported an error for {len(failing)} of {len(parsed)} test(s): {failing[0]['error'][:500]}"
    _store(gate_run, plan=plan, parsed=parsed, error=error, results=data, **common)


# --- the sweep -----------------------------------------------------------------------------------------


def sweep_gate_runs() -> dict[str, int]:
    """Recover gate runs whose worker or message vanished (as runs.work.sweep_runs does for runs).

    - running, heartbeat older than WORK_STALE_SECONDS: queued again while attempts < RUN_MAX_ATTEMPTS, else failed;
    - queued and not claimed for QUEUED_STALE_SECONDS: enqueued again;
    - waiting: queued once its runs have finished; its poll enqueued again if not checked for WAITING_STALE_SECONDS.
    Every change is a conditional UPDATE, so concurrent sweeps act once.
    """
    now = timezone.now()
    counts = {"requeued": 0, "failed": 0, "reenqueued": 0, "released": 0}
    stale_before = now - timedelta(seconds=settings.WORK_STALE_SECONDS)
    lost_worker = Q(status=GateRun.Status.RUNNING) & (
        Q(heartbeat_at__lt=stale_before) | Q(heartbeat_at__isnull=True, started_at__lt=stale_before)
    )
    for gate_run in GateRun.objects.filter(lost_worker):
        row = GateRun.objects.filter(lost_worker, pk=gate_run.pk, attempts=gate_run.attempts)
        if gate_run.attempts < settings.RUN_MAX_ATTEMPTS:
            if row.update(status=GateRun.Status.QUEUED, heartbeat_at=now,
                          last_error=f"Worker lost during attempt {gate_run.attempts}; queued again."):
                counts["requeued"] += 1
                enqueue(gate_run)
        elif row.update(status=GateRun.Status.FAILED, finished_at=now,
                        last_error=f"Worker lost: no heartbeat for {settings.WORK_STALE_SECONDS} s after "
                                   f"{gate_run.attempts} attempt(s). Re-run the gate to try again."):
            counts["failed"] += 1
    queued_before = now - timedelta(seconds=QUEUED_STALE_SECONDS)
    lost_message = Q(status=GateRun.Status.QUEUED) & (
        Q(heartbeat_at__lt=queued_before) | Q(heartbeat_at__isnull=True, created_at__lt=queued_before)
    )
    for gate_run in GateRun.objects.filter(lost_message):
        if GateRun.objects.filter(lost_message, pk=gate_run.pk).update(heartbeat_at=now):
            counts["reenqueued"] += 1
            enqueue(gate_run)
    waiting = GateRun.objects.filter(status=GateRun.Status.WAITING)
    for gate_run in waiting:
        if not runs_still_active(gate_run):
            if waiting.filter(pk=gate_run.pk).update(status=GateRun.Status.QUEUED, heartbeat_at=now):
                counts["released"] += 1
                enqueue(gate_run)
            continue
        checked_before = now - timedelta(seconds=max(WAITING_STALE_SECONDS, 10 * settings.GATE_POLL_SECONDS))
        lost_poll = Q(heartbeat_at__lt=checked_before) | Q(heartbeat_at__isnull=True)
        if waiting.filter(lost_poll, pk=gate_run.pk).update(heartbeat_at=now):
            counts["reenqueued"] += 1
            enqueue(gate_run)
    if any(counts.values()):
        log.warning("gate sweep: %s", counts)
    return counts
