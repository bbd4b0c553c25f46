"""A waiting (candidate) gate run starts when the last run of its cycle finishes, not at its next poll."""

import pytest
from django.utils import timezone

from reviews.models import GateRun
from runs.models import Run

from .gate_builders import approved_suite
from .test_gate_task import sent  # noqa: F401 - the same spy on what would go to the broker

pytestmark = pytest.mark.django_db


def _running(run: Run) -> Run:
    Run.objects.filter(pk=run.pk).update(status=Run.Status.RUNNING, attempts=1, started_at=timezone.now())
    run.refresh_from_db()
    return run


def _waiting_gate(cycle) -> GateRun:
    return GateRun.objects.create(cycle=cycle, harness=cycle.harness, kind=GateRun.Kind.CANDIDATE,
                                  status=GateRun.Status.WAITING, heartbeat_at=timezone.now())


def test_the_last_run_finishing_queues_the_waiting_gate_at_once(approver, sent, django_capture_on_commit_callbacks):
    cycle, runs, _ = approved_suite(approver, count=3)
    first, last = _running(runs[1]), _running(runs[2])
    gate_run = _waiting_gate(cycle)
    with django_capture_on_commit_callbacks(execute=True):
        assert first.finish(1)
    gate_run.refresh_from_db()
    assert gate_run.status == GateRun.Status.WAITING and sent == []  # one run is still going
    with django_capture_on_commit_callbacks(execute=True):
        assert last.finish(1, error="The model endpoint failed.")  # a failed run is finished too
    gate_run.refresh_from_db()
    assert gate_run.status == GateRun.Status.QUEUED and sent == [("delay", gate_run.pk)]


def test_nothing_is_sent_before_the_finish_commits(approver, sent, django_capture_on_commit_callbacks):
    cycle, runs, _ = approved_suite(approver, count=1)
    run = _running(runs[0])
    gate_run = _waiting_gate(cycle)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        assert run.finish(1)
    assert sent == [] and GateRun.objects.get(pk=gate_run.pk).status == GateRun.Status.WAITING
    with django_capture_on_commit_callbacks(execute=True):  # the commit: the gate's task goes on its own commit
        for callback in callbacks:
            callback()
    assert sent == [("delay", gate_run.pk)]


def test_a_gate_of_another_cycle_or_already_queued_is_left_alone(approver, sent, django_capture_on_commit_callbacks):
    cycle, runs, _ = approved_suite(approver, count=1)
    other, _, _ = approved_suite(approver, count=1, cycle_name="other")
    run = _running(runs[0])
    elsewhere = _waiting_gate(other)
    Run.objects.filter(cycles=other).update(status=Run.Status.RUNNING)
    with django_capture_on_commit_callbacks(execute=True):
        assert run.finish(1)
    assert GateRun.objects.get(pk=elsewhere.pk).status == GateRun.Status.WAITING and sent == []
