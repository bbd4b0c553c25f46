"""One state machine for every row that carries a task's state: a run, a generation step, a
gate run, a HALO run. Redis is transport only; the row says what happened.

    queued --claim()--> running --finish()/fail()--> succeeded | failed
       ^                   |                                |
       +--- the sweep -----+  (worker lost: heartbeat older  +-- requeue(by=...) (audited)
            (attempts < max, else failed with the reason)        than WORK_STALE_SECONDS)

Every change is a conditional UPDATE. `claim()` returns the attempt number it took; `beat()`,
`finish()` and `fail()` only touch the row while it is running *that* attempt, so a worker the
sweep gave up on can neither heartbeat nor finish a row a newer attempt owns.

Each concrete kind says how to re-enqueue itself (`enqueue_work`), how many attempts it gets
(`max_attempts`), what a claim resets (`claim_resets`, `on_claimed`) and what a requeue
records; `sweep_stale_work()` goes over every kind. Each attempt works in its own temporary
directory (`scratch_dir`) named by kind, pk and attempt, which the next claim or the sweep
removes if the worker that made it died.
"""

import hashlib
import logging
import shutil
import time
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Iterator

from django.conf import settings
from django.db import connection, models, transaction
from django.db.models import Q
from django.dispatch import Signal
from django.utils import timezone

log = logging.getLogger(__name__)

# Sent once a row's finish (succeeded or failed) has committed: sender is the kind's model, `item` the row.
# Whatever waits on that row starts from here at once (e.g. a candidate gate run waiting for its runs);
# a receiver's error is logged and never touches the finished row.
work_finished = Signal()


class TrackedWork:
    """Needs `status`, `started_at`, `finished_at` and a class-level `ACTIVE_STATUSES`."""

    ACTIVE_STATUSES: tuple = ()

    @property
    def is_active(self) -> bool:
        return self.status in self.ACTIVE_STATUSES

    @property
    def duration_seconds(self) -> float | None:
        if self.started_at and self.finished_at:
            return (self.finished_at - self.started_at).total_seconds()
        return None

    @property
    def elapsed_seconds(self) -> float | None:
        """Time since the work started, up to now while it is still going."""
        if self.started_at is None:
            return None
        return ((self.finished_at or timezone.now()) - self.started_at).total_seconds()


class WorkStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"


def beat_seconds() -> float:
    """How often a worker beats: well inside WORK_STALE_SECONDS, so a live worker never looks lost."""
    return max(0.5, min(5.0, settings.WORK_STALE_SECONDS / 4))


def work_temp_root() -> Path:
    """Where attempts keep their temporary directories: WORK_TEMP_ROOT, one folder per database
    (so test sessions and deployments sharing a machine never sweep each other's directories)."""
    db = connection.settings_dict
    key = f"{connection.vendor}:{db.get('HOST') or ''}:{db.get('PORT') or ''}:{db.get('NAME')}"
    return Path(settings.WORK_TEMP_ROOT) / hashlib.sha1(key.encode()).hexdigest()[:12]


