"""Starting runs. (Rows whose worker or message vanished are recovered by loopsite.work.sweep_stale_work.)"""

import logging

from django.db import transaction

from loopsite.hooks import Hook

from .models import Batch, Run

log = logging.getLogger(__name__)

# How a batch gets its cycle: provided by reviews/ (which owns cycles) when it loads.
open_cycle = Hook(default=lambda batch: None)


def start_batch(*, harness, dataroom, questions, user, cycle: bool = True, first_index: int = 1) -> Batch:
    """Create one queued run per question and enqueue them once the rows are committed.

    `cycle=False`: no cycle of its own; the caller groups the runs (a candidate evaluation puts the runs of
    one batch per dataroom into one cycle). `first_index`: the first label number (trace-NN), so that the
    runs of several batches in one cycle keep distinct labels."""
    from .tasks import execute_run

    with transaction.atomic():
        batch = Batch.objects.create(harness=harness, dataroom=dataroom, created_by=user)
        for index, question in enumerate(questions, start=first_index):
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
        if cycle:
            open_cycle(batch)
    return batch
