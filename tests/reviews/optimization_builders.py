"""A cycle ready for HALO, built straight in the database from tests/reviews/halo_samples.py.

Five runs of harness v001 whose spans are full HALO JSONL lines, the approved merged feedback of
four of them (the seed's human feedback), two insights of a succeeded insights job, five approved
eval cases, and a succeeded gate run where the concentration and SOC 2 rows fail.
"""

from django.utils import timezone

from reviews.models import (
    Cycle,
    EvalCase,
    Feedback,
    FeedbackItem,
    GateRow,
    GateRun,
    GenerationJob,
    Insight,
    Optimization,
)
from runs.models import Dataroom, Harness, Question, Run, Span

from . import halo_samples as samples


def v001() -> Harness:
    config = samples.harness_config()
    return Harness.objects.get_or_create(version=config["version"], defaults={
        "system_prompt": config["system_prompt"], "model_settings": config["model_settings"],
        "tool_policy": config["tool_policy"], "eval_metadata": config["eval_metadata"],
    })[0]


def runs_with_spans(harness: Harness) -> list[Run]:
    dataroom = Dataroom.objects.get_or_create(name="FictionalCorp XYZ")[0]
    lines = samples.run_span_lines()
    runs = []
    for label, text in samples.QUESTIONS:
        question = Question.objects.get_or_create(text=text)[0]
        run = Run.objects.create(harness=harness, dataroom=dataroom, question=question, label=label,
                                 trace_id=samples.TRACE_IDS[label], status=Run.Status.SUCCEEDED,
                                 final_answer=f"Answer for {label}.", started_at=timezone.now(),
                                 finished_at=timezone.now())
        own = [line for line in lines if line["trace_id"] == run.trace_id]
        Span.objects.bulk_create(
            Span(run=run, position=position, span_id=line["span_id"], parent_span_id=line["parent_span_id"],
                 name=line["name"], observation_kind=line["attributes"]["inference.observation_kind"], data=line)
            for position, line in enumerate(own)
        )
        runs.append(run)
    return runs


def approve_feedback(cycle: Cycle, run: Run, approver, item: dict) -> Feedback:
    feedback = Feedback.objects.create(
        cycle=cycle, run=run, reviewer=approver, is_merged=True, summary=item["summary"], theme=item["theme"],
        verdict="fail", status=Feedback.Status.APPROVED, approved_by=approver, approved_at=timezone.now(),
        submitted_at=timezone.now(), version=1,
    )
    position = 0
    for kind, texts in ((FeedbackItem.Kind.REQUIRED_OBSERVATION, item["required_observations"]),
                        (FeedbackItem.Kind.PROHIBITED_CLAIM, item["prohibited_claims"])):
        for text in texts:
            FeedbackItem.objects.create(feedback=feedback, kind=kind, text=text, position=position)
            position += 1
    return feedback


def halo_cycle(approver, *, with_gate: bool = True) -> Cycle:
    harness = v001()
    runs = runs_with_spans(harness)
    by_trace = {run.trace_id: run for run in runs}
    cycle = Cycle.objects.create(harness=harness, name="v001 HALO", status=Cycle.Status.PROPOSED)
    cycle.runs.set(runs)
    for item in samples.human_feedback():
        approve_feedback(cycle, by_trace[item["trace_id"]], approver, item)
    job = GenerationJob.objects.create(cycle=cycle, kind=GenerationJob.Kind.INSIGHTS,
                                       status=GenerationJob.Status.SUCCEEDED, started_at=timezone.now(),
                                       finished_at=timezone.now())
    for item in samples.llm_insights():
        Insight.objects.create(cycle=cycle, run=by_trace[item["trace_id"]], job=job, observations=item["observations"])
    cases = []
    for eval_id, label, title, expected in samples.EVAL_SPECS:
        cases.append(EvalCase.objects.create(
            cycle=cycle, eval_id=eval_id, title=title, expected_behavior=expected,
            source_run=by_trace[samples.TRACE_IDS[label]], rubric=f"Pass when: {expected}",
            pass_example=f"Pass: {expected}", fail_example="Fail: the opposite.",
            status=EvalCase.Status.APPROVED, approved_by=approver, approved_at=timezone.now(),
        ))
    if with_gate:
        succeeded_gate(cycle, cases)
    return cycle


def succeeded_gate(cycle: Cycle, cases: list[EvalCase] | None = None) -> GateRun:
    cases = cases or list(cycle.eval_cases.filter(status=EvalCase.Status.APPROVED).select_related("source_run"))
    gate_run = GateRun.objects.create(cycle=cycle, harness=cycle.harness, status=GateRun.Status.SUCCEEDED,
                                      started_at=timezone.now(), finished_at=timezone.now())
    passed = 0
    for position, case in enumerate(cases):
        ok = case.eval_id not in samples.FAILING
        passed += ok
        GateRow.objects.create(gate_run=gate_run, eval_case=case, run=case.source_run, position=position,
                               eval_id=case.eval_id, title=case.title, passed=ok, score=1.0 if ok else 0.0,
                               reason=samples.FAILING.get(case.eval_id, "All assertions passed"))
    GateRun.objects.filter(pk=gate_run.pk).update(total=len(cases), passed=passed, failed=len(cases) - passed)
    gate_run.refresh_from_db()
    return gate_run


def queued_optimization(cycle: Cycle, user=None, **options) -> Optimization:
    from reviews.optimization import clean_options, latest_gate_run

    return Optimization.objects.create(cycle=cycle, gate_run=latest_gate_run(cycle), requested_by=user,
                                       heartbeat_at=timezone.now(), options=clean_options(options))


def finished_optimization(cycle: Cycle, report: str, *, missing=(), status=Optimization.Status.SUCCEEDED,
                          error: str = "") -> Optimization:
    from reviews import halo

    now = timezone.now()
    return Optimization.objects.create(
        cycle=cycle, status=status, report=report, handoff=halo.clean_handoff(report) if report else "",
        missing_sections=list(missing), last_error=error, started_at=now, finished_at=now, heartbeat_at=now,
        attempts=1, model_name="gpt-5.5", endpoint="http://standin/v1",
    )
