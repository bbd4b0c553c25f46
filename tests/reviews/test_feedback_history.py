import pytest
from django.urls import reverse

from .builders import make_cycle, make_feedback, make_run

pytestmark = pytest.mark.django_db


def test_the_author_sees_every_revision(client_for, reviewer, approver):
    run = make_run()
    feedback = make_feedback(make_cycle(run), run, reviewer, status="submitted")
    feedback.send_back(by=approver, comment="Be specific")
    body = client_for(reviewer).get(reverse("reviews:feedback-history", args=[feedback.pk])).content.decode()
    assert body.count("<tr>") == 3  # header + submit + send back
    assert "Comment: Be specific" in body


def test_blind_review_hides_history_from_other_reviewers(client_for, reviewer, reviewer2):
    run = make_run()
    cycle = make_cycle(run)
    theirs = make_feedback(cycle, run, reviewer2, status="submitted")
    make_feedback(cycle, run, reviewer)
    assert client_for(reviewer).get(reverse("reviews:feedback-history", args=[theirs.pk])).status_code == 403


def test_outsiders_get_403(client_for, outsider, reviewer):
    run = make_run()
    feedback = make_feedback(make_cycle(run), run, reviewer, status="submitted")
    assert client_for(outsider).get(reverse("reviews:feedback-history", args=[feedback.pk])).status_code == 403
