"""manage.py run_all (what `make run` starts) and the queue a task is sent to."""

import pytest
from django.core.management import CommandError, call_command

from loopsite.celery import app
from loopsite.management.commands.run_all import port_clash, process_commands


def _commands(**overrides):
    options = dict(python="py", host="127.0.0.1", port=8000, concurrency=2, run_concurrency=16, web_workers=1,
                   web_threads=8)
    return process_commands(**{**options, **overrides})


def test_it_starts_a_threads_worker_on_the_run_queue_and_beat_only_once(settings):
    settings.CELERY_TASK_DEFAULT_QUEUE = "q"
    settings.CELERY_RUN_QUEUE = "q-runs"
    commands = _commands(run_concurrency=12)
    assert "--pool threads" in commands["runs"] and "--concurrency 12" in commands["runs"]
    assert "--queues q-runs" in commands["runs"]
    assert "--queues q " in commands["worker"] and "--concurrency 2" in commands["worker"]
    assert [name for name, command in commands.items() if " -B " in command] == ["worker"]
    assert "--preload" in commands["web"] and "--workers 1 --threads 8" in commands["web"]


def test_runs_go_to_the_run_queue_and_other_tasks_to_the_default_queue(settings):
    settings.CELERY_RUN_QUEUE = "elsewhere-runs"
    route = app.amqp.router.route({}, "runs.execute_run", (1,), {})
    assert route["queue"].name == "elsewhere-runs"
    assert app.amqp.router.route({}, "reviews.backtest", (1,), {})["queue"].name == "elsewhere-runs"
    other = app.amqp.router.route({}, "reviews.run_gate", (1,), {})
    assert other["queue"].name == app.conf.task_default_queue



def test_the_web_port_may_not_be_the_stand_ins(settings, monkeypatch):
    import honcho.manager

    monkeypatch.setattr(honcho.manager, "Manager", lambda: pytest.fail("run_all went on to start the processes"))
    settings.STANDIN_IN_USE = True
    settings.STANDIN_URL = "http://127.0.0.1:8765/v1"
    with pytest.raises(CommandError, match=r"Port 8765 is the stand-in model's \(LOOPSITE_STANDIN_URL=http://127.0.0.1:8765/v1\)"):
        call_command("run_all", "--port", "8765")
    assert port_clash(8000) == ""
    settings.STANDIN_IN_USE = False  # a real model endpoint: no stand-in is started, so the port is the web's
    assert port_clash(8765) == ""


def test_run_all_asks_to_stop_with_make(settings, monkeypatch):
    """run_all asks for SIGTERM when its parent (make) ends, before it starts anything."""
    import honcho.manager

    from loopsite.management.commands import run_all

    calls = []

    class FakeManager:
        returncode = 0

        def add_process(self, name, command, env):
            calls.append(name)

        def loop(self):
            calls.append("loop")

    monkeypatch.setattr(honcho.manager, "Manager", FakeManager)
    monkeypatch.setattr(run_all, "stop_with_parent", lambda: calls.append("stop_with_parent"))
    settings.STANDIN_IN_USE = False
    with pytest.raises(SystemExit) as exit_info:
        call_command("run_all", "--port", "8000")
    assert exit_info.value.code == 0
    assert calls[0] == "stop_with_parent" and calls[-1] == "loop" and {"web", "worker", "runs"} <= set(calls)


CHILD = """
import signal, sys, time
from pathlib import Path
from loopsite.childproc import stop_with_parent
signal.signal(signal.SIGTERM, lambda *args: (Path(sys.argv[1]).write_text("SIGTERM"), sys.exit(0)))
stop_with_parent()
print("ready", flush=True)
time.sleep(60)
"""

PARENT = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2]], stdout=sys.stdout)
print(child.pid, flush=True)
time.sleep(60)
"""


def test_a_process_that_asked_is_told_when_its_parent_is_killed(tmp_path):
    """The real mechanism (PR_SET_PDEATHSIG): SIGKILL the parent, as a signal to make alone would end it."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    marker = tmp_path / "told"
    parent = subprocess.Popen([sys.executable, "-c", PARENT, CHILD, str(marker)], stdout=subprocess.PIPE, text=True,
                              cwd=root, env={**os.environ, "PYTHONPATH": str(root)})
    child_pid = int(parent.stdout.readline())
    try:
        assert parent.stdout.readline().strip() == "ready"
        assert not marker.exists()
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)
        deadline = time.monotonic() + 10
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists() and marker.read_text() == "SIGTERM", "the child was not told that its parent died"
        deadline = time.monotonic() + 5
        while _alive(child_pid) and time.monotonic() < deadline:  # it exits on its own once told
            time.sleep(0.05)
        assert not _alive(child_pid), "the child kept running after its parent was killed"
    finally:
        for pid in (child_pid, parent.pid):
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        parent.wait(timeout=10)


def _alive(pid: int) -> bool:
    import os

    try:
        os.waitpid(pid, os.WNOHANG)  # reaps it if it is our own child that has ended
    except ChildProcessError:
        pass
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended; only its parent has not reaped it yet
