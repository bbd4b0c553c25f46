import pytest
from django.urls import reverse

from .builders import make_cycle, make_feedback, make_run

pytestmark = pytest.mark.django_db


def test_it_goes_to_the_next_assigned_run_without_submitted_feedback(client_for, reviewer, engineer):
    runs = [make_run(label=f"trace-0{n}") for n in (1, 2, 3)]
    cycle = make_cycle(*runs)
    for run in runs[:2]:
        cycle.assign(run=run, reviewer=reviewer, by=engineer)
    make_feedback(cycle, runs[0], reviewer, status="submitted")
    response = client_for(reviewer).get(reverse("reviews:next-run", args=[cycle.pk]))
    assert response.status_code == 302
    assert response["Location"] == reverse("reviews:feedback-edit", args=[cycle.pk, runs[1].pk])


def test_with_nothing_left_it_returns_to_the_queue(client_for, reviewer):
    cycle = make_cycle(make_run())
    response = client_for(reviewer).get(reverse("reviews:next-run", args=[cycle.pk]), follow=True)
    assert response.redirect_chain == [(reverse("reviews:cycle-detail", args=[cycle.pk]), 302)]
    assert "Nothing left to review in this cycle" in response.content.decode()


def test_it_needs_the_reviewer_role(client_for, engineer, outsider):
    cycle = make_cycle(make_run())
    assert client_for(engineer).get(reverse("reviews:next-run", args=[cycle.pk])).status_code == 403
    assert client_for(outsider).get(reverse("reviews:next-run", args=[cycle.pk])).status_code == 403
