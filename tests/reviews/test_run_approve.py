import pytest
from django.contrib.auth.models import Group
from django.urls import reverse

from loopsite.models import AuditEvent
from reviews.models import Feedback

from .builders import form_data, make_cycle, make_feedback, make_run

pytestmark = pytest.mark.django_db

HTMX = {"HTTP_HX_REQUEST": "true"}
OBS, CLAIM = "required_observation", "prohibited_claim"


def url(cycle, run):
    return reverse("reviews:run-approve", args=[cycle.pk, run.pk])


@pytest.fixture
def submitted(reviewer, reviewer2):
    run = make_run()
    cycle = make_cycle(run)
    first = make_feedback(cycle, run, reviewer, summary="Rita's summary", observations=["Mention Northstar", "Use account_hierarchy.csv"],
                          claims=["Do not stop at legal entities"], status="submitted")
    second = make_feedback(cycle, run, reviewer2, summary="Rory's summary", verdict="mixed",
                           observations=["mention northstar.", "Quote the ARR share"], claims=[], status="submitted")
    return cycle, run, first, second


def test_reviewers_get_403(client_for, reviewer, submitted):
    cycle, run, *_ = submitted
    client = client_for(reviewer)
    assert client.get(url(cycle, run)).status_code == 403
    assert client.post(url(cycle, run), form_data(op="approve"), **HTMX).status_code == 403
    assert not Feedback.objects.filter(is_merged=True).exists()


def test_outsiders_get_403(client_for, outsider, submitted):
    cycle, run, *_ = submitted
    assert client_for(outsider).get(url(cycle, run)).status_code == 403


def test_it_shows_every_submission_side_by_side_and_a_prefilled_merge(client_for, approver, submitted):
    cycle, run, first, second = submitted
    body = client_for(approver).get(url(cycle, run)).content.decode()
    assert body.count('data-testid="reviewer-card"') == 2
    title = body.split("<title>", 1)[1].split("</title>", 1)[0]
    assert title.startswith(f"Approve · {run.label}") and "<script" not in title
    assert "Rita&#x27;s summary" in body and "Rory&#x27;s summary" in body
    form = body[body.index('id="feedback-form"'):]
    # First summary; items once each, case and full stops ignored. The verdicts differ (fail, mixed):
    # the approver picks one, so none is preselected.
    assert "Rita&#x27;s summary</textarea>" in form
    assert '<option value="fail" selected>' not in form and '<option value="mixed" selected>' not in form
    assert form.count('>Mention Northstar</textarea>') == 1
    assert "mention northstar." not in form
    for text in ("Use account_hierarchy.csv", "Quote the ARR share", "Do not stop at legal entities"):
        assert f'>{text}</textarea>' in form


def test_approving_creates_the_merged_feedback_and_is_audited(client_for, approver, submitted):
    cycle, run, first, second = submitted
    rows = ((OBS, "Mention Northstar Holdings", "", "", ""), (CLAIM, "Do not stop at legal entities", "", "", ""))
    response = client_for(approver).post(url(cycle, run), form_data(summary="Merged", rows=rows, op="approve"), **HTMX)
    assert response.status_code == 200
    merged = Feedback.objects.get(is_merged=True)
    assert response["HX-Trigger"] == f'{{"feedbackApproved": {{"feedback": {merged.pk}, "version": {merged.version}}}}}'
    assert (merged.status, merged.summary, merged.approved_by) == ("approved", "Merged", approver)
    assert [i.text for i in merged.items.all()] == ["Mention Northstar Holdings", "Do not stop at legal entities"]
    for feedback in (first, second):
        feedback.refresh_from_db()
        assert feedback.status == "approved"
    audited = set(AuditEvent.objects.filter(action="feedback.approve", actor=approver).values_list("object_id", flat=True))
    assert audited == {str(merged.pk), str(first.pk), str(second.pk)}
    assert cycle.progress() == {"total": 1, "reviewed": 1, "approved": 1}


def test_an_approver_cannot_approve_a_run_they_reviewed(client_for, approver, reviewer):
    approver.groups.add(Group.objects.get_or_create(name="reviewer")[0])
    run = make_run()
    cycle = make_cycle(run)
    make_feedback(cycle, run, approver, status="submitted")
    client = client_for(approver)
    assert "another approver must approve it" in client.get(url(cycle, run)).content.decode()
    response = client.post(url(cycle, run), form_data(op="approve"), **HTMX)
    assert response.status_code == 403
    assert not Feedback.objects.filter(status="approved").exists()


