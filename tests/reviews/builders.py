"""Runs, spans, artifacts and cycles built straight in the database for the review tests."""

import itertools

from django.utils import timezone

from reviews.models import Cycle, Feedback, FeedbackItem
from runs.models import Artifact, Dataroom, Harness, Question, Run, Span

_seq = itertools.count(1)

ANSWER = (
    "Customer concentration is moderate. No single legal entity exceeds 15% of ARR.\n\n"
    "SOC 2 is complete, so enterprise security review should be smooth."
)
MEMO = "# Memo\n\nRunway is 11 months.\nThe company has 122% official NRR.\n"


def make_run(*, harness: Harness | None = None, label: str = "", answer: str = ANSWER, **fields) -> Run:
    n = next(_seq)
    harness = harness or Harness.objects.get_or_create(version="v001", defaults={"system_prompt": "Be careful."})[0]
    dataroom = Dataroom.objects.get_or_create(name="sample")[0]
    question = Question.objects.create(text=f"Question {n}: how concentrated are customers?")
    run = Run.objects.create(
        harness=harness, dataroom=dataroom, question=question, label=label or f"trace-{n:02d}",
        trace_id=Run.new_trace_id(), status=Run.Status.SUCCEEDED, final_answer=answer,
        finished_at=timezone.now(), **fields,
    )
    Span.objects.create(run=run, position=0, span_id=f"root{n}", name="agent run", observation_kind="AGENT",
                        data={"span_id": f"root{n}", "name": "agent run", "attributes": {}})
    Span.objects.create(run=run, position=1, span_id=f"tool{n}", parent_span_id=f"root{n}", name="exec_command",
                        observation_kind="TOOL",
                        data={"span_id": f"tool{n}", "name": "exec_command", "attributes": {"tool.name": "exec_command"}})
    Artifact.objects.create(run=run, name="investment_memo.md", content=MEMO, size=len(MEMO))
    return run


def make_cycle(*runs: Run, name: str = "v001 review") -> Cycle:
    cycle = Cycle.objects.create(harness=runs[0].harness, name=name)
    cycle.runs.set(runs)
    return cycle


def make_feedback(cycle: Cycle, run: Run, reviewer, *, summary="Roll up to parent accounts.", theme="customer_concentration",
                  verdict="fail", observations=("Mention parent-account concentration",),
                  claims=("Do not stop at legal-entity concentration",), status=Feedback.Status.DRAFT) -> Feedback:
    feedback = Feedback.objects.create(cycle=cycle, run=run, reviewer=reviewer, summary=summary, theme=theme,
                                       verdict=verdict, version=1)
    position = 0
    for kind, texts in ((FeedbackItem.Kind.REQUIRED_OBSERVATION, observations), (FeedbackItem.Kind.PROHIBITED_CLAIM, claims)):
        for text in texts:
            FeedbackItem.objects.create(feedback=feedback, kind=kind, text=text, position=position)
            position += 1
    if status != Feedback.Status.DRAFT:
        feedback.submit(by=reviewer)
    return feedback


def form_data(*, version=0, summary="Roll up to parent accounts.", theme="customer_concentration", verdict="fail",
              rows=(("required_observation", "Mention parent-account concentration", "", "", ""),), op=None) -> dict:
    """The POST the feedback form sends: header fields plus parallel row lists."""
    data = {
        "version": str(version), "summary": summary, "theme": theme, "verdict": verdict,
        "item_kind": [row[0] for row in rows], "item_text": [row[1] for row in rows],
        "item_span": [row[2] for row in rows], "item_artifact": [row[3] for row in rows],
        "item_line": [row[4] for row in rows],
    }
    if op:
        data["op"] = op
    return data
