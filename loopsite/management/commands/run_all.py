"""Start every process Loopsite needs in one terminal: web, the two workers and, when no
OPENAI_API_KEY is set, the offline stand-in model. Ctrl-C stops them all, and so does the end of the
process that started it (make), whatever signal ended it.

- `worker`: the default queue, a prefork pool of WORKER_CONCURRENCY processes (generation, gate,
  HALO, calibration), with beat (-B: the sweep) embedded: beat runs here and nowhere else;
- `runs`: the run queue, a threads pool of RUN_CONCURRENCY threads in one process. A run waits on
  its agent child process and the model, not on a CPU, so the number of runs at once does not
  follow the number of cores;
- `web`: gunicorn with the app preloaded (its workers share the imported code), WEB_WORKERS
  processes of WEB_THREADS threads.
"""

import os
import sys
from urllib.parse import urlparse

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from loopsite.childproc import stop_with_parent


def process_commands(*, python: str, host: str, port: int, concurrency: int, run_concurrency: int,
                     web_workers: int, web_threads: int, schedule: str = "var/celerybeat-schedule") -> dict[str, str]:
    """name -> command line of each process `make run` starts (bench/memory.py starts the same)."""
    commands: dict[str, str] = {}
    if settings.STANDIN_IN_USE:
        standin = urlparse(settings.STANDIN_URL)
        commands["standin"] = f"{python} -m loopsite.standin --host {standin.hostname} --port {standin.port}"
    commands["web"] = (f"{python} -m gunicorn loopsite.wsgi --preload --bind {host}:{port}"
                       f" --workers {web_workers} --threads {web_threads} --timeout 120")
    commands["worker"] = (f"{python} -m celery -A loopsite worker -B --loglevel INFO --concurrency {concurrency}"
                          f" --queues {settings.CELERY_TASK_DEFAULT_QUEUE} --schedule {schedule}"
                          f" --hostname default@%h")
    commands["runs"] = (f"{python} -m celery -A loopsite worker --pool threads --loglevel INFO"
                        f" --concurrency {run_concurrency} --queues {settings.CELERY_RUN_QUEUE}"
                        f" --hostname runs@%h")
    return commands


def port_clash(port: int) -> str:
    """Why the web server cannot take `port` (the stand-in model's own port), or ""."""
    if not settings.STANDIN_IN_USE:
        return ""
    standin_port = urlparse(settings.STANDIN_URL).port
    if standin_port != port:
        return ""
    return (f"Port {port} is the stand-in model's (LOOPSITE_STANDIN_URL={settings.STANDIN_URL}). Start the web "
            f"server on another port (make run PORT=...), or move the stand-in with LOOPSITE_STANDIN_URL.")


class Command(BaseCommand):
    help = "Run web, the default worker (with beat), the run worker and, without OPENAI_API_KEY, the stand-in model."

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--concurrency", type=int, default=settings.WORKER_CONCURRENCY,
                            help="processes of the default queue's worker (WORKER_CONCURRENCY)")
        parser.add_argument("--run-concurrency", type=int, default=settings.RUN_CONCURRENCY,
                            help="runs at once in the run worker (RUN_CONCURRENCY)")

    def handle(self, *args, host, port, concurrency, run_concurrency, **options):
        from honcho.manager import Manager

        if problem := port_clash(port):
            raise CommandError(problem)
        stop_with_parent()  # honcho's SIGTERM handler then stops every process it started

        env = os.environ.copy()
        env["PYTHONUNBUFFERED"] = "1"
        manager = Manager()
        commands = process_commands(python=sys.executable, host=host, port=port, concurrency=concurrency,
                                    run_concurrency=run_concurrency, web_workers=settings.WEB_WORKERS,
                                    web_threads=settings.WEB_THREADS)
        for name, command in commands.items():
            manager.add_process(name, command, env=env)
        password = os.environ.get("DEMO_PASSWORD", "loopsite-demo")
        self.stdout.write(self.style.SUCCESS(f"\nLoopsite is starting at http://{host}:{port}/"))
        self.stdout.write(
            f"Log in as admin / {password} (all roles), or engineer, reviewer, reviewer2, approver"
            f" with the same password.\n"
        )
        if settings.STANDIN_IN_USE:
            self.stdout.write("No OPENAI_API_KEY: model calls go to the offline stand-in model at "
                              f"{settings.STANDIN_URL}\n")
        manager.loop()
        sys.exit(manager.returncode)
