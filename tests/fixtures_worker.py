"""Fixtures for tests that run agents: sample data, run rows and a REAL Celery worker.

`celery_worker_factory` starts `celery -A loopsite worker --pool prefork` as a
subprocess against the Redis broker at settings.CELERY_BROKER_URL, on a queue
unique to this test session (so parallel test runs never take each other's
messages), pointed at the same test database. On SQLite the test database is the
file var/test.sqlite3, which a worker process can open; tests that use the worker
need `@pytest.mark.django_db(transaction=True)` so the rows are committed where
the worker can see them.
"""

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SESSION_QUEUE = f"loopsite-test-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def sample(db):
    """The sample dataroom, question bank and harness v001, as `load_sample` loads them."""
    from django.core.management import call_command

    from runs.models import Dataroom, Harness

    call_command("load_sample", stdout=open(os.devnull, "w"))
    return {"harness": Harness.objects.get(version="v001"), "dataroom": Dataroom.objects.get(name="FictionalCorp XYZ")}


@pytest.fixture
def make_run(sample):
    """`make_run(question_text=None, bank_index=0)` creates one queued Run of v001 on the sample dataroom."""
    from runs.models import Question, Run

    def make(question_text: str | None = None, *, bank_index: int = 0, claim: bool = False):
        if question_text is None:
            question = Question.objects.get(bank_index=bank_index)
        else:
            question, _ = Question.objects.get_or_create(text=question_text)
        run = Run.objects.create(harness=sample["harness"], dataroom=sample["dataroom"], question=question,
                                 label="trace-01", trace_id=Run.new_trace_id())
        if claim:
            assert run.claim()
        return run

    return make


def _redis_available(url: str) -> bool:
    try:
        import redis

        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
        return True
    except Exception:  # noqa: BLE001
        return False


@pytest.fixture(scope="session")
def celery_queue():
    """This session's queue name (also set on settings so the test process enqueues there)."""
    return SESSION_QUEUE


@pytest.fixture
def worker_settings(settings, celery_queue):
    """Route this test's enqueues to the session queue."""
    from loopsite.celery import app

    if not _redis_available(settings.CELERY_BROKER_URL):
        pytest.skip(f"Redis is not reachable at {settings.CELERY_BROKER_URL}")
    settings.CELERY_TASK_DEFAULT_QUEUE = celery_queue
    previous = app.conf.task_default_queue
    app.conf.task_default_queue = celery_queue
    yield settings
    app.conf.task_default_queue = previous


class WorkerProcess:
    def __init__(self, proc: subprocess.Popen, log_path: Path):
        self.proc = proc
        self.log_path = log_path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "ready." in self.log():
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"celery worker exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            time.sleep(0.2)
        raise RuntimeError(f"celery worker not ready after {timeout} s:\n{self.log()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL the worker and its pool processes at once, as a machine failure would."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def celery_worker_factory(worker_settings, tmp_path):
    """`start(concurrency=2, env=None)` starts a real prefork worker on this session's queue."""
    from django.db import connection

    workers: list[WorkerProcess] = []

    def start(*, concurrency: int = 2, env: dict[str, str] | None = None) -> WorkerProcess:
        settings = worker_settings
        worker_env = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}
        db_name = str(connection.settings_dict["NAME"])
        if connection.vendor == "sqlite":
            worker_env["DATABASE_URL"] = f"sqlite:///{db_name}"
        else:
            worker_env["DATABASE_URL"] = _database_url(connection.settings_dict)
        worker_env.update({
            "DJANGO_SETTINGS_MODULE": "loopsite.settings",
            "CELERY_QUEUE": settings.CELERY_TASK_DEFAULT_QUEUE,
            "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
            "LOOPSITE_STANDIN_URL": settings.STANDIN_URL,
            "RUN_TIMEOUT_SECONDS": str(settings.RUN_TIMEOUT_SECONDS),
            "RUN_MAX_ATTEMPTS": str(settings.RUN_MAX_ATTEMPTS),
            "PYTHONUNBUFFERED": "1",
        })
        if settings.STANDIN_IN_USE:
            worker_env.pop("OPENAI_API_KEY", None)
        worker_env.update(env or {})
        log_path = tmp_path / f"worker-{len(workers)}.log"
        log_file = log_path.open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "loopsite", "worker", "--pool", "prefork",
             "--concurrency", str(concurrency), "--queues", settings.CELERY_TASK_DEFAULT_QUEUE,
             "--loglevel", "INFO", "--without-gossip", "--without-mingle", "--without-heartbeat",
             "--hostname", f"test-{uuid.uuid4().hex[:8]}@%h"],
            cwd=ROOT, env=worker_env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
        )
        log_file.close()
        worker = WorkerProcess(proc, log_path)
        workers.append(worker)
        worker.wait_ready()
        return worker

    yield start
    for worker in workers:
        worker.stop()
    _purge_queue(worker_settings.CELERY_BROKER_URL, worker_settings.CELERY_TASK_DEFAULT_QUEUE)


def _database_url(config: dict) -> str:
    user = config.get("USER") or ""
    password = f":{config['PASSWORD']}" if config.get("PASSWORD") else ""
    auth = f"{user}{password}@" if user else ""
    port = f":{config['PORT']}" if config.get("PORT") else ""
    return f"postgres://{auth}{config.get('HOST') or '127.0.0.1'}{port}/{config['NAME']}"


def _purge_queue(broker_url: str, queue: str) -> None:
    try:
        import redis

        redis.Redis.from_url(broker_url, socket_connect_timeout=1).delete(queue)
    except Exception:  # noqa: BLE001
        pass


def wait_for(predicate, *, timeout: float, interval: float = 0.5, message: str = "condition"):
    """Poll `predicate()` until it returns something truthy; fail the test after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout} s waiting for {message}")
