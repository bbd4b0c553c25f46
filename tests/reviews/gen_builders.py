"""Cycles whose runs already carry approved feedback, for the generation and eval tests."""

from contextlib import contextmanager

from reviews.models import Feedback, approve_run
from reviews.tasks import generate_evals_task, generate_insights_task

from .builders import make_cycle, make_feedback, make_run

# (label, answer, theme, summary, required observations, prohibited claims)
SPECS = [
    ("trace-01", "Runway is 11 months and burn is rising, so near-term financing risk is high. Source `finance/runway.csv`.",
     "financial_risk", "State the 11-month runway and rising burn as financing risk.",
     ["Name the 11-month runway", "Tie burn to near-term financing pressure"],
     ["Do not say the runway is comfortable"]),
    ("trace-02", "Use the finance ARR of $36.9M; the board's $43.0M is not comparable.",
     "revenue_quality", "Prefer the controlled ARR bridge and keep the contradiction.",
     ["Prefer finance ARR over board ARR", 'Quote the "$36.9M" finance figure'],
     ["Do not silently reconcile the ARR gap"]),
    ("trace-03", "Customer concentration is moderate. No single legal entity exceeds 15% of ARR.",
     "customer_concentration", "Roll concentration up to Northstar Holdings.",
     ["Roll up to Northstar Holdings", "Use account_hierarchy.csv"],
     ["Do not stop at legal-entity concentration"]),
    ("trace-04", "SOC 2 is complete, so enterprise security review should be smooth.",
     "security_readiness", "Type I is complete; Type II is still in progress.",
     ["Distinguish Type I from Type II"],
     ["SOC 2 is complete"]),
    ("trace-05", "Official NRR and CAC payback are unsupported: the 122% NRR is a management estimate.",
     "unsupported_metrics", "Refuse official NRR and CAC payback.",
     ["Mark official NRR unsupported", "Mark CAC payback unsupported"],
     ['Do not say "122% official NRR"']),
]


def content_of(feedback: Feedback) -> dict:
    return {
        "summary": feedback.summary, "theme": feedback.theme, "verdict": feedback.verdict,
        "items": [{"kind": item.kind, "text": item.text} for item in feedback.items.all()],
    }


def reviewed_cycle(reviewer, *, count: int = 5, name: str = "v001 review"):
    """A cycle of `count` runs, each with the reviewer's submitted feedback (not yet approved)."""
    runs = [make_run(label=spec[0], answer=spec[1]) for spec in SPECS[:count]]
    cycle = make_cycle(*runs, name=name)
    for run, (_, _, theme, summary, required, prohibited) in zip(runs, SPECS, strict=False):
        make_feedback(cycle, run, reviewer, summary=summary, theme=theme, verdict="fail", observations=required,
                      claims=prohibited, status=Feedback.Status.SUBMITTED)
    return cycle, runs


def approve(cycle, run, approver) -> Feedback:
    source = Feedback.objects.get(cycle=cycle, run=run, is_merged=False)
    return approve_run(cycle=cycle, run=run, by=approver, content=content_of(source), version=0)


def approved_cycle(reviewer, approver, *, count: int = 5, approve_count: int | None = None):
    cycle, runs = reviewed_cycle(reviewer, count=count)
    for run in runs[: count if approve_count is None else approve_count]:
        approve(cycle, run, approver)
    cycle.refresh_from_db()
    return cycle, runs


@contextmanager
def no_broker(monkeypatch):
    """Record what would be sent to the broker instead of sending it: yields a list of (task name, job id)."""
    sent = []
    for task in (generate_insights_task, generate_evals_task):
        monkeypatch.setattr(task, "delay", lambda job_id, _name=task.name: sent.append((_name, job_id)))
    yield sent


def run_chain(cycle):
    """Run the queued jobs of a cycle with .apply(throw=True) until none is queued (insights, then evals)."""
    from reviews.models import GenerationJob

    for _ in range(4):
        job = cycle.generation_jobs.filter(status=GenerationJob.Status.QUEUED).order_by("created_at", "pk").first()
        if job is None:
            return
        task = generate_insights_task if job.kind == GenerationJob.Kind.INSIGHTS else generate_evals_task
        task.apply(args=[job.pk], throw=True)


PENDING_REASON = "Approved before its back-test finished (test set-up)."


def proposed_cases(reviewer, approver, *, count: int = 5):
    """Run the whole chain (needs a stand-in fixture) and return {run label: EvalCase}."""
    from reviews.models import EvalCase

    cycle, _ = approved_cycle(reviewer, approver, count=count)
    run_chain(cycle)
    cases = {case.source_run.label: case for case in EvalCase.objects.filter(cycle=cycle).select_related("source_run")}
    assert len(cases) == count, "the chain should propose one case per approved run"
    return cases
