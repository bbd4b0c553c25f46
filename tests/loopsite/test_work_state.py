"""The one work state machine (loopsite.work.WorkItem) on each of the four kinds: a run, a generation
step, a gate run, a HALO run. A stale attempt can neither heartbeat nor finish a row that a newer
attempt owns; the one sweep recovers every kind; each attempt's temporary directory is removed by the
next claim or by the sweep; child processes die with the worker that started them."""

import ast
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from loopsite.models import AuditEvent
from loopsite.work import WorkItem, sweep_stale_work, work_kinds
from reviews.models import Cycle, GateRun, GenerationJob, Optimization
from runs.models import Dataroom, Harness, Question, Run

KINDS = ["run", "generation", "gate", "halo"]
ROOT = Path(__file__).resolve().parent.parent.parent


@pytest.fixture(autouse=True)
def scratch_root(settings, tmp_path):
    settings.WORK_TEMP_ROOT = str(tmp_path / "work")
    return tmp_path / "work"


@pytest.fixture
def enqueued(monkeypatch):
    """(kind, pk) of every row the sweep sends again; nothing reaches a broker."""
    sent: list[tuple[str, int]] = []
    for model in work_kinds():
        monkeypatch.setattr(model, "enqueue_work", classmethod(lambda cls, pk: sent.append((cls.WORK_KIND, pk))))
    return sent


def make_item(kind: str) -> WorkItem:
    harness = Harness.objects.create(version=f"v-{kind}", system_prompt="Answer.")
    if kind == "run":
        return Run.objects.create(harness=harness, dataroom=Dataroom.objects.create(name=f"room-{kind}"),
                                  question=Question.objects.create(text=f"What about {kind}?"),
                                  trace_id=Run.new_trace_id())
    cycle = Cycle.objects.create(harness=harness, name=f"cycle {kind}")
    if kind == "generation":
        return GenerationJob.objects.create(cycle=cycle, kind=GenerationJob.Kind.INSIGHTS, heartbeat_at=timezone.now())
    if kind == "gate":
        return GateRun.objects.create(cycle=cycle, harness=harness, heartbeat_at=timezone.now())
    return Optimization.objects.create(cycle=cycle, heartbeat_at=timezone.now())


@pytest.fixture(params=KINDS)
def item(request, db) -> WorkItem:
    return make_item(request.param)


def worker(item: WorkItem) -> WorkItem:
    """The row as a separate worker process would load it."""
    return type(item).objects.get(pk=item.pk)


def age(item: WorkItem, seconds: float) -> None:
    type(item).objects.filter(pk=item.pk).update(heartbeat_at=timezone.now() - timedelta(seconds=seconds))


def row(item: WorkItem) -> WorkItem:
    return type(item).objects.get(pk=item.pk)


def test_every_kind_is_registered_once():
    names = [kind.WORK_KIND for kind in work_kinds()]
    assert set(KINDS) <= set(names) and len(names) == len(set(names))
    assert {"Run", "GenerationJob", "GateRun", "Optimization"} <= {kind.__name__ for kind in work_kinds()}


def test_claim_returns_the_attempt_it_took_and_only_one_worker_gets_it(item):
    first, second = worker(item), worker(item)
    assert first.claim() == 1
    assert second.claim() is None
    assert (row(item).status, row(item).attempts) == ("running", 1)


def test_a_stale_attempt_can_neither_beat_nor_finish_a_row_a_newer_attempt_owns(item, settings, enqueued):
    old = worker(item)
    assert old.claim() == 1
    age(item, settings.WORK_STALE_SECONDS + 5)
    assert type(item).sweep()["requeued"] == 1
    assert enqueued == [(item.WORK_KIND, item.pk)]
    new = worker(item)
    assert new.claim() == 2
    beaten_at = row(item).heartbeat_at

    stored = []
    assert old.beat() is False
    assert old.beat(1) is False
    assert old.finish(store=lambda: stored.append("old")) is False
    assert old.fail("the old worker's error") is False
    assert stored == []
    current = row(item)
    assert (current.status, current.attempts, current.heartbeat_at, current.last_error) == ("running", 2, beaten_at, "")

    # The fence is the attempt number, whichever object asks.
    assert new.beat(1) is False
    assert new.beat() is True and new.beat(2) is True
    assert new.finish(store=lambda: stored.append("new")) is True
    assert stored == ["new"]
    assert (row(item).status, row(item).attempts) == ("succeeded", 2)
    # ... and after the newer attempt finished, the old one still cannot change it.
    assert old.fail("late") is False and old.finish(1) is False
    assert (row(item).status, row(item).last_error) == ("succeeded", "")


