"""Periodic housekeeping run by the worker's beat."""

import logging

from celery import shared_task

log = logging.getLogger(__name__)


@shared_task(name="loopsite.tasks.sweep_stale_work")
def sweep_stale_work() -> None:
    """Re-enqueue or fail work whose worker vanished, so nothing stays stuck."""
    from reviews.gate import sweep_gate_runs
    from reviews.generation import sweep_generation_jobs
    from reviews.optimization import sweep_optimizations
    from runs.work import sweep_runs

    sweep_runs()
    sweep_generation_jobs()
    sweep_gate_runs()
    sweep_optimizations()
