"""The regression suite as promptfoo sees it, and "Try it" on one case.

`promptfoo_config(cases=...)` is a complete, self-contained promptfoo config: each test
carries the stored answer of its case's source run as the var `answer`, promptfoo's
built-in `echo` provider returns the prompt `{{answer}}` unchanged, and the assertions
are the case's literal checks plus an `llm-rubric` graded by the judge model. No Python
provider and no files beside it are needed:

    ./node_modules/.bin/promptfoo eval -c loopsite-suite.yaml -o out.json --no-cache --no-table

`try_case(case=...)` does the same checks inside the app at once: literal assertions with
promptfoo's semantics, the rubric through the judge (Chat Completions, promptfoo's grading
prompt, short timeout, at most one retry).
"""

import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.utils import timezone

from loopsite.llm import endpoint, openai_client

from .models import EvalCase

OPENAI_DEFAULT_BASE_URL = "https://api.openai.com/v1"
RUBRIC_THRESHOLD = 0.8  # as the seed's promptfoo_test_from_eval
JUDGE_TIMEOUT_SECONDS = 20.0
JUDGE_MAX_RETRIES = 1

# The judge's instructions for "Try it": the same contract as promptfoo's llm-rubric (the
# output and the rubric in <Output>/<Rubric> blocks, a JSON verdict back), so a case is
# judged here the way the gate will judge it.
GRADING_SYSTEM_PROMPT = (
    "You judge one answer against one rubric. The answer is inside <Output> tags and the rubric "
    "inside <Rubric> tags. The answer passes when everything the rubric asks for holds for it. "
    "Reply with a JSON object and nothing else: "
    '{"reason": "<one sentence on why>", "pass": <true or false>, "score": <a number from 0 to 1>}.'
)


def judge_provider() -> dict[str, Any]:
    """promptfoo's OpenAI chat provider for the judge, pointed at the app's endpoint, with bounded retries."""
    config: dict[str, Any] = {"maxRetries": JUDGE_MAX_RETRIES}
    base_url = endpoint().base_url.rstrip("/")
    if base_url != OPENAI_DEFAULT_BASE_URL:
        config["apiBaseUrl"] = base_url
    return {"id": f"openai:chat:{settings.OPENAI_JUDGE_MODEL}", "config": config}


def uses_rubric(case: EvalCase) -> bool:
    return case.scoring_method != EvalCase.ScoringMethod.DETERMINISTIC and bool(case.rubric.strip())


def promptfoo_test(case: EvalCase, run=None) -> dict[str, Any]:
    """The case as a promptfoo test on `run`'s answer (default: its source run; the gate passes another run)."""
    run = run or case.source_run
    assertions: list[dict[str, Any]] = [
        {"type": item["type"], "value": item["value"]}
        for item in case.deterministic_assertions
        if isinstance(item, dict) and item.get("type") in ("contains", "icontains", "not-contains") and item.get("value")
    ]
    if uses_rubric(case):
        assertions.append({"type": "llm-rubric", "value": case.rubric, "threshold": RUBRIC_THRESHOLD,
                           "provider": judge_provider()})
    return {
        "description": case.title,
        "vars": {
            "answer": run.final_answer,
            "question": run.question.text,
            "trace_id": run.trace_id,
            "trace_label": run.label,
        },
        "metadata": {
            "eval_id": case.eval_id,
            "case_id": case.pk,
            "cycle": case.cycle.name,
            "cycle_id": case.cycle_id,
            "source_run": case.source_run_id,  # provenance, whichever run's answer is tested
            "source_trace_id": case.source_run.trace_id,
            "scoring_method": case.scoring_method,
        },
        "assert": assertions,
    }


def suite_cases():
    """The active regression suite: approved cases, oldest cycle first."""
    return (
        EvalCase.objects.filter(status=EvalCase.Status.APPROVED)
        .select_related("cycle", "source_run__question")
        .order_by("cycle__created_at", "cycle_id", "eval_id")
    )


def promptfoo_config(*, cases) -> dict[str, Any]:
    cases = list(cases)
    return {
        "description": f"Loopsite regression suite: {len(cases)} approved case(s), exported "
                       f"{timezone.now():%Y-%m-%d %H:%M} UTC",
        "prompts": ["{{answer}}"],
        "providers": [{"id": "echo", "label": "stored-answer"}],
        "tests": [promptfoo_test(case) for case in cases],
    }