def test_approval_needs_complete_merged_feedback(client_for, approver, submitted):
    cycle, run, *_ = submitted
    body = client_for(approver).post(url(cycle, run), form_data(summary="", op="approve"), **HTMX).content.decode()
    assert "Write a summary before submitting." in body
    assert not Feedback.objects.filter(is_merged=True, status="approved").exists()


def test_without_submissions_nothing_can_be_approved(client_for, approver, reviewer):
    run = make_run()
    cycle = make_cycle(run)
    make_feedback(cycle, run, reviewer)  # a draft
    client = client_for(approver)
    body = client.get(url(cycle, run)).content.decode()
    assert "No reviewer has submitted feedback on this run yet." in body
    assert "Roll up to parent accounts." not in body  # drafts stay private
    body = client.post(url(cycle, run), form_data(op="approve"), **HTMX).content.decode()
    assert "Not saved: No reviewer has submitted feedback on this run yet." in body
    assert not Feedback.objects.filter(status="approved").exists()


def test_the_merged_draft_autosaves(client_for, approver, submitted):
    cycle, run, *_ = submitted
    client = client_for(approver)
    client.post(url(cycle, run), form_data(summary="Work in progress"), **HTMX)
    merged = Feedback.objects.get(is_merged=True)
    assert (merged.status, merged.summary, merged.reviewer) == ("draft", "Work in progress", approver)
    assert "Work in progress</textarea>" in client.get(url(cycle, run)).content.decode()
    assert cycle.progress()["approved"] == 0


def test_reapproving_updates_the_merged_feedback(client_for, approver, submitted):
    cycle, run, *_ = submitted
    client = client_for(approver)
    client.post(url(cycle, run), form_data(summary="First", op="approve"), **HTMX)
    merged = Feedback.objects.get(is_merged=True)
    client.post(url(cycle, run), form_data(version=merged.version, summary="Second", op="approve"), **HTMX)
    merged.refresh_from_db()
    assert (merged.status, merged.summary) == ("approved", "Second")
    assert Feedback.objects.filter(is_merged=True).count() == 1


def test_rebuild_refills_from_submissions(client_for, approver, submitted):
    cycle, run, *_ = submitted
    client = client_for(approver)
    client.post(url(cycle, run), form_data(summary="Replaced by hand"), **HTMX)
    body = client.post(url(cycle, run), form_data(version=1, summary="Replaced by hand", op="rebuild"), **HTMX).content.decode()
    assert "Rita&#x27;s summary</textarea>" in body
    assert Feedback.objects.get(is_merged=True).summary == "Replaced by hand"


def test_agreeing_verdicts_are_preselected(client_for, approver, submitted):
    cycle, run, first, second = submitted
    Feedback.objects.filter(pk=second.pk).update(verdict="fail")
    form = client_for(approver).get(url(cycle, run)).content.decode().split('id="feedback-form"')[1]
    assert '<option value="fail" selected>' in form


def test_it_flags_disagreement_and_names_pending_reviewers(client_for, approver, submitted, django_user_model, engineer):
    from django.contrib.auth.models import Group

    cycle, run, first, second = submitted
    third = django_user_model.objects.create_user(username="remy", password="x")
    fourth = django_user_model.objects.create_user(username="rhea", password="x")
    for user in (third, fourth):
        user.groups.add(Group.objects.get_or_create(name="reviewer")[0])
    make_feedback(cycle, run, third, summary="Remy's secret draft", observations=["A secret observation"])
    cycle.assign(run=run, reviewer=fourth, by=engineer)
    body = client_for(approver).get(url(cycle, run)).content.decode()
    pending = body.split('data-testid="pending-reviewers"')[1].split("</div>")[0]
    assert "remy has a draft, not submitted" in pending and "rhea has not started" in pending
    assert "rita" not in pending
    assert "Remy&#x27;s secret draft" not in body and "A secret observation" not in body  # drafts stay private
    verdicts = body.split('data-testid="verdict-disagreement"')[1].split("</p>")[0]
    assert "rita said <strong>Fail</strong>" in verdicts and "rory said <strong>Mixed</strong>" in verdicts
    only_one = body.split('data-testid="only-one"')[1].split("</ul>")[0]
    assert "Use account_hierarchy.csv" in only_one and "Quote the ARR share" in only_one
    assert "Mention Northstar" not in only_one  # both wrote it (case and full stop aside)


def test_approving_without_a_chosen_verdict_is_refused(client_for, approver, submitted):
    cycle, run, *_ = submitted
    body = client_for(approver).post(url(cycle, run), form_data(verdict="", op="approve"), **HTMX).content.decode()
    assert "Choose a verdict before submitting." in body
    assert not Feedback.objects.filter(is_merged=True, status="approved").exists()
