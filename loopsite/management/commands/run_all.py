"""Start every process Loopsite needs in one terminal: web, worker and, when no
OPENAI_API_KEY is set, the offline stand-in model. Ctrl-C stops them all."""

import os
import sys
from urllib.parse import urlparse

from django.conf import settings
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Run web, worker (with beat) and, without OPENAI_API_KEY, the stand-in model."

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--concurrency", type=int, default=int(os.environ.get("WORKER_CONCURRENCY", "4")))

    def handle(self, *args, host, port, concurrency, **options):
        from honcho.manager import Manager

        python = sys.executable
        env = os.environ.copy()
        env["PYTHONUNBUFFERED"] = "1"
        manager = Manager()
        if settings.STANDIN_IN_USE:
            standin = urlparse(settings.STANDIN_URL)
            manager.add_process(
                "standin",
                f"{python} -m loopsite.standin --host {standin.hostname} --port {standin.port}",
                env=env,
            )
        manager.add_process(
            "web",
            f"{python} -m gunicorn loopsite.wsgi --bind {host}:{port} --workers 2 --threads 4 --timeout 120",
            env=env,
        )
        manager.add_process(
            "worker",
            f"{python} -m celery -A loopsite worker -B --loglevel INFO --concurrency {concurrency}"
            f" --queues {settings.CELERY_TASK_DEFAULT_QUEUE} --schedule var/celerybeat-schedule",
            env=env,
        )
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
