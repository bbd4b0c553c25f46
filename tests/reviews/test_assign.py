import pytest
from django.urls import reverse

from loopsite.models import AuditEvent
from reviews.models import ReviewAssignment

from .builders import make_cycle, make_run

pytestmark = pytest.mark.django_db

HTMX = {"HTTP_HX_REQUEST": "true"}


def test_it_assigns_in_place_and_audits(client_for, engineer, reviewer):
    run = make_run()
    cycle = make_cycle(run)
    response = client_for(engineer).post(reverse("reviews:assign", args=[cycle.pk, run.pk]), {"reviewer": reviewer.pk}, **HTMX)
    assert response.status_code == 200
    body = response.content.decode()
    assert body.lstrip().startswith(f'<tr id="queue-row-{run.pk}"')
    assert "<li>rita" in body
    assert response["HX-Trigger"] == '{"assignmentChanged": {}}'
    assignment = ReviewAssignment.objects.get()
    assert (assignment.reviewer, assignment.assigned_by) == (reviewer, engineer)
    assert AuditEvent.objects.filter(action="review.assign", actor=engineer, object_id=str(assignment.pk)).exists()


def test_it_rejects_get(client_for, engineer):
    run = make_run()
    cycle = make_cycle(run)
    assert client_for(engineer).get(reverse("reviews:assign", args=[cycle.pk, run.pk])).status_code == 405


def test_reviewers_cannot_assign(client_for, reviewer):
    run = make_run()
    cycle = make_cycle(run)
    response = client_for(reviewer).post(reverse("reviews:assign", args=[cycle.pk, run.pk]), {"reviewer": reviewer.pk})
    assert response.status_code == 403
    assert not ReviewAssignment.objects.exists()


def test_only_reviewers_can_be_assigned(client_for, approver, outsider):
    run = make_run()
    cycle = make_cycle(run)
    response = client_for(approver).post(reverse("reviews:assign", args=[cycle.pk, run.pk]), {"reviewer": outsider.pk}, **HTMX)
    assert "Choose a reviewer who is not assigned yet." in response.content.decode()
    assert not ReviewAssignment.objects.exists()


def test_unassign_removes_and_audits(client_for, approver, reviewer):
    run = make_run()
    cycle = make_cycle(run)
    cycle.assign(run=run, reviewer=reviewer, by=approver)
    response = client_for(approver).post(reverse("reviews:unassign", args=[cycle.pk, run.pk, reviewer.pk]), **HTMX)
    assert response.status_code == 200
    assert "nobody" in response.content.decode()
    assert not ReviewAssignment.objects.exists()
    assert AuditEvent.objects.filter(action="review.unassign", actor=approver).exists()
