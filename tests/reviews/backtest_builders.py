"""Eval cases with approved feedback behind them, for the back-test tests.

The source run's answer says "SOC 2 is complete" and the reviewers failed it (verdict fail). A
`catching` case checks what they asked for with literal assertions, so promptfoo's verdicts do not
depend on the judge; a `missing` case checks something the failing answer already does.
"""

from reviews.models import BackTestRun, EvalCase, Feedback

from .builders import make_cycle, make_feedback, make_run
from .gen_builders import approve

FAILING_ANSWER = "SOC 2 is complete, so enterprise security review should be smooth."
FAIL_EXAMPLE = "SOC 2 is complete."
PASS_EXAMPLE = "SOC 2 Type I is complete; the Type II audit is still in progress."

CATCHING = {"scoring_method": EvalCase.ScoringMethod.DETERMINISTIC, "rubric": "",
            "deterministic_assertions": [{"type": "not-contains", "value": "SOC 2 is complete"},
                                         {"type": "icontains", "value": "Type II"}]}
MISSING = {"scoring_method": EvalCase.ScoringMethod.DETERMINISTIC, "rubric": "",
           "deterministic_assertions": [{"type": "icontains", "value": "security"}]}


def reviewed_run(reviewer, approver, *, answer: str = FAILING_ANSWER, verdict: str = "fail", label: str = "trace-04",
                 question=None, harness=None, name: str = "v001 review"):
    """(cycle, run, approved merged feedback) for one run."""
    fields = {"label": label, "answer": answer}
    if harness is not None:
        fields["harness"] = harness
    run = make_run(**fields)
    if question is not None:
        type(run).objects.filter(pk=run.pk).update(question=question)
        run.refresh_from_db()
    cycle = make_cycle(run, name=name)
    make_feedback(cycle, run, reviewer, summary="Type I is complete; Type II is still in progress.",
                  theme="security_readiness", verdict=verdict, observations=["Distinguish Type I from Type II"],
                  claims=["SOC 2 is complete"], status=Feedback.Status.SUBMITTED)
    merged = approve(cycle, run, approver)
    return cycle, run, merged


def case_for(cycle, run, feedback, *, checks=CATCHING, eval_id: str = "soc2-type", fail_example: str = FAIL_EXAMPLE,
             pass_example: str = PASS_EXAMPLE, status=EvalCase.Status.PROPOSED) -> EvalCase:
    case = EvalCase.objects.create(
        cycle=cycle, eval_id=eval_id, title="SOC 2: Type I versus Type II", expected_behavior="Keeps Type I and II apart.",
        source_run=run, fail_example=fail_example, pass_example=pass_example, status=status, **checks,
    )
    case.source_feedback.set([feedback])
    return case


def run_queued(case) -> list[BackTestRun]:
    """Run the case's queued back-tests with the real task, oldest first, until none is queued."""
    from reviews.tasks import backtest_task

    done = []
    for _ in range(4):
        queued = case.backtest_runs.filter(status=BackTestRun.Status.QUEUED).order_by("created_at", "pk").first()
        if queued is None:
            break
        backtest_task.apply(args=[queued.pk], throw=True)
        queued.refresh_from_db()
        done.append(queued)
    return done