def test_a_stale_attempt_cannot_finish_a_row_the_sweep_failed(item, settings, enqueued):
    settings.RUN_MAX_ATTEMPTS = 1
    old = worker(item)
    assert old.claim() == 1
    age(item, settings.WORK_STALE_SECONDS + 5)
    assert type(item).sweep()["failed"] == 1
    assert enqueued == []
    failed = row(item)
    assert failed.status == "failed" and failed.finished_at is not None
    assert failed.last_error.startswith(f"Worker lost: no heartbeat for {settings.WORK_STALE_SECONDS} s after 1 attempt(s).")
    assert old.finish() is False and old.beat() is False
    assert row(item).status == "failed"


def test_fail_keeps_a_readable_reason(item):
    claimed = worker(item)
    attempt = claimed.claim()
    assert claimed.fail("The model endpoint refused the connection.", attempt=attempt) is True
    failed = row(item)
    assert (failed.status, failed.last_error) == ("failed", "The model endpoint refused the connection.")
    assert failed.finished_at is not None


def test_a_live_attempt_is_left_alone_and_a_lost_message_is_sent_again_once(item, settings, enqueued):
    settings.QUEUED_STALE_SECONDS = 30
    counts = type(item).sweep()
    assert (counts["requeued"], counts["failed"], counts["reenqueued"]) == (0, 0, 0)
    age(item, 31)  # queued, its message sent 31 s ago and never claimed (Redis restarted)
    assert type(item).sweep()["reenqueued"] == 1
    assert type(item).sweep()["reenqueued"] == 0  # freshly sent: not again until it is stale again
    assert enqueued == [(item.WORK_KIND, item.pk)]
    claimed = worker(item)
    claimed.claim()
    assert claimed.beat()
    assert type(item).sweep()["requeued"] == 0
    assert row(item).status == "running"


def test_one_sweep_recovers_every_kind(db, settings, enqueued):
    items = [make_item(kind) for kind in KINDS]
    for each in items:
        worker(each).claim()
        age(each, settings.WORK_STALE_SECONDS + 5)
    counts = sweep_stale_work()
    assert {kind: counts[kind]["requeued"] for kind in KINDS} == {kind: 1 for kind in KINDS}
    assert sorted(enqueued) == sorted((each.WORK_KIND, each.pk) for each in items)
    assert {row(each).status for each in items} == {"queued"}


def test_the_beat_task_runs_the_one_sweep(db, settings, enqueued):
    from loopsite.tasks import sweep_stale_work as task

    each = make_item("gate")
    worker(each).claim()
    age(each, settings.WORK_STALE_SECONDS + 5)
    result = task.apply(throw=True).get()
    assert result["gate"]["requeued"] == 1 and enqueued == [("gate", each.pk)]


def test_the_sweep_runs_often_enough_to_recover_within_twice_the_stale_time(settings):
    interval = settings.CELERY_BEAT_SCHEDULE["sweep-stale-work"]["schedule"]
    assert interval == settings.SWEEP_INTERVAL_SECONDS
    assert settings.WORK_STALE_SECONDS + interval <= 2 * settings.WORK_STALE_SECONDS
    assert interval <= settings.QUEUED_STALE_SECONDS


def test_requeue_is_audited_and_refused_while_active(item, django_user_model):
    user = django_user_model.objects.create_user(username="eng", password="pw")
    claimed = worker(item)
    claimed.claim()
    assert claimed.requeue(by=user) is False  # still running
    claimed.fail("It broke.")
    assert claimed.requeue(by=user) is True
    again = row(item)
    assert (again.status, again.finished_at, again.started_at) == ("queued", None, None)
    event = AuditEvent.objects.filter(object_id=str(item.pk)).latest("pk")
    assert event.actor == user and event.before["status"] == "failed" and event.after == {"status": "queued"}
    assert event.before["last_error"] == "It broke."


# --- temporary directories ------------------------------------------------------------------------------


def test_an_attempts_directory_is_removed_when_it_ends(item, scratch_root):
    claimed = worker(item)
    claimed.claim()
    with claimed.scratch_dir() as path:
        assert path.is_dir() and path.is_relative_to(scratch_root.resolve())
        assert path.name == "attempt-1" and path.parent.name == f"{item.WORK_KIND}-{item.pk}"
        (path / "x.txt").write_text("x")
    assert not path.exists() and not path.parent.exists()


def test_a_dead_workers_directory_is_removed_by_the_next_claim(item, settings, enqueued):
    first = worker(item)
    first.claim()
    leftover = first.scratch_root() / "attempt-1"
    leftover.mkdir(parents=True)
    (leftover / "outputs.md").write_text("half-written")  # the worker was killed inside scratch_dir()
    age(item, settings.WORK_STALE_SECONDS + 5)
    type(item).sweep()
    second = worker(item)
    assert second.claim() == 2
    assert not leftover.exists()


