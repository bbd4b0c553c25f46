"""What every row that carries a task's state (a run, a generation step, a gate run, a HALO
run) answers the same way. The fields stay on each model; this only reads them."""

from django.utils import timezone


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
