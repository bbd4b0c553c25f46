import pytest
from django.core.exceptions import PermissionDenied

from loopsite.models import AuditEvent
from reviews.models import (
    Cycle,
    Feedback,
    FeedbackItem,
    FeedbackStateError,
    StaleFeedbackError,
    approve_run,
    can_see_others_feedback,
)
from runs.models import Harness

from .builders import make_cycle, make_feedback, make_run

pytestmark = pytest.mark.django_db

CONTENT = {
    "summary": "Merged summary", "theme": "customer_concentration", "verdict": "fail",
    "items": [{"kind": "required_observation", "text": "Mention parent-account concentration"}],
}


def test_submit_moves_draft_to_submitted_and_keeps_history(reviewer):
    run = make_run()
    cycle = make_cycle(run)
    feedback = make_feedback(cycle, run, reviewer)
    feedback.submit(by=reviewer)
    feedback.refresh_from_db()
    assert feedback.status == Feedback.Status.SUBMITTED
    assert feedback.submitted_at is not None
    assert feedback.version == 2
    revision = feedback.revisions.get()
    assert revision.action == "submit"
    assert revision.snapshot["items"][0]["text"] == "Mention parent-account concentration"
    assert AuditEvent.objects.filter(action="feedback.submit", object_id=str(feedback.pk)).count() == 1


def test_submit_twice_is_refused(reviewer):
    run = make_run()
    feedback = make_feedback(make_cycle(run), run, reviewer, status=Feedback.Status.SUBMITTED)
    with pytest.raises(FeedbackStateError):
        feedback.submit(by=reviewer)


def test_only_the_author_submits(reviewer, reviewer2):
    run = make_run()
    feedback = make_feedback(make_cycle(run), run, reviewer)
    with pytest.raises(PermissionDenied):
        feedback.submit(by=reviewer2)


def test_approve_requires_the_approver_role(reviewer, reviewer2):
    run = make_run()
    feedback = make_feedback(make_cycle(run), run, reviewer, status=Feedback.Status.SUBMITTED)
    with pytest.raises(PermissionDenied):
        feedback.approve(by=reviewer2)
    feedback.refresh_from_db()
    assert feedback.status == Feedback.Status.SUBMITTED


def test_an_approver_never_approves_their_own_feedback(approver):
    from django.contrib.auth.models import Group

    approver.groups.add(Group.objects.get_or_create(name="reviewer")[0])
    run = make_run()
    cycle = make_cycle(run)
    feedback = make_feedback(cycle, run, approver, status=Feedback.Status.SUBMITTED)
    with pytest.raises(PermissionDenied):
        feedback.approve(by=approver)
    with pytest.raises(PermissionDenied):
        approve_run(cycle=cycle, run=run, by=approver, content=CONTENT, version=0)
    assert not Feedback.objects.filter(is_merged=True, status=Feedback.Status.APPROVED).exists()


def test_send_back_needs_a_comment_and_reopens_the_feedback(reviewer, approver):
    run = make_run()
    feedback = make_feedback(make_cycle(run), run, reviewer, status=Feedback.Status.SUBMITTED)
    with pytest.raises(ValueError):
        feedback.send_back(by=approver, comment="  ")
    feedback.send_back(by=approver, comment="Cite the hierarchy file.")
    feedback.refresh_from_db()
    assert feedback.status == Feedback.Status.SENT_BACK
    assert feedback.sent_back_comment == "Cite the hierarchy file."
    assert feedback.is_editable
    assert AuditEvent.objects.filter(action="feedback.send_back", actor=approver).exists()
    feedback.submit(by=reviewer)
    assert Feedback.objects.get(pk=feedback.pk).status == Feedback.Status.SUBMITTED


def test_save_content_replaces_items_and_bumps_the_version(reviewer):
    run = make_run()
    feedback = make_feedback(make_cycle(run), run, reviewer)
    changed = feedback.save_content(by=reviewer, version=1, content={
        "summary": "New", "theme": "t", "verdict": "mixed",
        "items": [
            {"kind": "prohibited_claim", "text": "B"},
            {"kind": "required_observation", "text": "A", "citation_artifact": "investment_memo.md", "citation_line": 3},
        ],
    })
    assert changed
    feedback.refresh_from_db()
    assert feedback.version == 2
    assert [(i.position, i.kind, i.text, i.citation_line) for i in feedback.items.all()] == [
        (0, "prohibited_claim", "B", None), (1, "required_observation", "A", 3),
    ]
    assert feedback.revisions.get().action == "save"


def test_a_stale_version_does_not_overwrite(reviewer):
    run = make_run()
    feedback = make_feedback(make_cycle(run), run, reviewer)
    stale = {**CONTENT, "summary": "Typed in an old tab"}
    with pytest.raises(StaleFeedbackError) as caught:
        feedback.save_content(by=reviewer, version=0, content=stale)
    assert caught.value.feedback.version == 1
    feedback.refresh_from_db()
    assert feedback.summary == "Roll up to parent accounts."


def test_saving_unchanged_content_with_a_stale_version_is_a_no_op(reviewer):
    run = make_run()
    feedback = make_feedback(make_cycle(run), run, reviewer)
    content = feedback.content()
    assert feedback.save_content(by=reviewer, version=0, content=content) is False
    assert Feedback.objects.get(pk=feedback.pk).version == 1


def test_submitted_feedback_cannot_be_edited(reviewer):
    run = make_run()
    feedback = make_feedback(make_cycle(run), run, reviewer, status=Feedback.Status.SUBMITTED)
    with pytest.raises(FeedbackStateError):
        feedback.save_content(by=reviewer, version=feedback.version, content=CONTENT)


