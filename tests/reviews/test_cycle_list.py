import pytest
from django.urls import reverse

from loopsite.models import AuditEvent
from reviews.models import Cycle
from runs.models import Harness

from .builders import make_cycle, make_run

pytestmark = pytest.mark.django_db


def test_it_requires_login(client):
    assert client.get(reverse("reviews:cycle-list")).status_code == 302


def test_outsiders_get_403(client_for, outsider):
    client = client_for(outsider)
    assert client.get(reverse("reviews:cycle-list")).status_code == 403
    assert client.post(reverse("reviews:cycle-create"), {"runs": [make_run().pk]}).status_code == 403


def test_it_lists_cycles_with_progress(client_for, reviewer):
    cycle = make_cycle(make_run(), make_run(), name="Week 12")
    body = client_for(reviewer).get(reverse("reviews:cycle-list")).content.decode()
    assert f'href="/cycles/{cycle.pk}/">Week 12</a>' in body
    assert "<td>0</td><td>0</td><td>2</td>" in body
    assert "New cycle from chosen runs" not in body  # reviewers do not create cycles


def test_the_nav_links_to_cycles(client_for, reviewer):
    assert 'href="/cycles/">Cycles</a>' in client_for(reviewer).get(reverse("reviews:cycle-list")).content.decode()


def test_engineers_create_a_cycle_from_chosen_runs(client_for, engineer):
    runs = [make_run(), make_run()]
    make_run()  # not chosen
    response = client_for(engineer).post(reverse("reviews:cycle-create"), {"name": "Spot check", "runs": [r.pk for r in runs]})
    cycle = Cycle.objects.get()
    assert response.status_code == 302
    assert response["Location"] == f"/cycles/{cycle.pk}/"
    assert (cycle.name, cycle.created_by, set(cycle.runs.all())) == ("Spot check", engineer, set(runs))
    assert AuditEvent.objects.filter(action="cycle.create", actor=engineer).exists()


def test_reviewers_cannot_create_cycles(client_for, reviewer):
    response = client_for(reviewer).post(reverse("reviews:cycle-create"), {"runs": [make_run().pk]})
    assert response.status_code == 403
    assert not Cycle.objects.exists()


def test_runs_of_two_harnesses_are_refused(client_for, approver):
    other = Harness.objects.create(version="v002", system_prompt="x")
    runs = [make_run(), make_run(harness=other)]
    response = client_for(approver).post(reverse("reviews:cycle-create"), {"runs": [r.pk for r in runs]})
    assert response.status_code == 200
    assert "choose runs of one harness" in response.content.decode()
    assert not Cycle.objects.exists()


def test_choosing_no_runs_is_an_error(client_for, approver):
    response = client_for(approver).post(reverse("reviews:cycle-create"), {"name": "x"})
    assert "Choose the runs to review." in response.content.decode()
    assert not Cycle.objects.exists()


def test_progress_is_counted_per_cycle(reviewer):
    from reviews.models import Feedback

    from .builders import make_feedback

    shared, other = make_run(), make_run()
    first, second = make_cycle(shared, other, name="First"), make_cycle(shared, name="Second")
    make_feedback(first, shared, reviewer, status=Feedback.Status.SUBMITTED)  # reviewed in the first cycle only
    Feedback.objects.create(cycle=first, run=other, reviewer=reviewer, is_merged=True,
                            status=Feedback.Status.APPROVED, approved_by=reviewer, version=1)
    assert Cycle.progress_of([first.pk, second.pk]) == {
        first.pk: {"total": 2, "reviewed": 1, "approved": 1}, second.pk: {"total": 1, "reviewed": 0, "approved": 0}}
    assert second.progress() == {"total": 1, "reviewed": 0, "approved": 0}
    assert Cycle.progress_of([]) == {}


def test_the_list_does_not_query_per_cycle(client_for, engineer):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    client = client_for(engineer)

    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert client.get(reverse("reviews:cycle-list")).status_code == 200
        return len(captured)

    make_cycle(make_run(), name="One")
    few = queries()
    for number in range(8):
        make_cycle(make_run(), make_run(), name=f"More {number}")
    assert queries() == few
