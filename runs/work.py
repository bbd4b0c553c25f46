"""Starting runs and keeping their rows honest when workers vanish."""

import logging

from django.db import transaction

from .models import Batch, Run

log = logging.getLogger(__name__)


def start_batch(*, harness, dataroom, questions, user) -> Batch:
    """Create one queued run per question and enqueue them once the rows are committed."""
    from .tasks import execute_run

    with transaction.atomic():
        batch = Batch.objects.create(harness=harness, dataroom=dataroom, created_by=user)
        for index, question in enumerate(questions, start=1):
            run = Run.objects.create(
                harness=harness,
                dataroom=dataroom,
                question=question,
                batch=batch,
                label=f"trace-{index:02d}",
                trace_id=Run.new_trace_id(),
                created_by=user,
            )
            execute_run.delay_on_commit(run.pk)
    return batch
