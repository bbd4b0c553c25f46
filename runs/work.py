"""Starting runs and keeping their rows honest when workers vanish."""

import logging
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from .models import Batch, Run

log = logging.getLogger(__name__)


def start_batch(*, harness, dataroom, questions, user) -> Batch:
    """Create one queued run per question and enqueue them once the rows are committed."""
    from reviews.models import Cycle

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
        Cycle.objects.create_for_batch(batch)
    return batch


# A queued row whose message was sent this long ago without a worker claiming it is
# taken to have lost its message (e.g. Redis restarted) and is enqueued again.
QUEUED_STALE_SECONDS = 300


def sweep_runs() -> dict[str, int]:
    """Recover runs whose worker or message vanished. Safe to run concurrently.

    - running rows whose heartbeat is older than WORK_STALE_SECONDS lost their worker:
      back to queued and enqueued again while attempts < RUN_MAX_ATTEMPTS, else failed;
    - queued rows not claimed for QUEUED_STALE_SECONDS lost their message: enqueued again.

    For queued rows `heartbeat_at` records when the row was last (re-)enqueued by the
    sweep. Every change is a conditional UPDATE that re-checks the row's state, so of
    two concurrent sweeps only one acts on a row and nothing is enqueued twice.
    """
    from .tasks import execute_run

    now = timezone.now()
    stale_before = now - timedelta(seconds=settings.WORK_STALE_SECONDS)
    counts = {"requeued": 0, "failed": 0, "reenqueued": 0}

    lost_worker = Q(status=Run.Status.RUNNING) & (
        Q(heartbeat_at__lt=stale_before) | Q(heartbeat_at__isnull=True, started_at__lt=stale_before)
    )
    for pk, attempts in Run.objects.filter(lost_worker).values_list("pk", "attempts"):
        row = Run.objects.filter(lost_worker, pk=pk, attempts=attempts)
        if attempts < settings.RUN_MAX_ATTEMPTS:
            if row.update(status=Run.Status.QUEUED, heartbeat_at=now,
                          last_error=f"Worker lost during attempt {attempts}; queued again."):
                counts["requeued"] += 1
                log.warning("run %s: worker lost during attempt %s, queued again", pk, attempts)
                execute_run.delay_on_commit(pk)
        elif row.update(status=Run.Status.FAILED, finished_at=now,
                        last_error=f"worker lost: no heartbeat for {settings.WORK_STALE_SECONDS} s "
                                   f"after {attempts} attempt(s)"):
            counts["failed"] += 1
            log.warning("run %s: worker lost on its last attempt (%s), failed", pk, attempts)

    queued_before = now - timedelta(seconds=QUEUED_STALE_SECONDS)
    lost_message = Q(status=Run.Status.QUEUED) & (
        Q(heartbeat_at__lt=queued_before) | Q(heartbeat_at__isnull=True, created_at__lt=queued_before)
    )
    for pk in Run.objects.filter(lost_message).values_list("pk", flat=True):
        if Run.objects.filter(lost_message, pk=pk).update(heartbeat_at=now):
            counts["reenqueued"] += 1
            log.warning("run %s: still queued after %s s, enqueued again", pk, QUEUED_STALE_SECONDS)
            execute_run.delay_on_commit(pk)
    return counts
