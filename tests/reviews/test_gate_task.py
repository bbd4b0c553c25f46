"""The gate task and its state on GateRun rows: claims, second deliveries, waiting for runs, auto-start, the sweep."""

from datetime import timedelta

import pytest
from django.utils import timezone

from reviews import gate
from reviews.models import EvalCase, GateRun
from reviews.tasks import run_gate_task
from runs.models import Run

from .gate_builders import approved_suite, queued_gate

pytestmark = pytest.mark.django_db


@pytest.fixture
def sent(monkeypatch):
    """What would go to the broker: ("delay", id) and ("apply_async", id, countdown)."""
    calls = []
    monkeypatch.setattr(run_gate_task, "delay", lambda pk: calls.append(("delay", pk)))
    monkeypatch.setattr(run_gate_task, "apply_async",
                        lambda args, countdown=None: calls.append(("apply_async", args[0], countdown)))
    return calls


def test_a_second_delivery_runs_nothing_twice(standin, approver):
    cycle, _, _ = approved_suite(approver, count=2)
    gate_run = queued_gate(cycle)
    run_gate_task.apply(args=[gate_run.pk], throw=True)
    gate_run.refresh_from_db()
    finished_at = gate_run.finished_at
    run_gate_task.apply(args=[gate_run.pk], throw=True)
    gate_run.refresh_from_db()
    assert gate_run.attempts == 1 and gate_run.finished_at == finished_at and gate_run.rows.count() == 2


def test_a_running_gate_is_not_claimed_again(approver):
    cycle, _, _ = approved_suite(approver, count=1)
    gate_run = queued_gate(cycle)
    assert gate_run.claim() == 1  # the attempt taken
    assert gate_run.claim() is None
    run_gate_task.apply(args=[gate_run.pk], throw=True)  # does nothing: the row is running elsewhere
    gate_run.refresh_from_db()
    assert gate_run.status == GateRun.Status.RUNNING and gate_run.attempts == 1


def test_an_unknown_gate_run_is_ignored():
    run_gate_task.apply(args=[987654], throw=True)


def test_request_gate_returns_the_active_gate_run(approver, engineer, sent, django_capture_on_commit_callbacks):
    cycle, _, _ = approved_suite(approver, count=1)
    with django_capture_on_commit_callbacks(execute=True):
        first = gate.request_gate(cycle=cycle, user=engineer)
        again = gate.request_gate(cycle=cycle, user=approver)
    assert first == again and sent == [("delay", first.pk)]


def test_a_waiting_gate_polls_while_its_runs_are_active(approver, sent, settings):
    settings.GATE_POLL_SECONDS = 3
    cycle, runs, _ = approved_suite(approver, count=2)
    Run.objects.filter(pk=runs[1].pk).update(status=Run.Status.RUNNING)
    gate_run = GateRun.objects.create(cycle=cycle, harness=cycle.harness, kind=GateRun.Kind.CANDIDATE,
                                      status=GateRun.Status.WAITING, heartbeat_at=timezone.now() - timedelta(seconds=9))
    run_gate_task.apply(args=[gate_run.pk], throw=True)
    gate_run.refresh_from_db()
    assert gate_run.status == GateRun.Status.WAITING and sent == [("apply_async", gate_run.pk, 3)]

    stale = GateRun.objects.get(pk=gate_run.pk)
    stale.heartbeat_at -= timedelta(seconds=1)  # a duplicate delivery that saw an older check
    assert gate.poll_waiting(gate_run=stale) is False
    assert len(sent) == 1  # only one poll chain goes on


def test_a_waiting_gate_runs_once_its_runs_have_finished(standin, approver, sent):
    cycle, runs, _ = approved_suite(approver, count=2)
    Run.objects.filter(pk=runs[1].pk).update(status=Run.Status.RUNNING)
    gate_run = GateRun.objects.create(cycle=cycle, harness=cycle.harness, kind=GateRun.Kind.CANDIDATE,
                                      status=GateRun.Status.WAITING, heartbeat_at=timezone.now())
    run_gate_task.apply(args=[gate_run.pk], throw=True)
    Run.objects.filter(pk=runs[1].pk).update(status=Run.Status.SUCCEEDED)
    run_gate_task.apply(args=[gate_run.pk], throw=True)
    gate_run.refresh_from_db()
    assert gate_run.status == GateRun.Status.SUCCEEDED and gate_run.total == 2


