"""Periodic housekeeping run by the worker's beat."""

import logging

from celery import shared_task

log = logging.getLogger(__name__)


@shared_task(name="loopsite.tasks.sweep_stale_work")
def sweep_stale_work() -> dict[str, dict[str, int]]:
    """Re-enqueue or fail work whose worker or message vanished, so nothing stays stuck
    (every work kind: loopsite.work.sweep_stale_work). Runs every SWEEP_INTERVAL_SECONDS."""
    from loopsite.work import sweep_stale_work as sweep

    return sweep()
