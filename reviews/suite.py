"""The regression suite as promptfoo sees it: the one definition of a case's promptfoo test.

`promptfoo_config(cases=...)` is a complete, self-contained promptfoo config: each test
carries the stored answer of its case's source run as the var `answer`, promptfoo's
built-in `echo` provider returns the prompt `{{answer}}` unchanged, and the assertions
are the case's literal checks plus an `llm-rubric` graded by the judge model. No Python
provider and no files beside it are needed:

    ./node_modules/.bin/promptfoo eval -c loopsite-suite.yaml -o out.json --no-cache --no-table

The gate and the back-tests (reviews/promptfoo.py) build their tests with `promptfoo_test`
too, so a case is judged the same way everywhere; "Try it" on the case page shows its
back-test (reviews/backtest.py), run by the worker through promptfoo.
"""

import json
from typing import Any

from django.conf import settings
from django.utils import timezone

from loopsite.llm import endpoint

from .models import EvalCase

OPENAI_DEFAULT_BASE_URL = "https://api.openai.com/v1"
RUBRIC_THRESHOLD = 0.8  # as the seed's promptfoo_test_from_eval
JUDGE_MAX_RETRIES = 1


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


def suite_cases(agent=None):
    """The active regression suite: approved cases, oldest cycle first. Each agent has its own suite (the
    agent of the cases' source runs); `agent=None`: every agent's, for pages that list them all."""
    cases = EvalCase.objects.filter(status=EvalCase.Status.APPROVED)
    if agent is not None:
        cases = cases.filter(source_run__agent=agent)
    return cases.select_related("cycle", "source_run__question").order_by("cycle__created_at", "cycle_id", "eval_id")


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
