"""The Celery app. Redis carries messages; our rows carry task state."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "loopsite.settings")

app = Celery("loopsite")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
