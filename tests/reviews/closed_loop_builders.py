"""An external agent with its imported runs, an approved suite, gate runs and a HALO report, built straight in the
database for the closed-loop tests (the read-only API and the webhook)."""

import json

from django.utils import timezone

from reviews import halo
from reviews.models import Cycle, EvalCase, GateRow, GateRun
from runs.ingest import lines_from_otlp_json, store_lines
from runs.models import Agent, Harness, Run
from tests.runs.otlp_builders import openinference_trace, request

# (input, stored answer, the word its case requires): the first passes, the second fails.
CASES = [
    ("Can I return shoes after 45 days?", "No: returns are accepted within 30 days.", "30 days"),
    ("Do you ship to Canada?", "We only ship within the US.", "Canada"),
]
PRIORITIES = [{"rank": 1, "rule_id": "quote_policy", "title": "Quote the return policy"}]


def report(title: str = "Quote the return policy") -> str:
    """A HALO report with the seven sections and a machine-readable summary."""
    bodies = {
        "## Top 3 changes to implement first": f"1. **{title}.** Because.",
        "## Machine-readable summary": "```json\n" + json.dumps({"top_priorities": PRIORITIES}) + "\n```",
    }
    return "HALO's preface.\n\n" + "\n\n".join(
        f"{heading}\n\n{bodies.get(heading, f'Body of {heading[3:]}.')}" for heading in halo.REQUIRED_SECTIONS) + "\n"


def external_agent(engineer, name: str = "Support bot") -> tuple[Agent, str]:
    return Agent.create_external(by=engineer, name=name)


def imported_runs(agent: Agent, *, version: str = "1.0.0") -> list[Run]:
    lines = []
    for index, (question, answer, _) in enumerate(CASES):
        trace_id = f"{agent.pk:08x}{version.replace('.', ''):0>8}{index + 1:016x}"
        found, rejected = lines_from_otlp_json(request(openinference_trace(trace_id, question=question, answer=answer),
                                                       version=version))
        assert rejected == []
        lines += found
    store_lines(agent=agent, lines=lines)
    return list(Run.objects.filter(agent=agent, harness__agent_version=version).order_by("trace_id"))


def suite_cycle(agent: Agent, engineer, approver) -> tuple[Cycle, list[EvalCase]]:
    """Version 1.0.0's imported runs in a cycle, one approved deterministic case per run."""
    runs = imported_runs(agent)
    cycle = Cycle.objects.create_from_runs(runs=runs, name="1.0.0 review", user=engineer)
    cases = [EvalCase.objects.create(
        cycle=cycle, eval_id=f"case-{index}", title=question, source_run=run, expected_behavior=f"Says {word}.",
        scoring_method=EvalCase.ScoringMethod.DETERMINISTIC, deterministic_assertions=[{"type": "icontains", "value": word}],
        status=EvalCase.Status.APPROVED, approved_by=approver, approved_at=timezone.now(),
    ) for index, (run, (question, _, word)) in enumerate(zip(runs, CASES, strict=True))]
    return cycle, cases


def gate_run(harness: Harness, cases: list[EvalCase], verdicts: list[bool], *, cycle: Cycle,
             baseline: GateRun | None = None) -> GateRun:
    """A succeeded gate run of `harness` with one row per case (True: pass)."""
    now = timezone.now()
    run = GateRun.objects.create(
        cycle=cycle, harness=harness, baseline=baseline, status=GateRun.Status.SUCCEEDED, started_at=now,
        finished_at=now, kind=GateRun.Kind.CANDIDATE if baseline else GateRun.Kind.BASELINE,
        total=len(cases), passed=sum(verdicts), failed=len(cases) - sum(verdicts))
    for position, (case, ok) in enumerate(zip(cases, verdicts, strict=True)):
        GateRow.objects.create(gate_run=run, eval_case=case, run=case.source_run, position=position,
                               eval_id=case.eval_id, title=case.title, passed=ok, score=1.0 if ok else 0.0,
                               reason="All assertions passed" if ok else "Expected the required word.")
    return run
