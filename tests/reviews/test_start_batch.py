from unittest import mock

import pytest

from reviews.models import Cycle
from runs.models import Dataroom, Harness, Question
from runs.work import start_batch

pytestmark = pytest.mark.django_db


def test_starting_a_batch_creates_its_cycle(engineer):
    harness = Harness.objects.create(version="v007", system_prompt="p")
    dataroom = Dataroom.objects.create(name="room")
    questions = [Question.objects.create(text=f"Q{n}") for n in range(3)]
    with mock.patch("runs.tasks.execute_run.delay_on_commit"):
        batch = start_batch(harness=harness, dataroom=dataroom, questions=questions, user=engineer)
    cycle = Cycle.objects.get()
    assert cycle.batch == batch
    assert cycle.harness == harness
    assert cycle.created_by == engineer
    assert cycle.name.startswith("v007 · ") and cycle.name.endswith(f"batch {batch.pk}")
    assert set(cycle.runs.all()) == set(batch.runs.all())
    assert cycle.runs.count() == 3