def test_the_sweep_removes_a_dead_workers_directory_and_keeps_a_live_one(db, settings, enqueued, scratch_root):
    settings.RUN_MAX_ATTEMPTS = 1
    dead, alive = make_item("halo"), make_item("gate")
    for each in (dead, alive):
        claimed = worker(each)
        claimed.claim()
        path = claimed.scratch_root() / "attempt-1"
        path.mkdir(parents=True)
        old = time.time() - settings.WORK_STALE_SECONDS - 5
        os.utime(path, (old, old))
    age(dead, settings.WORK_STALE_SECONDS + 5)
    counts = sweep_stale_work()
    assert counts["halo"]["failed"] == 1 and counts["halo"]["scratch_removed"] == 1
    assert not worker(dead).scratch_root().exists()
    assert (worker(alive).scratch_root() / "attempt-1").is_dir()  # its worker is still beating


def test_a_fresh_directory_of_a_just_claimed_row_survives_the_sweep(db, settings):
    each = make_item("run")
    path = worker(each).scratch_root() / "attempt-1"  # made by a worker that has not committed its claim yet
    path.mkdir(parents=True)
    sweep_stale_work()
    assert path.is_dir()


# --- child processes ------------------------------------------------------------------------------------


def _spawn_calls() -> list[tuple[str, int, ast.Call]]:
    calls = []
    for package in ("loopsite", "runs", "reviews"):
        for path in (ROOT / package).rglob("*.py"):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "Popen"
                        and isinstance(node.func.value, ast.Name) and node.func.value.id == "subprocess"):
                    calls.append((str(path.relative_to(ROOT)), node.lineno, node))
    return calls


def test_every_long_lived_child_dies_with_its_worker():
    """Every Popen in the app (agent, validators, promptfoo, HALO) asks for PR_SET_PDEATHSIG."""
    calls = _spawn_calls()
    assert {path for path, _, _ in calls} >= {"runs/runner.py", "reviews/promptfoo.py", "reviews/halo.py"}
    missing = [f"{path}:{line}" for path, line, call in calls
               if not any(kw.arg == "preexec_fn" and isinstance(kw.value, ast.Name) and kw.value.id == "PREEXEC"
                          for kw in call.keywords)]
    assert missing == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux only")
def test_a_child_started_with_preexec_dies_when_its_worker_is_killed(tmp_path):
    """A stand-in worker starts a child as the app does, then is SIGKILLed: the child goes too."""
    pid_file = tmp_path / "child.pid"
    code = (
        "import subprocess, sys, time\n"
        "from loopsite.childproc import PREEXEC\n"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'],"
        " start_new_session=True, preexec_fn=PREEXEC)\n"
        f"open({str(pid_file)!r}, 'w').write(str(p.pid))\n"
        "time.sleep(120)\n"
    )
    fake_worker = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT)
    try:
        deadline = time.monotonic() + 20
        while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
            time.sleep(0.1)
        child = int(pid_file.read_text())
        assert _alive(child)
        fake_worker.send_signal(signal.SIGKILL)
        fake_worker.wait(timeout=10)
        deadline = time.monotonic() + 10
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(child), "the child outlived its worker"
    finally:
        if fake_worker.poll() is None:
            fake_worker.kill()
            fake_worker.wait(timeout=10)


def _alive(pid: int) -> bool:
    """Running and not a zombie (an orphan's zombie is reaped by init, but may linger a moment)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


# --- the beat runs the sweep itself ---------------------------------------------------------------------


def test_beat_runs_the_sweep_in_its_own_process_not_through_the_queue(db, settings, enqueued, monkeypatch):
    """Sent as a message, the sweep would wait behind the very work it must recover."""
    from types import SimpleNamespace

    from loopsite.celery import SweepingScheduler, app
    from loopsite.tasks import sweep_stale_work as task

    assert settings.CELERY_BEAT_SCHEDULER == "loopsite.celery:SweepingScheduler"
    monkeypatch.setattr(task, "apply_async", lambda *a, **k: pytest.fail("the sweep was sent to the queue"))
    monkeypatch.setattr("django.db.close_old_connections", lambda: None)  # would end the test's transaction
    each = make_item("run")
    worker(each).claim()
    age(each, settings.WORK_STALE_SECONDS + 5)
    scheduler = SimpleNamespace(app=app, _pid=os.getpid())  # not forked: keep the test's connection
    entry = SimpleNamespace(task="loopsite.tasks.sweep_stale_work", args=(), kwargs={})
    assert SweepingScheduler.apply_async(scheduler, entry, advance=False) is None
    assert row(each).status == "queued" and enqueued == [("run", each.pk)]
