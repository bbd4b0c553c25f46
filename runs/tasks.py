import logging

from celery import shared_task

from .models import Run

log = logging.getLogger(__name__)


@shared_task(name="runs.execute_run", acks_late=True)
def execute_run(run_id: int) -> None:
    """Run the agent for one queued run. Safe to deliver twice: only a claim proceeds.
    Routed to the run queue, whose worker runs RUN_CONCURRENCY of these in threads. (Each thread's database
    connection is closed before and after every task by Celery's Django fix-up, as in the prefork pool.)"""
    from .runner import execute_run as run_agent

    run = Run.objects.filter(pk=run_id).first()
    if run is None or not run.claim():
        return
    run_agent(run=run)


@shared_task(name="runs.draft_harness", acks_late=True)
def draft_harness(draft_id: int) -> None:
    """"Draft from handoff" for one queued HarnessDraft. Safe to deliver twice: only a claim proceeds.
    Routed to the run queue: it mostly waits on the model, like an agent run."""
    from .handoffs import run_draft
    from .models import HarnessDraft

    draft = HarnessDraft.objects.select_related("base", "requested_by").filter(pk=draft_id).first()
    if draft is None or not draft.claim():
        return
    run_draft(draft=draft)


@shared_task(name="runs.deliver_webhook", acks_late=True)
def deliver_webhook(delivery_id: int) -> None:
    """One try of a queued WebhookDelivery. Safe to deliver twice: only a claim proceeds."""
    from .models import WebhookDelivery
    from .webhooks import deliver

    delivery = WebhookDelivery.objects.select_related("agent").filter(pk=delivery_id).first()
    if delivery is None or not delivery.claim():
        return
    deliver(delivery=delivery)