def test_approve_run_merges_and_approves_every_submission(reviewer, reviewer2, approver):
    run = make_run()
    cycle = make_cycle(run)
    first = make_feedback(cycle, run, reviewer, status=Feedback.Status.SUBMITTED)
    second = make_feedback(cycle, run, reviewer2, status=Feedback.Status.SUBMITTED)
    merged = approve_run(cycle=cycle, run=run, by=approver, content=CONTENT, version=0)
    assert merged.is_merged and merged.status == Feedback.Status.APPROVED
    assert merged.approved_by == approver
    assert set(merged.merged_from.all()) == {first, second}
    for feedback in (first, second):
        feedback.refresh_from_db()
        assert feedback.status == Feedback.Status.APPROVED
        assert feedback.approved_by == approver
    approvals = AuditEvent.objects.filter(action="feedback.approve", actor=approver)
    assert sorted(int(e.object_id) for e in approvals) == sorted([merged.pk, first.pk, second.pk])
    cycle.refresh_from_db()
    assert cycle.status == Cycle.Status.REVIEWED


def test_approve_run_needs_a_submission(reviewer, approver):
    run = make_run()
    cycle = make_cycle(run)
    make_feedback(cycle, run, reviewer)  # still a draft
    with pytest.raises(FeedbackStateError):
        approve_run(cycle=cycle, run=run, by=approver, content=CONTENT, version=0)


def test_progress_counts_reviewed_and_approved_runs(reviewer, approver):
    runs = [make_run() for _ in range(3)]
    cycle = make_cycle(*runs)
    make_feedback(cycle, runs[0], reviewer, status=Feedback.Status.SUBMITTED)
    make_feedback(cycle, runs[1], reviewer, status=Feedback.Status.SUBMITTED)
    make_feedback(cycle, runs[2], reviewer)  # draft: not reviewed
    approve_run(cycle=cycle, run=runs[0], by=approver, content=CONTENT, version=0)
    assert cycle.progress() == {"total": 3, "reviewed": 2, "approved": 1}
    cycle.refresh_from_db()
    assert cycle.status == Cycle.Status.REVIEWING


def test_next_run_skips_submitted_and_unassigned_runs(reviewer, approver):
    runs = [make_run(label=f"trace-{n}") for n in (1, 2, 3)]
    cycle = make_cycle(*runs)
    for run in runs[:2]:
        cycle.assign(run=run, reviewer=reviewer, by=approver)
    make_feedback(cycle, runs[0], reviewer, status=Feedback.Status.SUBMITTED)
    assert cycle.next_run_for(reviewer) == runs[1]
    make_feedback(cycle, runs[1], reviewer, status=Feedback.Status.SUBMITTED)
    assert cycle.next_run_for(reviewer) is None


def test_next_run_returns_sent_back_runs(reviewer, approver):
    run = make_run()
    cycle = make_cycle(run)
    cycle.assign(run=run, reviewer=reviewer, by=approver)
    feedback = make_feedback(cycle, run, reviewer, status=Feedback.Status.SUBMITTED)
    assert cycle.next_run_for(reviewer) is None
    feedback.send_back(by=approver, comment="More detail")
    assert cycle.next_run_for(reviewer) == run


def test_assign_checks_roles_and_is_audited(reviewer, approver, engineer, outsider):
    run = make_run()
    cycle = make_cycle(run)
    with pytest.raises(PermissionDenied):
        cycle.assign(run=run, reviewer=reviewer, by=reviewer)
    with pytest.raises(ValueError):
        cycle.assign(run=run, reviewer=outsider, by=engineer)
    cycle.assign(run=run, reviewer=reviewer, by=engineer)
    cycle.assign(run=run, reviewer=reviewer, by=engineer)
    assert cycle.assignments.count() == 1
    assert AuditEvent.objects.filter(action="review.assign", actor=engineer).count() == 1


def test_blind_review_until_own_submission(reviewer, reviewer2, approver, engineer):
    run = make_run()
    cycle = make_cycle(run)
    mine = make_feedback(cycle, run, reviewer)
    make_feedback(cycle, run, reviewer2, status=Feedback.Status.SUBMITTED)
    assert not can_see_others_feedback(reviewer, cycle=cycle, run=run)
    mine.submit(by=reviewer)
    assert can_see_others_feedback(reviewer, cycle=cycle, run=run)
    assert can_see_others_feedback(approver, cycle=cycle, run=run)
    assert not can_see_others_feedback(engineer, cycle=cycle, run=run)


def test_create_from_runs_refuses_two_harnesses(engineer):
    other = Harness.objects.create(version="v002", system_prompt="x")
    with pytest.raises(ValueError):
        Cycle.objects.create_from_runs(runs=[make_run(), make_run(harness=other)], name="", user=engineer)
    cycle = Cycle.objects.create_from_runs(runs=[make_run(), make_run()], name="", user=engineer)
    assert cycle.name.startswith("v001 · ")
    assert cycle.runs.count() == 2
    assert AuditEvent.objects.filter(action="cycle.create", object_id=str(cycle.pk)).exists()


def test_item_line_must_be_positive(reviewer):
    from django.db import IntegrityError

    run = make_run()
    feedback = make_feedback(make_cycle(run), run, reviewer)
    with pytest.raises(IntegrityError):
        FeedbackItem.objects.create(feedback=feedback, kind="required_observation", text="x", citation_line=0)
