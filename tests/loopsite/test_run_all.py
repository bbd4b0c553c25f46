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
