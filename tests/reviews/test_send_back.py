import pytest
from django.contrib.auth.models import Group
from django.urls import reverse

from loopsite.models import AuditEvent

from .builders import make_cycle, make_feedback, make_run

pytestmark = pytest.mark.django_db

HTMX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def feedback(reviewer):
    run = make_run()
    return make_feedback(make_cycle(run), run, reviewer, status="submitted")


def test_it_sends_back_with_a_comment_in_place(client_for, approver, feedback):
    response = client_for(approver).post(reverse("reviews:send-back", args=[feedback.pk]), {"comment": "Cite the CSV."}, **HTMX)
    assert response.status_code == 200
    assert response["HX-Trigger"] == f'{{"feedbackSentBack": {{"feedback": {feedback.pk}}}}}'
    assert '<span class="badge badge-sent_back">Sent back</span>' in response.content.decode()
    feedback.refresh_from_db()
    assert (feedback.status, feedback.sent_back_comment) == ("sent_back", "Cite the CSV.")
    assert AuditEvent.objects.filter(action="feedback.send_back", actor=approver, object_id=str(feedback.pk)).exists()
    assert feedback.revisions.filter(action="send_back").exists()


def test_a_comment_is_required(client_for, approver, feedback):
    response = client_for(approver).post(reverse("reviews:send-back", args=[feedback.pk]), {"comment": ""}, **HTMX)
    assert "Say what needs changing." in response.content.decode()
    feedback.refresh_from_db()
    assert feedback.status == "submitted"


def test_reviewers_get_403(client_for, reviewer2, feedback):
    response = client_for(reviewer2).post(reverse("reviews:send-back", args=[feedback.pk]), {"comment": "No"})
    assert response.status_code == 403
    feedback.refresh_from_db()
    assert feedback.status == "submitted"


def test_approvers_cannot_send_back_their_own(client_for, approver):
    approver.groups.add(Group.objects.get_or_create(name="reviewer")[0])
    run = make_run()
    own = make_feedback(make_cycle(run), run, approver, status="submitted")
    assert client_for(approver).post(reverse("reviews:send-back", args=[own.pk]), {"comment": "x"}).status_code == 403


def test_only_submitted_feedback_goes_back(client_for, approver, reviewer):
    run = make_run()
    draft = make_feedback(make_cycle(run), run, reviewer)
    response = client_for(approver).post(reverse("reviews:send-back", args=[draft.pk]), {"comment": "x"}, **HTMX)
    assert "Draft feedback cannot be sent back." in response.content.decode()
    draft.refresh_from_db()
    assert draft.status == "draft"
