"""What each role has to do next, across cycles: the inbox a user lands on after login, and the
"next item of the same kind" that every review, approval and eval decision ends with.

- a reviewer: the runs assigned to them, due work first (sent back, in progress, not started);
- an approver: runs with submitted feedback waiting for approval, and eval proposals awaiting a decision;
- an engineer: failed or stuck work of every kind, and candidate versions whose gate lets them be promoted.
"""

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db.models import Q
from django.urls import reverse
from django.utils import timezone

from loopsite.roles import APPROVER, REVIEWER, has_role
from loopsite.work import WorkStatus, work_kinds
from runs.models import Harness, Run

from .models import Cycle, EvalCase, Feedback, ReviewAssignment

# A reviewer's item, by their own feedback's state; the first three are due.
REVIEW_STATES = {
    "sent_back": "Sent back to you",
    "draft": "In progress",
    "unreviewed": "Not started",
    "submitted": "Submitted, waiting for approval",
    "approved": "Approved",
    "closed": "Approved without your feedback",
}
DUE_STATES = ("sent_back", "draft", "unreviewed")
_RANK = {state: rank for rank, state in enumerate(REVIEW_STATES)}
INBOX_LIMIT = 200
FAILED_WITHIN = timedelta(days=7)
QUEUED_TOO_LONG = timedelta(minutes=10)


@dataclass(frozen=True)
class ReviewItem:
    cycle: Cycle
    run: Run
    state: str

    @property
    def state_label(self) -> str:
        return REVIEW_STATES[self.state]

    @property
    def is_due(self) -> bool:
        return self.state in DUE_STATES

    @property
    def url(self) -> str:
        return reverse("reviews:feedback-edit", args=[self.cycle.pk, self.run.pk])


def review_items(user, *, cycle: Cycle | None = None) -> list[ReviewItem]:
    """The runs assigned to `user` (in one cycle, or in all), due work first, then newest cycle first."""
    assignments = ReviewAssignment.objects.filter(reviewer=user).select_related("cycle", "run__question")
    if cycle is not None:
        assignments = assignments.filter(cycle=cycle)
    assignments = list(assignments.order_by("-cycle__created_at", "-cycle_id", "run__label", "run_id")[:INBOX_LIMIT])
    cycle_ids = {a.cycle_id for a in assignments}
    own = dict(
        ((cycle_id, run_id), status) for cycle_id, run_id, status in
        Feedback.objects.filter(reviewer=user, is_merged=False, cycle_id__in=cycle_ids)
        .values_list("cycle_id", "run_id", "status")
    )
    approved = set(
        Feedback.objects.filter(cycle_id__in=cycle_ids, is_merged=True, status=Feedback.Status.APPROVED)
        .values_list("cycle_id", "run_id")
    )
    items = []
    for assignment in assignments:
        key = (assignment.cycle_id, assignment.run_id)
        state = own.get(key, "unreviewed")
        if state in DUE_STATES and state != "sent_back" and key in approved:
            state = "closed"
        items.append(ReviewItem(cycle=assignment.cycle, run=assignment.run, state=state))
    # sorted() is stable: within a state the cycles stay newest first.
    return sorted(items, key=lambda item: _RANK[item.state])


def _next_of(items: list, *, after: tuple[int, int] | None, key) -> Any:
    """The first item that is not `after`; an item after `after` in the list is preferred, so "next"
    moves on through the list instead of returning to the top."""
    keys = [key(item) for item in items]
    if after in keys:
        position = keys.index(after)
        rest = items[position + 1:] + items[:position]
    else:
        rest = items
    return rest[0] if rest else None


def next_review(user, *, after: tuple[int, int] | None = None) -> ReviewItem | None:
    """The next run `user` has to review, in any cycle; `after` is the (cycle, run) just handled."""
    due = [item for item in review_items(user) if item.is_due]
    return _next_of(due, after=after, key=lambda item: (item.cycle.pk, item.run.pk))


def review_neighbours(user, *, cycle: Cycle, run: Run) -> tuple[Run | None, Run | None]:
    """The runs assigned to `user` in `cycle` before and after `run`, in the queue's order (label, id)."""
    runs = list(
        cycle.runs.filter(review_assignments__cycle=cycle, review_assignments__reviewer=user)
        .order_by("label", "pk").only("pk", "label")
    )
    ids = [r.pk for r in runs]
    if run.pk not in ids:
        return None, None
    position = ids.index(run.pk)
    previous = runs[position - 1] if position > 0 else None
    following = runs[position + 1] if position + 1 < len(runs) else None
    return previous, following


@dataclass(frozen=True)
class ApprovalItem:
    cycle: Cycle
    run: Run
    submitted: int
    own_review: bool

    @property
    def url(self) -> str:
        return reverse("reviews:run-approve", args=[self.cycle.pk, self.run.pk])