# --- starting by itself after the last decision -----------------------------------------------------------


def _proposals(approver, count=3):
    cycle, _, cases = approved_suite(approver, count=count)
    EvalCase.objects.filter(cycle=cycle).update(status=EvalCase.Status.PROPOSED, approved_by=None, approved_at=None)
    return cycle, [EvalCase.objects.get(pk=case.pk) for case in cases]


def test_the_gate_starts_when_the_last_proposal_is_decided(approver, sent, django_capture_on_commit_callbacks):
    cycle, cases = _proposals(approver)
    with django_capture_on_commit_callbacks(execute=True):
        cases[0].approve(by=approver)
        cases[1].reject(by=approver, reason="Too narrow.")
    assert not GateRun.objects.exists() and sent == []
    with django_capture_on_commit_callbacks(execute=True):
        cases[2].approve(by=approver)
    gate_run = GateRun.objects.get()
    assert gate_run.cycle == cycle and gate_run.status == GateRun.Status.QUEUED and gate_run.requested_by == approver
    assert sent == [("delay", gate_run.pk)]


def test_the_gate_waits_for_commit_before_it_starts(approver, sent, django_capture_on_commit_callbacks):
    _, cases = _proposals(approver, count=1)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        cases[0].approve(by=approver)
    assert not GateRun.objects.exists() and len(callbacks) == 1


def test_auto_gate_can_be_turned_off(approver, sent, settings, django_capture_on_commit_callbacks):
    settings.AUTO_GATE = False
    _, cases = _proposals(approver, count=1)
    with django_capture_on_commit_callbacks(execute=True):
        cases[0].approve(by=approver)
    assert not GateRun.objects.exists() and sent == []


def test_no_gate_when_every_proposal_was_rejected(approver, sent, django_capture_on_commit_callbacks):
    _, cases = _proposals(approver, count=2)
    with django_capture_on_commit_callbacks(execute=True):
        for case in cases:
            case.reject(by=approver, reason="Not useful.")
    assert not GateRun.objects.exists()


def test_a_decision_stands_when_the_gate_cannot_start(approver, sent, monkeypatch, django_capture_on_commit_callbacks):
    _, cases = _proposals(approver, count=1)

    def broken(**kwargs):
        raise RuntimeError("broker down")

    monkeypatch.setattr(gate, "request_gate", broken)
    with django_capture_on_commit_callbacks(execute=True):
        cases[0].approve(by=approver)
    cases[0].refresh_from_db()
    assert cases[0].status == EvalCase.Status.APPROVED and not GateRun.objects.exists()


# --- the sweep -------------------------------------------------------------------------------------------------


@pytest.fixture
def sweep(django_capture_on_commit_callbacks):
    """The sweep, with what it enqueues on commit sent at once (to the `sent` recorder)."""
    def run():
        with django_capture_on_commit_callbacks(execute=True):
            counts = GateRun.sweep()
        return counts

    return run


def _aged(gate_run: GateRun, seconds: int, **fields) -> GateRun:
    GateRun.objects.filter(pk=gate_run.pk).update(heartbeat_at=timezone.now() - timedelta(seconds=seconds), **fields)
    gate_run.refresh_from_db()
    return gate_run


def test_the_sweep_requeues_a_gate_whose_worker_vanished(approver, sent, settings, sweep):
    cycle, _, _ = approved_suite(approver, count=1)
    gate_run = queued_gate(cycle)
    gate_run.claim()
    _aged(gate_run, settings.WORK_STALE_SECONDS + 5)
    assert sweep()["requeued"] == 1
    gate_run.refresh_from_db()
    assert gate_run.status == GateRun.Status.QUEUED and sent == [("delay", gate_run.pk)]
    assert "Worker lost during attempt 1" in gate_run.last_error


def test_the_sweep_fails_a_gate_after_its_last_attempt(approver, sent, settings, sweep):
    cycle, _, _ = approved_suite(approver, count=1)
    gate_run = queued_gate(cycle)
    gate_run.claim()
    _aged(gate_run, settings.WORK_STALE_SECONDS + 5, attempts=settings.RUN_MAX_ATTEMPTS)
    assert sweep()["failed"] == 1
    gate_run.refresh_from_db()
    assert gate_run.status == GateRun.Status.FAILED and gate_run.last_error.startswith("Worker lost: no heartbeat")
    assert sent == []


