"""The sweep (loopsite.work.WorkItem.sweep) on runs: recover runs whose worker or message vanished."""

from datetime import timedelta
from unittest import mock

import pytest
from django.conf import settings as django_settings
from django.utils import timezone

from runs.models import Run


@pytest.fixture
def enqueued():
    """The run ids the sweep enqueues (the task is not sent anywhere)."""
    with mock.patch("runs.tasks.execute_run.delay_on_commit") as delay:
        yield lambda: [call.args[0] for call in delay.call_args_list]


def age(run: Run, *, seconds: float, **fields) -> None:
    then = timezone.now() - timedelta(seconds=seconds)
    Run.objects.filter(pk=run.pk).update(**{name: then for name in fields})


def test_a_running_row_with_a_stale_heartbeat_is_queued_again(make_run, settings, enqueued):
    run = make_run(claim=True)
    age(run, seconds=settings.WORK_STALE_SECONDS + 5, heartbeat_at=True)

    assert Run.sweep() == {"requeued": 1, "failed": 0, "reenqueued": 0}
    run.refresh_from_db()
    assert run.status == Run.Status.QUEUED
    assert run.attempts == 1
    assert run.last_error == "Worker lost during attempt 1; queued again."
    assert enqueued() == [run.pk]
    # The next worker can claim it; it is attempt 2.
    assert run.claim() and run.attempts == 2


def test_a_stale_row_on_its_last_attempt_fails(make_run, settings, enqueued):
    settings.RUN_MAX_ATTEMPTS = 1
    run = make_run(claim=True)
    age(run, seconds=settings.WORK_STALE_SECONDS + 5, heartbeat_at=True)

    assert Run.sweep()["failed"] == 1
    run.refresh_from_db()
    assert run.status == Run.Status.FAILED
    assert run.last_error.startswith("Worker lost: no heartbeat")
    assert run.finished_at is not None
    assert enqueued() == []


def test_a_live_running_row_is_left_alone(make_run, enqueued):
    run = make_run(claim=True)
    run.beat()
    assert Run.sweep() == {"requeued": 0, "failed": 0, "reenqueued": 0}
    run.refresh_from_db()
    assert run.status == Run.Status.RUNNING
    assert enqueued() == []


def test_a_queued_row_whose_message_was_lost_is_enqueued_again_once(make_run, enqueued):
    run = make_run()
    age(run, seconds=django_settings.QUEUED_STALE_SECONDS + 5, created_at=True)

    assert Run.sweep()["reenqueued"] == 1
    # A second sweep right after (or a concurrent one) finds it freshly enqueued.
    assert Run.sweep()["reenqueued"] == 0
    assert enqueued() == [run.pk]
    run.refresh_from_db()
    assert run.status == Run.Status.QUEUED


def test_a_recently_queued_row_is_left_alone(make_run, enqueued):
    make_run()
    assert Run.sweep()["reenqueued"] == 0
    assert enqueued() == []


def test_finished_rows_are_never_touched(make_run, settings, enqueued):
    done = make_run(claim=True)
    Run.objects.filter(pk=done.pk).update(status=Run.Status.SUCCEEDED)
    age(done, seconds=10_000, heartbeat_at=True, created_at=True)
    assert Run.sweep() == {"requeued": 0, "failed": 0, "reenqueued": 0}
    done.refresh_from_db()
    assert done.status == Run.Status.SUCCEEDED


def test_two_sweeps_over_the_same_stale_rows_enqueue_each_once(make_run, settings, enqueued):
    """The second sweep read its candidates before the first one updated them."""
    runs = [make_run(claim=True), make_run(bank_index=1, claim=True)]
    for run in runs:
        age(run, seconds=settings.WORK_STALE_SECONDS + 5, heartbeat_at=True)
    stale = list(Run.objects.filter(status=Run.Status.RUNNING).values_list("pk", "attempts"))

    real_filter = Run.objects.filter

    def first_sweep_races_in(*args, **kwargs):
        queryset = real_filter(*args, **kwargs)
        if not hasattr(first_sweep_races_in, "done"):
            first_sweep_races_in.done = True
            Run.sweep()
            return mock.Mock(values_list=lambda *a, **k: stale)
        return queryset

    with mock.patch.object(Run.objects, "filter", side_effect=first_sweep_races_in):
        counts = Run.sweep()
    assert counts["requeued"] == 0
    assert sorted(enqueued()) == sorted(run.pk for run in runs)
