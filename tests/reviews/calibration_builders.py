"""Reviewed runs (approved merged feedback with a verdict) and suite cases, for the calibration tests."""

from django.utils import timezone

from reviews.models import EvalCase, Feedback, FeedbackItem
from runs.models import Question, Run

from .builders import make_cycle, make_run


def reviewed(cycle, run, approver, *, verdict: str, observations=(), claims=()) -> Feedback:
    """The run's approved merged feedback, as approve_run leaves it."""
    feedback = Feedback.objects.create(cycle=cycle, run=run, reviewer=approver, is_merged=True, verdict=verdict,
                                       status=Feedback.Status.APPROVED, approved_by=approver,
                                       approved_at=timezone.now(), summary="Reviewed.", theme="t", version=1)
    position = 0
    for kind, texts in ((FeedbackItem.Kind.REQUIRED_OBSERVATION, observations),
                        (FeedbackItem.Kind.PROHIBITED_CLAIM, claims)):
        for text in texts:
            FeedbackItem.objects.create(feedback=feedback, kind=kind, text=text, position=position)
            position += 1
    return feedback


def same_question(run: Run, question: Question) -> Run:
    Run.objects.filter(pk=run.pk).update(question=question)
    run.refresh_from_db()
    return run


def approved_case(cycle, source_run, approver, *, eval_id: str, rubric: str, assertions=(), feedback=None,
                  scoring=EvalCase.ScoringMethod.HYBRID) -> EvalCase:
    case = EvalCase.objects.create(
        cycle=cycle, eval_id=eval_id, title=f"Case {eval_id}", scoring_method=scoring,
        expected_behavior="As the rubric says.", source_run=source_run, rubric=rubric,
        deterministic_assertions=list(assertions), status=EvalCase.Status.APPROVED, approved_by=approver,
        approved_at=timezone.now(),
    )
    if feedback is not None:
        case.source_feedback.add(feedback)
    return case


ARR_FAIL = "ARR is $43.0M according to the board deck."
ARR_PASS = "Rely on the finance-controlled ARR bridge: ARR is $36.9M; the board deck's $43.0M is not reconciled."
ARR_RUBRIC = 'The answer must lead with the finance-controlled "$36.9M" ARR.'


def arr_world(approver):
    """One question, three reviewed answers: the source failure, an expert-passed answer, a mixed one;
    plus a case written from the failure. Returns (cycle, runs, feedback, case)."""
    fail_run = make_run(label="arr-fail", answer=ARR_FAIL)
    pass_run = same_question(make_run(label="arr-pass", answer=ARR_PASS), fail_run.question)
    mixed_run = same_question(make_run(label="arr-mixed", answer="ARR is $36.9M or $43.0M."), fail_run.question)
    cycle = make_cycle(fail_run, pass_run, mixed_run)
    fb_fail = reviewed(cycle, fail_run, approver, verdict="fail",
                       observations=["Prefer the finance ARR of $36.9M over the board figure"],
                       claims=["Do not present the board ARR of $43.0M as reliable"])
    fb_pass = reviewed(cycle, pass_run, approver, verdict="pass",
                       observations=["State the finance ARR bridge figure of $36.9M"])
    fb_mixed = reviewed(cycle, mixed_run, approver, verdict="mixed", observations=["Pick one ARR figure"])
    case = approved_case(cycle, fail_run, approver, eval_id="finance-arr", rubric=ARR_RUBRIC,
                         assertions=[{"type": "contains", "value": "$36.9M"}], feedback=fb_fail)
    return cycle, (fail_run, pass_run, mixed_run), (fb_fail, fb_pass, fb_mixed), case