def test_the_sweep_leaves_a_beating_gate_alone(approver, sent, sweep):
    cycle, _, _ = approved_suite(approver, count=1)
    gate_run = queued_gate(cycle)
    gate_run.claim()
    assert sweep() == {"requeued": 0, "failed": 0, "reenqueued": 0, "released": 0, "repolled": 0}


def test_the_sweep_sends_a_lost_queued_message_again(approver, sent, settings, sweep):
    cycle, _, _ = approved_suite(approver, count=1)
    gate_run = _aged(queued_gate(cycle), settings.QUEUED_STALE_SECONDS + 5)
    assert sweep()["reenqueued"] == 1 and sent == [("delay", gate_run.pk)]
    assert sweep()["reenqueued"] == 0  # not again until it is stale again


def test_the_sweep_queues_a_waiting_gate_whose_runs_finished(approver, sent, sweep):
    cycle, _, _ = approved_suite(approver, count=1)
    gate_run = GateRun.objects.create(cycle=cycle, harness=cycle.harness, kind=GateRun.Kind.CANDIDATE,
                                      status=GateRun.Status.WAITING, heartbeat_at=timezone.now())
    assert sweep()["released"] == 1
    gate_run.refresh_from_db()
    assert gate_run.status == GateRun.Status.QUEUED and sent == [("delay", gate_run.pk)]


def test_the_sweep_restarts_a_lost_poll(approver, sent, sweep):
    cycle, runs, _ = approved_suite(approver, count=1)
    Run.objects.filter(pk=runs[0].pk).update(status=Run.Status.QUEUED)
    gate_run = GateRun.objects.create(cycle=cycle, harness=cycle.harness, kind=GateRun.Kind.CANDIDATE,
                                      status=GateRun.Status.WAITING, heartbeat_at=timezone.now())
    assert sweep()["repolled"] == 0  # checked just now
    _aged(gate_run, gate.WAITING_STALE_SECONDS + 5)
    assert sweep()["repolled"] == 1 and sent == [("delay", gate_run.pk)]
    gate_run.refresh_from_db()
    assert gate_run.status == GateRun.Status.WAITING


def test_the_beat_sweep_includes_gate_runs(approver, sent, settings, django_capture_on_commit_callbacks):
    from loopsite.tasks import sweep_stale_work

    cycle, _, _ = approved_suite(approver, count=1)
    gate_run = _aged(queued_gate(cycle), settings.QUEUED_STALE_SECONDS + 5)
    with django_capture_on_commit_callbacks(execute=True):
        sweep_stale_work.apply(throw=True)
    assert ("delay", gate_run.pk) in sent


# --- a real worker -------------------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_real_worker_waits_for_the_runs_then_runs_the_gate(standin, approver, celery_worker_factory):
    from tests.fixtures_worker import wait_for

    cycle, runs, _ = approved_suite(approver, count=2)
    Run.objects.filter(pk=runs[1].pk).update(status=Run.Status.RUNNING)
    gate_run = GateRun.objects.create(cycle=cycle, harness=cycle.harness, kind=GateRun.Kind.CANDIDATE,
                                      status=GateRun.Status.WAITING, heartbeat_at=timezone.now())
    celery_worker_factory(concurrency=1, env={"GATE_POLL_SECONDS": "1"})
    run_gate_task.delay(gate_run.pk)
    wait_for(lambda: GateRun.objects.filter(pk=gate_run.pk, heartbeat_at__gt=gate_run.heartbeat_at).exists(),
             timeout=20, message="the worker to check the waiting gate run")
    assert GateRun.objects.get(pk=gate_run.pk).status == GateRun.Status.WAITING
    Run.objects.filter(pk=runs[1].pk).update(status=Run.Status.SUCCEEDED)
    done = wait_for(lambda: GateRun.objects.filter(pk=gate_run.pk, status__in=["succeeded", "failed"]).first(),
                    timeout=60, message="the gate run to finish")
    assert done.status == GateRun.Status.SUCCEEDED, done.last_error
    assert done.total == 2 and done.rows.count() == 2