def approval_items(user) -> list[ApprovalItem]:
    """Runs with submitted feedback no approver has approved yet, oldest submission first. Runs `user`
    reviewed themselves come last: another approver must approve them."""
    waiting = (
        Feedback.objects.filter(is_merged=False, status=Feedback.Status.SUBMITTED)
        .select_related("cycle", "run__question").order_by("submitted_at", "pk")
    )
    items: dict[tuple[int, int], dict] = {}
    for fb in waiting[:INBOX_LIMIT * 4]:
        entry = items.setdefault((fb.cycle_id, fb.run_id), {"cycle": fb.cycle, "run": fb.run, "submitted": 0})
        entry["submitted"] += 1
    if not items:
        return []
    own = set(
        Feedback.objects.filter(reviewer=user, is_merged=False, status__in=Feedback.REVIEWED_STATUSES,
                                cycle_id__in={c for c, _ in items}, run_id__in={r for _, r in items})
        .values_list("cycle_id", "run_id")
    )
    result = [ApprovalItem(own_review=key in own, **entry) for key, entry in items.items()]
    return sorted(result, key=lambda item: item.own_review)[:INBOX_LIMIT]


def next_approval(user, *, after: tuple[int, int] | None = None) -> ApprovalItem | None:
    open_items = [item for item in approval_items(user) if not item.own_review]
    return _next_of(open_items, after=after, key=lambda item: (item.cycle.pk, item.run.pk))


def proposal_items() -> list[EvalCase]:
    """Eval case proposals awaiting an approver's decision, oldest cycle first."""
    return list(
        EvalCase.objects.filter(status=EvalCase.Status.PROPOSED).select_related("cycle")
        .order_by("cycle__created_at", "cycle_id", "eval_id")[:INBOX_LIMIT]
    )


def next_proposal(*, after: int | None = None) -> EvalCase | None:
    return _next_of(proposal_items(), after=after, key=lambda case: case.pk)


def your_work_by_cycle(user) -> dict[int, str]:
    """Per cycle, what `user` has to do there ("2 to review · 1 to approve"), for the cycle list."""
    counts: dict[int, dict[str, int]] = {}
    if has_role(user, REVIEWER):
        for item in review_items(user):
            if item.is_due:
                counts.setdefault(item.cycle.pk, {}).setdefault("to review", 0)
                counts[item.cycle.pk]["to review"] += 1
    if has_role(user, APPROVER):
        for item in approval_items(user):
            if not item.own_review:
                counts.setdefault(item.cycle.pk, {}).setdefault("to approve", 0)
                counts[item.cycle.pk]["to approve"] += 1
        for case in proposal_items():
            counts.setdefault(case.cycle_id, {}).setdefault("proposals to decide", 0)
            counts[case.cycle_id]["proposals to decide"] += 1
    return {pk: " · ".join(f"{n} {what}" for what, n in kinds.items()) for pk, kinds in counts.items()}


@dataclass(frozen=True)
class WorkProblem:
    kind: str
    title: str
    state: str  # "failed" or "stuck"
    error: str
    when: Any
    url: str


def _work_url(row) -> str:
    kind = row.WORK_KIND
    if kind == "generation":
        return reverse("reviews:generation", args=[row.cycle_id])
    if kind == "backtest":
        return reverse("reviews:eval-detail", args=[row.case_id])
    if kind == "calibration":
        return reverse("reviews:judge-calibration")
    return row.get_absolute_url()


def work_problems() -> list[WorkProblem]:
    """Failed work of the last week and work that looks stuck (running without a heartbeat, or queued
    and not picked up for ten minutes), newest first. The sweep requeues stuck work; this says it is happening."""
    now = timezone.now()
    stale = now - timedelta(seconds=settings.WORK_STALE_SECONDS)
    queued_stale = now - max(QUEUED_TOO_LONG, timedelta(seconds=settings.QUEUED_STALE_SECONDS))
    problems = []
    for model in work_kinds():
        stuck = (Q(status=WorkStatus.RUNNING) & (Q(heartbeat_at__lt=stale) | Q(heartbeat_at__isnull=True, started_at__lt=stale))
                 | Q(status=WorkStatus.QUEUED, created_at__lt=queued_stale))
        failed = Q(status=WorkStatus.FAILED, finished_at__gte=now - FAILED_WITHIN)
        for row in model.objects.filter(failed | stuck).order_by("-created_at")[:50]:
            failed_row = row.status == WorkStatus.FAILED
            problems.append(WorkProblem(
                kind=model._meta.verbose_name.capitalize(), title=str(row),
                state="failed" if failed_row else "stuck",
                error=row.last_error, when=row.finished_at if failed_row else (row.heartbeat_at or row.created_at),
                url=_work_url(row),
            ))
    return sorted(problems, key=lambda p: p.when or now, reverse=True)[:INBOX_LIMIT]


@dataclass(frozen=True)
class Candidate:
    harness: Harness
    comparison: Any  # runs.promotion.Comparison

    @property
    def url(self) -> str:
        return reverse("runs:harness-detail", args=[self.harness.version])


def promotable_candidates() -> list[Candidate]:
    """Draft versions whose latest candidate gate passes without an override: ready to promote."""
    from .candidates import latest_comparison

    ready = []
    gated = Harness.objects.filter(status=Harness.Status.DRAFT, gate_runs__kind="candidate",
                                   gate_runs__status=WorkStatus.SUCCEEDED).distinct()
    for harness in gated.order_by("-pk")[:50]:
        comparison = latest_comparison(harness)
        if comparison is not None and not comparison.override_needed:
            ready.append(Candidate(harness=harness, comparison=comparison))
    return ready
