"""Fixtures for tests that run agents: sample data, run rows and a REAL Celery worker.

`celery_worker_factory` starts what `make run` starts, as subprocesses against the
Redis broker at settings.CELERY_BROKER_URL: `celery -A loopsite worker --pool prefork`
on the default queue and `--pool threads` on the run queue, both queues unique to
this test session (so parallel test runs never take each other's messages), pointed
at the same test database. On SQLite the test database is the
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
SESSION_RUN_QUEUE = f"{SESSION_QUEUE}-runs"


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
    """Route this test's enqueues to the session queues (runs to the session's run queue)."""
    from loopsite.celery import app

    if not _redis_available(settings.CELERY_BROKER_URL):
        pytest.skip(f"Redis is not reachable at {settings.CELERY_BROKER_URL}")
    settings.CELERY_TASK_DEFAULT_QUEUE = celery_queue
    settings.CELERY_RUN_QUEUE = SESSION_RUN_QUEUE
    previous = app.conf.task_default_queue
    app.conf.task_default_queue = celery_queue
    yield settings
    app.conf.task_default_queue = previous


class WorkerProcess:
    """One worker machine as `make run` starts it: a threads-pool worker on the run queue (first:
    `pid` is its pid) and a prefork worker on the default queue. kill() and stop() act on both."""

    def __init__(self, procs: list[subprocess.Popen], log_paths: list[Path]):
        self.procs = procs
        self.log_paths = log_paths

    @property
    def proc(self) -> subprocess.Popen:
        return self.procs[0]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return "\n".join(path.read_text(errors="replace") for path in self.log_paths if path.exists())

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        pending = list(zip(self.procs, self.log_paths))
        while time.monotonic() < deadline:
            pending = [(proc, path) for proc, path in pending
                       if "ready." not in (path.read_text(errors="replace") if path.exists() else "")]
            if not pending:
                return
            for proc, _ in pending:
                if proc.poll() is not None:
                    raise RuntimeError(f"celery worker exited with {proc.returncode}:\n{self.log()[-3000:]}")
            time.sleep(0.2)
        raise RuntimeError(f"celery worker not ready after {timeout} s:\n{self.log()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL the workers and their pool processes at once, as a machine failure would."""
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def celery_worker_factory(worker_settings, tmp_path):
    """`start(concurrency=2, env=None)` starts real workers on this session's queues: runs in a threads
    pool of `concurrency` threads, the rest in a prefork pool of `concurrency` processes."""
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
            "CELERY_RUN_QUEUE": settings.CELERY_RUN_QUEUE,
            "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
            "LOOPSITE_STANDIN_URL": settings.STANDIN_URL,
            "RUN_TIMEOUT_SECONDS": str(settings.RUN_TIMEOUT_SECONDS),
            "RUN_MAX_ATTEMPTS": str(settings.RUN_MAX_ATTEMPTS),
            "PYTHONUNBUFFERED": "1",
        })
        if settings.STANDIN_IN_USE:
            worker_env.pop("OPENAI_API_KEY", None)
        worker_env.update(env or {})
        procs, log_paths = [], []
        for pool, queue in (("threads", settings.CELERY_RUN_QUEUE), ("prefork", settings.CELERY_TASK_DEFAULT_QUEUE)):
            log_path = tmp_path / f"worker-{len(workers)}-{pool}.log"
            with log_path.open("wb") as log_file:
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", "celery", "-A", "loopsite", "worker", "--pool", pool,
                     "--concurrency", str(concurrency), "--queues", queue,
                     "--loglevel", "INFO", "--without-gossip", "--without-mingle", "--without-heartbeat",
                     "--hostname", f"test-{pool}-{uuid.uuid4().hex[:8]}@%h"],
                    cwd=ROOT, env=worker_env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
                ))
            log_paths.append(log_path)
        worker = WorkerProcess(procs, log_paths)
        workers.append(worker)
        worker.wait_ready()
        return worker

    yield start
    for worker in workers:
        worker.stop()
    _purge_queue(worker_settings.CELERY_BROKER_URL, worker_settings.CELERY_TASK_DEFAULT_QUEUE)
    _purge_queue(worker_settings.CELERY_BROKER_URL, worker_settings.CELERY_RUN_QUEUE)


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
