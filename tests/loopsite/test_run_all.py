"""manage.py run_all (what `make run` starts) and the queue a task is sent to."""

from loopsite.celery import app
from loopsite.management.commands.run_all import process_commands


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