def promptfoo_yaml(*, cases) -> str:
    """JSON is valid YAML: the file is readable and needs no YAML library to write."""
    return "# Run: ./node_modules/.bin/promptfoo eval -c THIS_FILE -o out.json --no-cache --no-table\n" + json.dumps(
        promptfoo_config(cases=cases), indent=2, ensure_ascii=False
    ) + "\n"


# --- Try it -----------------------------------------------------------------------------------------


def literal_check(kind: str, value: str, output: str) -> bool:
    """promptfoo's semantics: contains and not-contains are case-sensitive, icontains is not."""
    if kind == "contains":
        return value in output
    if kind == "icontains":
        return value.lower() in output.lower()
    if kind == "not-contains":
        return value not in output
    raise ValueError(f"Unsupported assertion type {kind!r}")


@dataclass
class TryResult:
    answer: str
    assertions: list[dict[str, Any]] = field(default_factory=list)
    rubric: dict[str, Any] | None = None
    judge_model: str = ""
    judge_endpoint: str = ""
    seconds: float = 0.0

    @property
    def passed(self) -> bool | None:
        """True/False, or None when the judge could not be asked."""
        if self.rubric is not None and self.rubric.get("error"):
            return None
        checks = [item["passed"] for item in self.assertions]
        if self.rubric is not None:
            checks.append(self.rubric["passed"])
        return all(checks)


def _judge_json(text: str) -> dict[str, Any]:
    text = (text or "").strip()
    fenced = re.search(r"```(?:json)?\s*(.*?)```", text, flags=re.DOTALL)
    candidate = fenced.group(1).strip() if fenced else text
    try:
        value = json.loads(candidate)
    except json.JSONDecodeError:
        braces = re.search(r"\{.*\}", candidate, flags=re.DOTALL)
        if braces is None:
            raise ValueError(f"The judge did not answer JSON: {text[:200]!r}") from None
        try:
            value = json.loads(braces.group(0))
        except json.JSONDecodeError as exc:
            raise ValueError(f"The judge's JSON is invalid ({exc.msg}): {text[:200]!r}") from None
    if not isinstance(value, dict):
        raise ValueError("The judge did not answer a JSON object.")
    return value


def ask_judge(*, output: str, rubric: str) -> dict[str, Any]:
    """Grade like promptfoo's llm-rubric: pass defaults to true when missing; score must reach the threshold."""
    import openai

    model = settings.OPENAI_JUDGE_MODEL
    client = openai_client(timeout=JUDGE_TIMEOUT_SECONDS, max_retries=JUDGE_MAX_RETRIES)
    try:
        completion = client.chat.completions.create(model=model, messages=[
            {"role": "system", "content": GRADING_SYSTEM_PROMPT},
            {"role": "user", "content": f"<Output>\n{output}\n</Output>\n<Rubric>\n{rubric}\n</Rubric>"},
        ])
        verdict = _judge_json(completion.choices[0].message.content or "")
    except (openai.OpenAIError, ValueError) as exc:
        return {"passed": False, "error": f"{type(exc).__name__}: {exc}"[:500], "score": None, "reason": ""}
    raw_pass = verdict.get("pass", True)
    try:
        score = float(verdict.get("score", 1.0 if raw_pass else 0.0))
    except (TypeError, ValueError):
        score = 1.0 if raw_pass else 0.0
    passed = bool(raw_pass) and score >= RUBRIC_THRESHOLD
    return {"passed": passed, "score": score, "reason": str(verdict.get("reason") or ""), "error": ""}


def try_case(*, case: EvalCase) -> TryResult:
    """Check the case against its source run's stored answer now."""
    started = time.monotonic()
    answer = case.source_run.final_answer or ""
    result = TryResult(answer=answer)
    for item in case.deterministic_assertions:
        if isinstance(item, dict) and item.get("type") in ("contains", "icontains", "not-contains"):
            result.assertions.append({
                "type": item["type"], "value": item.get("value", ""),
                "passed": literal_check(item["type"], str(item.get("value", "")), answer),
            })
    if uses_rubric(case):
        result.judge_model = settings.OPENAI_JUDGE_MODEL
        result.judge_endpoint = endpoint().base_url
        result.rubric = ask_judge(output=answer, rubric=case.rubric)
    result.seconds = time.monotonic() - started
    return result
