import logging

from celery import shared_task

from .models import Run

log = logging.getLogger(__name__)


@shared_task(name="runs.execute_run", acks_late=True)
def execute_run(run_id: int) -> None:
    """Run the agent for one queued run. Safe to deliver twice: only a claim proceeds."""
    from .runner import execute_run as run_agent

    run = Run.objects.filter(pk=run_id).first()
    if run is None or not run.claim():
        return
    run_agent(run=run)
