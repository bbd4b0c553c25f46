"""The Celery app. Redis carries messages; our rows carry task state."""

import gc
import os

from celery import Celery, signals

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "loopsite.settings")

app = Celery("loopsite")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

# Tasks that mostly wait on a child process and the model go to the run queue (settings.CELERY_RUN_QUEUE),
# which a threads-pool worker consumes: agent runs, "Draft from handoff", and the back-tests and judge calibrations (each a
# promptfoo child waiting on the judge; an approver waits for them before deciding), and webhook deliveries
# (each waits on someone else's server). The rest (generation, the gate, HALO) take the default queue and its
# prefork pool.
RUN_QUEUE_TASKS = {"runs.execute_run", "runs.draft_harness", "reviews.backtest", "reviews.calibrate_judge",
                   "runs.deliver_webhook"}


def route_task(name, args, kwargs, options, task=None, **kw):  # noqa: ANN001, ANN201 - Celery's router signature
    """CELERY_TASK_ROUTES: read at every send, so a changed setting (tests' session queues) applies at once."""
    if name in RUN_QUEUE_TASKS:
        from django.conf import settings

        return {"queue": settings.CELERY_RUN_QUEUE}
    return None


from celery.beat import PersistentScheduler  # noqa: E402

# Beat entries run in the beat process itself instead of being sent to the work queue.
INLINE_TASKS = {"loopsite.tasks.sweep_stale_work"}


class SweepingScheduler(PersistentScheduler):
    """Celery beat that runs the sweep itself (CELERY_BEAT_SCHEDULER).

    Sent as a message, the sweep would wait in the queue behind the very work it has to recover
    (after a crash every pool slot may be busy for minutes), so a lost worker would be noticed late.
    Run here it recovers within WORK_STALE_SECONDS + SWEEP_INTERVAL_SECONDS whatever the queue holds.
    """

    _pid: int | None = None

    def apply_async(self, entry, producer=None, advance=True, **kwargs):
        if entry.task not in INLINE_TASKS:
            return super().apply_async(entry, producer=producer, advance=advance, **kwargs)
        import logging

        from django.db import close_old_connections, connections

        if self._pid != os.getpid():  # beat embedded in a worker (-B) is a forked process
            for conn in connections.all(initialized_only=True):
                conn.connection = None  # inherited from the parent: neither used nor closed (that would break the parent's)
            self._pid = os.getpid()
        entry = self.reserve(entry) if advance else entry
        close_old_connections()
        try:
            self.app.tasks[entry.task].run(*(entry.args or ()), **(entry.kwargs or {}))
        except Exception:  # noqa: BLE001 - a failed sweep is retried at the next tick
            logging.getLogger(__name__).exception("beat: %s failed", entry.task)
        finally:
            close_old_connections()
        return None


@signals.worker_init.connect
def _freeze_before_forking(**kwargs):
    """In the worker's main process, before the pool and beat are forked: what is loaded so far is moved out
    of the collector's reach, so its passes in the children do not copy the shared pages (the idle PSS)."""
    gc.collect()
    gc.freeze()
