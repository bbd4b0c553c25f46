"""Integers too large for the database (SQLite raises OverflowError above 2**63-1) get a message, not a 500."""

import pytest
from django.urls import reverse

from loopsite.forms import DB_INT_MAX, BoundedIntegerField, bounded_int
from reviews.models import Cycle
from runs.models import Batch, Run

from .ui_builders import make_dataroom, make_harness, make_question, make_run

pytestmark = pytest.mark.django_db

HUGE = str(2**63)


@pytest.mark.parametrize("batch", [HUGE, "-" + HUGE, "0", "abc", "9" * 5000])
def test_a_bad_batch_filter_is_ignored_with_a_message(client_for, reviewer, batch):
    run = make_run()
    response = client_for(reviewer).get(reverse("runs:list"), {"batch": batch})
    assert response.status_code == 200
    body = response.content.decode()
    assert "Batch filter ignored: Enter a whole number from 1 to 9223372036854775807." in body
    assert run.label in body or f"#{run.pk}" in body


@pytest.mark.parametrize("question", [HUGE, "-" + HUGE, "1.5", "x"])
def test_starting_runs_with_a_bad_question_id_is_a_form_error(client_for, engineer, question):
    harness, room = make_harness(), make_dataroom()
    make_question()
    response = client_for(engineer).post(reverse("runs:start"), {
        "harness": harness.pk, "dataroom": room.pk, "questions": [question],
    })
    assert response.status_code == 200
    assert response.context["form"].errors["questions"]
    assert not Batch.objects.exists() and not Run.objects.exists()


@pytest.mark.parametrize("value", [HUGE, "-" + HUGE])
def test_starting_runs_with_a_bad_harness_or_dataroom_is_a_form_error(client_for, engineer, value):
    harness, room, question = make_harness(), make_dataroom(), make_question()
    response = client_for(engineer).post(reverse("runs:start"), {
        "harness": value, "dataroom": value, "questions": [question.pk],
    })
    assert response.status_code == 200
    assert set(response.context["form"].errors) == {"harness", "dataroom"}
    assert not Run.objects.exists()


def test_a_new_cycle_with_a_bad_run_id_is_a_form_error(client_for, engineer):
    make_run()
    response = client_for(engineer).post(reverse("reviews:cycle-create"), {"name": "x", "runs": [HUGE]})
    assert response.status_code == 200
    assert response.context["form"].errors["runs"]
    assert not Cycle.objects.exists()


def test_the_bounded_field_and_helper():
    field = BoundedIntegerField(required=False, min_value=1)
    assert field.clean(str(DB_INT_MAX)) == DB_INT_MAX
    with pytest.raises(Exception, match="from 1 to 9223372036854775807"):
        field.clean(HUGE)
    assert bounded_int(HUGE) is None and bounded_int("12") == 12 and bounded_int("x", default=-1) == -1
    assert bounded_int(None) is None and bounded_int("5", maximum=4) is None
