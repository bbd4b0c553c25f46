import pytest
from django.urls import reverse

from reviews.models import approve_run

from .builders import make_cycle, make_feedback, make_run

pytestmark = pytest.mark.django_db

CONTENT = {"summary": "s", "theme": "t", "verdict": "pass", "items": []}


def url(cycle):
    return reverse("reviews:cycle-detail", args=[cycle.pk])


def test_outsiders_get_403(client_for, outsider):
    assert client_for(outsider).get(url(make_cycle(make_run()))).status_code == 403


def test_it_shows_each_run_with_state_assignees_reviewers_and_progress(client_for, engineer, reviewer, reviewer2, approver):
    runs = [make_run(label=f"trace-0{n}") for n in (1, 2, 3)]
    cycle = make_cycle(*runs)
    cycle.assign(run=runs[0], reviewer=reviewer, by=engineer)
    make_feedback(cycle, runs[0], reviewer, status="submitted")
    make_feedback(cycle, runs[1], reviewer2)
    approve_run(cycle=cycle, run=runs[0], by=approver, content=CONTENT, version=0)
    body = client_for(engineer).get(url(cycle)).content.decode()
    assert "1 reviewed · 1 approved · 3 total" in body
    row0 = body[body.index(f'id="queue-row-{runs[0].pk}"'):body.index(f'id="queue-row-{runs[1].pk}"')]
    assert '<span class="badge badge-approved">Approved</span>' in row0
    assert "<li>rita" in row0  # assignee
    row1 = body[body.index(f'id="queue-row-{runs[1].pk}"'):body.index(f'id="queue-row-{runs[2].pk}"')]
    assert "In progress" in row1 and "rory" in row1
    row2 = body[body.index(f'id="queue-row-{runs[2].pk}"'):]
    assert "Not started" in row2
    assert '<select name="reviewer"' in body  # engineers assign


def test_reviewers_see_no_assignment_controls(client_for, reviewer):
    cycle = make_cycle(make_run())
    body = client_for(reviewer).get(url(cycle)).content.decode()
    assert '<select name="reviewer"' not in body
    assert "Nothing assigned to you is waiting for review." in body


def test_an_htmx_request_gets_only_the_queue(client_for, reviewer):
    cycle = make_cycle(make_run())
    body = client_for(reviewer).get(url(cycle), HTTP_HX_REQUEST="true").content.decode()
    assert body.lstrip().startswith('<section id="queue"')
    assert "<html" not in body
