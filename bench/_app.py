"""The app as `make run` starts it, for the benchmarks that measure it from outside (memory, reviewers, ingest).

    tmp = Path(tempfile.mkdtemp(prefix="loopsite-bench-x-"))
    app = configure(tmp, database_url=..., extra_env={...})    # env, django.setup(); then make data in-process
    with started(app) as procs:                                 # web, worker (+beat), runs, stand-in
        ...                                                     # talk to http://127.0.0.1:{app.web_port}
    # every process stopped, the queues deleted, `tmp` removed

The processes are those of loopsite.management.commands.run_all.process_commands, on free ports, their own
Celery queues and (unless a database URL is given) a throwaway SQLite file under `tmp`.
"""

from __future__ import annotations

import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def connects(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_until(what: str, check, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"Gave up waiting for {what}.")
        time.sleep(0.2)


@dataclass
class App:
    tmp: Path
    queue: str
    web_port: int
    standin_port: int
    logs: dict[str, Path] = field(default_factory=dict)
    commands: dict[str, str] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"


def configure(tmp: Path, *, database_url: str = "", extra_env: dict[str, str] | None = None) -> App:
    """Point this process (and the ones `started` spawns) at the bench's database, queues and ports, with the
    stand-in model, then set Django up so the bench can make its data in-process."""
    app = App(tmp=tmp, queue=f"loopsite-bench-{uuid.uuid4().hex[:10]}", web_port=free_port(), standin_port=free_port())
    os.environ.pop("OPENAI_API_KEY", None)
    os.environ.update({
        "DJANGO_SETTINGS_MODULE": "loopsite.settings",
        "DATABASE_URL": database_url or f"sqlite:///{tmp / 'bench.sqlite3'}",
        "MEDIA_ROOT": str(tmp / "media"),
        "CELERY_QUEUE": app.queue,
        "LOOPSITE_STANDIN_URL": f"http://127.0.0.1:{app.standin_port}/v1",
        "SECRET_KEY": os.environ.get("SECRET_KEY") or secrets.token_urlsafe(50),
        "LOG_LEVEL": "WARNING",
        "PYTHONUNBUFFERED": "1",
        **(extra_env or {}),
    })
    import django

    django.setup()
    return app


@contextmanager
def started(app: App, *, ready_timeout: float = 90):
    """Start every process `make run` starts, wait until each answers, yield {name: Popen}; stop them all after."""
    from django.conf import settings

    from loopsite.management.commands.run_all import process_commands

    app.commands = process_commands(python=sys.executable, host="127.0.0.1", port=app.web_port,
                                    concurrency=settings.WORKER_CONCURRENCY, run_concurrency=settings.RUN_CONCURRENCY,
                                    web_workers=settings.WEB_WORKERS, web_threads=settings.WEB_THREADS,
                                    schedule=str(app.tmp / "celerybeat-schedule"))
    procs: dict[str, subprocess.Popen] = {}
    try:
        for name, command in app.commands.items():
            app.logs[name] = app.tmp / f"{name}.log"
            with app.logs[name].open("wb") as log_file:
                procs[name] = subprocess.Popen(shlex.split(command), cwd=ROOT, env=os.environ.copy(), stdout=log_file,
                                               stderr=subprocess.STDOUT, start_new_session=True)
        for name in ("worker", "runs"):
            wait_until(f"the {name} worker", lambda n=name: "ready." in app.logs[n].read_text(errors="replace"),
                       ready_timeout)
        wait_until("gunicorn", lambda: connects(app.web_port), 60)
        if "standin" in procs:
            wait_until("the stand-in", lambda: connects(app.standin_port), 30)
        yield procs
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        try:
            import redis

            redis.Redis.from_url(settings.CELERY_BROKER_URL).delete(app.queue, f"{app.queue}-runs")
        except Exception:  # noqa: BLE001 (a bench's clean-up never hides its figures)
            pass
        shutil.rmtree(app.tmp, ignore_errors=True)


def print_started(app: App) -> None:
    print("Started as `make run` does:")
    for name, command in app.commands.items():
        print(f"  {name:<8} {command.replace(sys.executable, 'python')}")