class WorkItem(TrackedWork, models.Model):
    """The shared task-state fields and the one copy of claim / beat / finish / fail / requeue."""

    Status = WorkStatus
    ACTIVE_STATUSES = (WorkStatus.QUEUED, WorkStatus.RUNNING)
    FINISHED_STATUSES = (WorkStatus.SUCCEEDED, WorkStatus.FAILED)

    # Per kind: a short name (temp dirs, logs, sweep counts), what a lost worker's failure tells
    # the user to do, statuses a requeue starts from, and the audit action of a requeue.
    WORK_KIND = ""
    LOST_HINT = ""
    REQUEUE_FROM: tuple = (WorkStatus.FAILED,)
    REQUEUE_ACTION = ""
    # Text fields `finish()` caps (characters, the end is kept).
    TEXT_CAPS: dict[str, int] = {}

    status = models.CharField(max_length=16, choices=WorkStatus.choices, default=WorkStatus.QUEUED)
    attempts = models.PositiveSmallIntegerField(default=0)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(
        null=True, blank=True, help_text="Running: the worker's last beat. Queued: when it was last (re-)enqueued."
    )
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        abstract = True

    # --- hooks each kind may override -----------------------------------------------------------

    @classmethod
    def enqueue_work(cls, pk: int) -> None:
        """Send the task for row `pk` (after the current transaction commits)."""
        raise NotImplementedError(f"{cls.__name__} must say how it is enqueued")

    @classmethod
    def max_attempts(cls) -> int:
        return settings.RUN_MAX_ATTEMPTS

    def claim_resets(self) -> dict[str, Any]:
        """Fields a new attempt starts from (e.g. the last attempt's raw output)."""
        return {}

    def on_claimed(self, attempt: int) -> None:
        """After a claim: drop what an earlier attempt left (events, rows). Runs in the claim's transaction."""

    def requeue_before(self) -> dict[str, Any]:
        return {"status": self.status, "attempts": self.attempts, "last_error": self.last_error}

    def requeue_changes(self, *, by) -> dict[str, Any]:
        return {}

    def requeue_summary(self) -> str:
        return f"Retry of {self}"

    @classmethod
    def after_given_up(cls, pk: int) -> None:
        """After the sweep failed row `pk` (its last attempt's worker was lost)."""

    @classmethod
    def sweep_more(cls, now) -> dict[str, int]:
        """Kind-specific recovery beyond lost workers and lost messages (e.g. waiting gate runs)."""
        return {}

    # --- the state machine -----------------------------------------------------------------------

    @property
    def is_finished(self) -> bool:
        return self.status in self.FINISHED_STATUSES

    def _attempt(self, attempt: int | None) -> int:
        """The attempt a call is fenced by: the one given, else the one this object claimed."""
        if attempt is not None:
            return attempt
        claimed = getattr(self, "_claimed_attempt", None)
        return claimed if claimed is not None else self.attempts

    def _owned(self, attempt: int | None) -> models.QuerySet:
        return type(self).objects.filter(pk=self.pk, status=WorkStatus.RUNNING, attempts=self._attempt(attempt))

    def claim(self) -> int | None:
        """Queued -> running for this worker. Returns the attempt number taken, None if someone else
        has it or it is not queued. The previous attempt's temporary directory is removed."""
        model = type(self)
        current = model.objects.filter(pk=self.pk, status=WorkStatus.QUEUED).values_list("attempts", flat=True).first()
        if current is None:
            return None
        attempt = current + 1
        now = timezone.now()
        with transaction.atomic():
            claimed = model.objects.filter(pk=self.pk, status=WorkStatus.QUEUED, attempts=current).update(
                status=WorkStatus.RUNNING, attempts=attempt, started_at=now, heartbeat_at=now,
                finished_at=None, last_error="", **self.claim_resets(),
            )
            if not claimed:
                return None
            self.on_claimed(attempt)
        self.refresh_from_db()
        self._claimed_attempt = attempt
        self.remove_scratch(keep_attempt=attempt)
        return attempt

    def beat(self, attempt: int | None = None) -> bool:
        """Still ours? Beats the heartbeat of the running `attempt`; False once a sweep or a newer attempt took it."""
        return bool(self._owned(attempt).update(heartbeat_at=timezone.now()))

    def finish(self, attempt: int | None = None, *, error: str = "", store: Callable[[], None] | None = None,
               **fields) -> bool:
        """Running `attempt` -> succeeded (with `fields`), or failed with `error`. `store` (e.g. writing
        the attempt's rows) runs in the same transaction, only if the row was still ours. False if
        it was not: nothing is changed then."""
        now = timezone.now()
        changes = {"finished_at": now, "heartbeat_at": now, **fields}
        for name, cap in self.TEXT_CAPS.items():
            if isinstance(changes.get(name), str):
                changes[name] = changes[name][-cap:]
        if error:
            changes.update(status=WorkStatus.FAILED, last_error=error[-8000:])
        else:
            changes.update(status=WorkStatus.SUCCEEDED, last_error="")
        with transaction.atomic():
            if not self._owned(attempt).update(**changes):
                log.warning("%s attempt %s: no longer running here; outcome discarded", self._label(),
                            self._attempt(attempt))
                return False
            if store is not None:
                store()
        log.info("%s attempt %s finished: %s", self._label(), self._attempt(attempt), changes["status"])
        self.refresh_from_db()
        transaction.on_commit(self._announce_finished)
        return True

    def _announce_finished(self) -> None:
        for receiver, result in work_finished.send_robust(sender=type(self), item=self):
            if isinstance(result, Exception):
                log.error("%s: work_finished receiver %r failed: %s", self._label(), receiver, result,
                          exc_info=(type(result), result, result.__traceback__))

    def fail(self, error: str, *, attempt: int | None = None, store: Callable[[], None] | None = None,
             **fields) -> bool:
        """Running `attempt` -> failed with a readable reason. False if it was no longer ours."""
        return self.finish(attempt, error=error or "Failed (no reason given).", store=store, **fields)

    def requeue(self, *, by) -> bool:
        """A finished row back to queued (Retry / Re-run), audited. False if its status does not allow it."""
        from loopsite.models import AuditEvent

        model = type(self)
        with transaction.atomic():
            locked = model.objects.select_for_update().get(pk=self.pk)
            if locked.status not in self.REQUEUE_FROM:
                return False
            before = locked.requeue_before()
            changes = {"status": WorkStatus.QUEUED, "heartbeat_at": timezone.now(), "started_at": None,
                       "finished_at": None, **locked.requeue_changes(by=by)}
            model.objects.filter(pk=locked.pk).update(**changes)
            locked.refresh_from_db()
            AuditEvent.record(actor=by, action=self.REQUEUE_ACTION or f"{self.WORK_KIND}.retry", obj=locked,
                              summary=locked.requeue_summary(), before=before, after={"status": locked.status})
        self.refresh_from_db()
        return True

    def _label(self) -> str:
        return f"{self.WORK_KIND or type(self).__name__.lower()} {self.pk}"

    # --- temporary directories --------------------------------------------------------------------

    @classmethod
    def scratch_parent(cls) -> Path:
        return work_temp_root()

    def scratch_root(self) -> Path:
        """This row's folder: one `attempt-N` directory inside per attempt."""
        return self.scratch_parent() / f"{self.WORK_KIND}-{self.pk}"

    @contextmanager
    def scratch_dir(self, attempt: int | None = None) -> Iterator[Path]:
        """A fresh temporary directory for this attempt, removed when the block ends. If the worker
        dies inside the block, the next claim of this row or the sweep removes it."""
        path = (self.scratch_root() / f"attempt-{self._attempt(attempt)}").resolve()
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)
            try:
                path.parent.rmdir()  # only if no other attempt's directory is left in it
            except OSError:
                pass

    def remove_scratch(self, *, keep_attempt: int | None = None) -> None:
        root = self.scratch_root()
        if not root.is_dir():
            return
        for child in root.iterdir():
            if keep_attempt is None or child.name != f"attempt-{keep_attempt}":
                shutil.rmtree(child, ignore_errors=True)
        try:
            root.rmdir()
        except OSError:
            pass

    @classmethod
    def sweep_scratch(cls, *, older_than: float) -> int:
        """Remove directories of attempts that no longer run (their worker died), untouched for `older_than` s."""
        parent = cls.scratch_parent()
        prefix = f"{cls.WORK_KIND}-"
        if not parent.is_dir():
            return 0
        removed = 0
        cutoff = time.time() - older_than
        for root in parent.glob(f"{prefix}*"):
            pk = root.name[len(prefix):]
            if not pk.isdigit():
                continue
            running = cls.objects.filter(pk=int(pk), status=WorkStatus.RUNNING).values_list("attempts", flat=True).first()
            for child in list(root.iterdir()) if root.is_dir() else []:
                if running is not None and child.name == f"attempt-{running}":
                    continue
                try:
                    if child.stat().st_mtime > cutoff:
                        continue
                except FileNotFoundError:
                    continue
                shutil.rmtree(child, ignore_errors=True)
                removed += 1
            try:
                root.rmdir()
            except OSError:
                pass
        return removed

    # --- the sweep ---------------------------------------------------------------------------------

    @classmethod
    def sweep(cls, now=None) -> dict[str, int]:
        """Recover rows of this kind whose worker or message vanished. Safe to run concurrently.

        - running, heartbeat older than WORK_STALE_SECONDS: the worker is lost. Back to queued and
          enqueued again while attempts < max_attempts(), else failed with the reason;
        - queued and not (re-)enqueued for QUEUED_STALE_SECONDS: the message is lost (e.g. Redis
          restarted). Enqueued again; `heartbeat_at` of a queued row records when it was last sent;
        - whatever `sweep_more` does for the kind.
        Each change is a conditional UPDATE that re-checks the row, so of two sweeps one acts.
        """
        now = now or timezone.now()
        counts = {"requeued": 0, "failed": 0, "reenqueued": 0}
        stale_before = now - timedelta(seconds=settings.WORK_STALE_SECONDS)
        lost_worker = Q(status=WorkStatus.RUNNING) & (
            Q(heartbeat_at__lt=stale_before) | Q(heartbeat_at__isnull=True, started_at__lt=stale_before)
        )
        limit = cls.max_attempts()
        for pk, attempts in cls.objects.filter(lost_worker).values_list("pk", "attempts"):
            row = cls.objects.filter(lost_worker, pk=pk, attempts=attempts)
            if attempts < limit:
                if row.update(status=WorkStatus.QUEUED, heartbeat_at=now,
                              last_error=f"Worker lost during attempt {attempts}; queued again."):
                    counts["requeued"] += 1
                    log.warning("%s %s: worker lost during attempt %s, queued again", cls.WORK_KIND, pk, attempts)
                    cls.enqueue_work(pk)
            elif row.update(status=WorkStatus.FAILED, finished_at=now,
                            last_error=(f"Worker lost: no heartbeat for {settings.WORK_STALE_SECONDS} s after "
                                        f"{attempts} attempt(s). {cls.LOST_HINT}").strip()):
                counts["failed"] += 1
                log.warning("%s %s: worker lost on its last attempt (%s), failed", cls.WORK_KIND, pk, attempts)
                cls.after_given_up(pk)

        queued_before = now - timedelta(seconds=settings.QUEUED_STALE_SECONDS)
        lost_message = Q(status=WorkStatus.QUEUED) & (
            Q(heartbeat_at__lt=queued_before) | Q(heartbeat_at__isnull=True, created_at__lt=queued_before)
        )
        for pk in cls.objects.filter(lost_message).values_list("pk", flat=True):
            if cls.objects.filter(lost_message, pk=pk).update(heartbeat_at=now):
                counts["reenqueued"] += 1
                log.warning("%s %s: still queued after %s s, enqueued again", cls.WORK_KIND, pk,
                            settings.QUEUED_STALE_SECONDS)
                cls.enqueue_work(pk)
        counts.update(cls.sweep_more(now))
        return counts


def work_kinds() -> list[type[WorkItem]]:
    """Every concrete WorkItem model: the registered work kinds."""
    from django.apps import apps

    return [model for model in apps.get_models() if issubclass(model, WorkItem)]


def sweep_stale_work() -> dict[str, dict[str, int]]:
    """The one sweep: recover every kind's rows, then remove temporary directories dead workers left."""
    now = timezone.now()
    counts: dict[str, dict[str, int]] = {}
    for kind in work_kinds():
        try:
            counts[kind.WORK_KIND] = kind.sweep(now)
        except Exception:  # noqa: BLE001 - one kind's failure must not stop the others' recovery
            log.exception("sweep of %s failed", kind.WORK_KIND)
            continue
        try:
            removed = kind.sweep_scratch(older_than=settings.WORK_STALE_SECONDS)
        except OSError:
            log.exception("removing %s temporary directories failed", kind.WORK_KIND)
            removed = 0
        if removed:
            counts[kind.WORK_KIND]["scratch_removed"] = removed
    acted = {kind: c for kind, c in counts.items() if any(c.values())}
    if acted:
        log.warning("work sweep: %s", acted)
    return counts
