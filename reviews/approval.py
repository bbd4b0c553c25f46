"""What an approver should see before merging a run's feedback: who has not submitted yet (names only:
their drafts stay private), and where the submitted reviews disagree."""

from dataclasses import dataclass, field

from .models import Cycle, Feedback, FeedbackItem, ReviewAssignment


@dataclass(frozen=True)
class Pending:
    username: str
    state: str  # "draft" (started, not submitted), "sent_back" or "not_started"

    @property
    def label(self) -> str:
        return {"draft": "has a draft, not submitted", "sent_back": "was sent back and has not resubmitted",
                "not_started": "has not started"}[self.state]


@dataclass
class Disagreement:
    verdicts: list[tuple[str, str]] = field(default_factory=list)  # (reviewer, verdict label) when they differ
    only_one: list[tuple[str, str, str]] = field(default_factory=list)  # (reviewer, kind label, text)

    def __bool__(self) -> bool:
        return bool(self.verdicts or self.only_one)


def pending_reviewers(*, cycle: Cycle, run) -> list[Pending]:
    """Assigned reviewers and reviewers with feedback on the run who have not submitted it."""
    states: dict[str, str] = {}
    for fb in Feedback.objects.filter(cycle=cycle, run=run, is_merged=False).select_related("reviewer"):
        if fb.status in (Feedback.Status.DRAFT, Feedback.Status.SENT_BACK):
            states[fb.reviewer.get_username()] = fb.status
        else:
            states[fb.reviewer.get_username()] = ""
    for assignment in ReviewAssignment.objects.filter(cycle=cycle, run=run).select_related("reviewer"):
        states.setdefault(assignment.reviewer.get_username(), "not_started")
    return [Pending(name, state) for name, state in sorted(states.items()) if state]


def disagreement(submissions: list[Feedback]) -> Disagreement:
    """Verdicts that differ, and items only one of several reviewers wrote."""
    reviewed = [fb for fb in submissions if fb.status in Feedback.REVIEWED_STATUSES]
    result = Disagreement()
    if len(reviewed) < 2:
        return result
    if len({fb.verdict for fb in reviewed}) > 1:
        result.verdicts = [(fb.reviewer.get_username(), fb.get_verdict_display() or "no verdict") for fb in reviewed]
    counts: dict[tuple[str, str], int] = {}
    for fb in reviewed:
        for key in {item.merge_key for item in fb.items.all() if item.text.strip()}:
            counts[key] = counts.get(key, 0) + 1
    for fb in reviewed:
        seen = set()
        for item in fb.items.all():
            key = item.merge_key
            if item.text.strip() and counts.get(key) == 1 and key not in seen:
                seen.add(key)
                result.only_one.append((fb.reviewer.get_username(), item.get_kind_display(), item.text))
    return result


# Scores of the verdicts in a run's exported annotations: 1 pass, 0.5 mixed, 0 fail.
VERDICT_SCORES = {Feedback.Verdict.PASS: 1.0, Feedback.Verdict.MIXED: 0.5, Feedback.Verdict.FAIL: 0.0}


def run_annotations(run) -> list[dict]:
    """The run's approved (merged) reviews, newest first, as annotations for its trace download
    (runs/annotations.py): verdict as label and score, summary as explanation, the rest as metadata."""
    from django.db.models import Prefetch

    approved = (Feedback.objects.filter(run=run, is_merged=True, status=Feedback.Status.APPROVED)
                .select_related("cycle", "approved_by")
                .prefetch_related(Prefetch("items", queryset=FeedbackItem.objects.order_by("position", "id")))
                .order_by("-approved_at", "-pk"))
    annotations = []
    for feedback in approved:
        items = [item.as_dict() for item in feedback.items.all()]
        annotations.append({
            "name": "loopsite.review",
            "annotator_kind": "HUMAN",
            "label": feedback.verdict,
            "score": VERDICT_SCORES.get(feedback.verdict),
            "explanation": feedback.summary,
            "metadata": {
                "theme": feedback.theme,
                "cycle": feedback.cycle.name,
                "cycle_id": feedback.cycle_id,
                "approved_by": feedback.approved_by.get_username() if feedback.approved_by else "",
                "approved_at": feedback.approved_at.isoformat() if feedback.approved_at else "",
                "required_observations": [item for item in items if item["kind"] == FeedbackItem.Kind.REQUIRED_OBSERVATION],
                "prohibited_claims": [item for item in items if item["kind"] == FeedbackItem.Kind.PROHIBITED_CLAIM],
            },
        })
    return annotations
