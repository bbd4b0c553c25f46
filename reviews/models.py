"""Review cycles, reviewers' feedback and its approval, and (for generation) insights and eval cases.

Approval model: every run gets ONE merged feedback per cycle (`Feedback.is_merged`), written by
an approver from the reviewers' submitted feedback (even when a single reviewer wrote it). A run
counts as approved when its merged feedback is approved; approving it also marks the reviewers'
submissions it was built from as approved. `approve_run()` is the only way in.
"""

from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.db import models, transaction
from django.db.models import Count, Exists, OuterRef, Q
from django.urls import reverse
from django.utils import timezone

from loopsite.models import AuditEvent
from loopsite.work import TrackedWork
from loopsite.roles import APPROVER, ENGINEER, REVIEWER, has_role


class FeedbackStateError(Exception):
    """The feedback is not in a state that allows this change."""


class StaleFeedbackError(Exception):
    """Someone saved a newer version of this feedback since the form was loaded."""

    def __init__(self, feedback: "Feedback"):
        super().__init__(f"Feedback {feedback.pk} is at version {feedback.version}.")
        self.feedback = feedback


# --- Cycles and assignments ---------------------------------------------------------------


class CycleQuerySet(models.QuerySet):
    def create_for_batch(self, batch) -> "Cycle":
        """The cycle for a batch of runs just started, named after the harness and date."""
        cycle = self.create(
            harness=batch.harness,
            batch=batch,
            name=f"{batch.harness.version} · {timezone.localdate():%Y-%m-%d} · batch {batch.pk}",
            created_by=batch.created_by,
        )
        cycle.runs.set(batch.runs.all())
        AuditEvent.record(
            actor=batch.created_by, action="cycle.create", obj=cycle,
            summary=f"Cycle for batch {batch.pk} with {batch.runs.count()} runs",
            after={"name": cycle.name, "runs": sorted(batch.runs.values_list("pk", flat=True))},
        )
        return cycle

    def create_from_runs(self, *, runs, name: str, user) -> "Cycle":
        """A cycle from chosen runs, which must all belong to one harness version."""
        runs = list(runs)
        harnesses = {run.harness_id for run in runs}
        if len(harnesses) != 1:
            raise ValueError("A cycle groups the runs of one harness version.")
        harness = runs[0].harness
        with transaction.atomic():
            cycle = self.create(
                harness=harness, name=name or f"{harness.version} · {timezone.localdate():%Y-%m-%d}", created_by=user
            )
            cycle.runs.set(runs)
            AuditEvent.record(
                actor=user, action="cycle.create", obj=cycle, summary=f"Cycle from {len(runs)} chosen runs",
                after={"name": cycle.name, "runs": sorted(run.pk for run in runs)},
            )
        return cycle


class Cycle(models.Model):
    """The runs of one harness version that are reviewed together."""

    class Status(models.TextChoices):
        REVIEWING = "reviewing", "Reviewing"
        REVIEWED = "reviewed", "All runs approved"
        GENERATING = "generating", "Generating evals"
        PROPOSED = "proposed", "Evals proposed"
        CLOSED = "closed", "Closed"

    harness = models.ForeignKey("runs.Harness", on_delete=models.PROTECT, related_name="cycles")
    batch = models.ForeignKey("runs.Batch", null=True, blank=True, on_delete=models.SET_NULL, related_name="cycles")
    name = models.CharField(max_length=200)
    runs = models.ManyToManyField("runs.Run", related_name="cycles", blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.REVIEWING, db_index=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    # Generation (part 2): when and by whom the insights -> evals chain was last requested.
    generation_requested_at = models.DateTimeField(null=True, blank=True)
    generation_requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    objects = CycleQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return self.name

    def get_absolute_url(self) -> str:
        return reverse("reviews:cycle-detail", args=[self.pk])

    def runs_with_state(self):
        """The cycle's runs annotated with their review counts, in label order."""
        reviewer_feedback = Feedback.objects.filter(cycle=self, run=OuterRef("pk"), is_merged=False)
        return (
            self.runs.select_related("question", "harness")
            .annotate(
                is_reviewed=Exists(reviewer_feedback.filter(status__in=Feedback.REVIEWED_STATUSES)),
                is_approved=Exists(
                    Feedback.objects.filter(
                        cycle=self, run=OuterRef("pk"), is_merged=True, status=Feedback.Status.APPROVED
                    )
                ),
            )
            .order_by("label", "pk")
        )

    def progress(self) -> dict[str, int]:
        """reviewed = runs with at least one submitted feedback; approved = runs whose merged feedback is approved."""
        counts = self.runs_with_state().aggregate(
            total=Count("pk"),
            reviewed=Count("pk", filter=Q(is_reviewed=True)),
            approved=Count("pk", filter=Q(is_approved=True)),
        )
        return {key: counts[key] or 0 for key in ("total", "reviewed", "approved")}

    def next_run_for(self, user):
        """The first run assigned to `user` here that they have not submitted feedback on."""
        submitted = Feedback.objects.filter(
            cycle=self, run=OuterRef("pk"), reviewer=user, is_merged=False, submitted_at__isnull=False
        ).exclude(status=Feedback.Status.SENT_BACK)
        return (
            self.runs.filter(review_assignments__cycle=self, review_assignments__reviewer=user)
            .filter(~Exists(submitted))
            .order_by("label", "pk")
            .first()
        )

    def assign(self, *, run, reviewer, by) -> "ReviewAssignment":
        """Assign a run of this cycle to a reviewer (idempotent)."""
        if not has_role(by, ENGINEER, APPROVER):
            raise PermissionDenied("Only engineers and approvers assign reviews.")
        if not has_role(reviewer, REVIEWER):
            raise ValueError(f"{reviewer.get_username()} does not hold the reviewer role.")
        if not self.runs.filter(pk=run.pk).exists():
            raise ValueError("That run is not in this cycle.")
        assignment, created = ReviewAssignment.objects.get_or_create(
            cycle=self, run=run, reviewer=reviewer, defaults={"assigned_by": by}
        )
        if created:
            AuditEvent.record(
                actor=by, action="review.assign", obj=assignment,
                summary=f"Run {run.pk} in cycle {self.pk} assigned to {reviewer.get_username()}",
                after={"cycle": self.pk, "run": run.pk, "reviewer": reviewer.get_username()},
            )
        return assignment

    def unassign(self, *, run, reviewer, by) -> bool:
        if not has_role(by, ENGINEER, APPROVER):
            raise PermissionDenied("Only engineers and approvers assign reviews.")
        assignment = ReviewAssignment.objects.filter(cycle=self, run=run, reviewer=reviewer).first()
        if assignment is None:
            return False
        AuditEvent.record(
            actor=by, action="review.unassign", obj=assignment,
            summary=f"Run {run.pk} in cycle {self.pk} no longer assigned to {reviewer.get_username()}",
            before={"cycle": self.pk, "run": run.pk, "reviewer": reviewer.get_username()},
        )
        assignment.delete()
        return True

    def refresh_review_status(self) -> None:
        """Move between reviewing and reviewed as runs get approved (generation states are left alone)."""
        if self.status not in (self.Status.REVIEWING, self.Status.REVIEWED):
            return
        progress = self.progress()
        status = (
            self.Status.REVIEWED
            if progress["total"] and progress["approved"] == progress["total"]
            else self.Status.REVIEWING
        )
        if status != self.status:
            self.status = status
            self.save(update_fields=["status"])


class ReviewAssignment(models.Model):
    cycle = models.ForeignKey(Cycle, on_delete=models.CASCADE, related_name="assignments")
    run = models.ForeignKey("runs.Run", on_delete=models.CASCADE, related_name="review_assignments")
    reviewer = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="review_assignments")
    assigned_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "id"]
        constraints = [
            models.UniqueConstraint(fields=["cycle", "run", "reviewer"], name="assignment_cycle_run_reviewer_unique"),
        ]
        indexes = [models.Index(fields=["reviewer", "cycle"], name="assignment_reviewer_cycle_idx")]

    def __str__(self) -> str:
        return f"{self.reviewer} on run {self.run_id} in cycle {self.cycle_id}"


# --- Feedback --------------------------------------------------------------------------------


class Feedback(models.Model):
    """One reviewer's feedback on one run in a cycle, or (is_merged) the approver's merged feedback."""

    class Verdict(models.TextChoices):
        PASS = "pass", "Pass"
        FAIL = "fail", "Fail"
        MIXED = "mixed", "Mixed"

    class Status(models.TextChoices):
        DRAFT = "draft", "Draft"
        SUBMITTED = "submitted", "Submitted"
        APPROVED = "approved", "Approved"
        SENT_BACK = "sent_back", "Sent back"

    EDITABLE_STATUSES = (Status.DRAFT, Status.SENT_BACK)
    REVIEWED_STATUSES = (Status.SUBMITTED, Status.APPROVED)

    cycle = models.ForeignKey(Cycle, on_delete=models.CASCADE, related_name="feedback")
    run = models.ForeignKey("runs.Run", on_delete=models.CASCADE, related_name="feedback")
    reviewer = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="feedback",
        help_text="The author: the reviewer, or for merged feedback the approver who merged it.",
    )
    summary = models.TextField(blank=True)
    theme = models.CharField(max_length=80, blank=True)
    verdict = models.CharField(max_length=8, choices=Verdict.choices, blank=True)
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.DRAFT)
    is_merged = models.BooleanField(default=False)
    merged_from = models.ManyToManyField(
        "self", symmetrical=False, blank=True, related_name="merged_into",
        help_text="For merged feedback: the reviewers' submissions it was built from.",
    )
    submitted_at = models.DateTimeField(null=True, blank=True)
    approved_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    approved_at = models.DateTimeField(null=True, blank=True)
    sent_back_comment = models.TextField(blank=True)
    version = models.PositiveIntegerField(default=0, help_text="Bumped on every save; a stale form cannot overwrite.")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["cycle", "run", "is_merged", "created_at", "id"]
        verbose_name_plural = "feedback"
        constraints = [
            models.UniqueConstraint(
                fields=["cycle", "run", "reviewer"], condition=Q(is_merged=False), name="feedback_one_per_reviewer",
            ),
            models.UniqueConstraint(fields=["cycle", "run"], condition=Q(is_merged=True), name="feedback_one_merged_per_run"),
            models.CheckConstraint(
                condition=~Q(status="approved") | Q(approved_by__isnull=False), name="feedback_approved_has_approver",
            ),
        ]
        indexes = [models.Index(fields=["cycle", "run", "status"], name="feedback_cycle_run_status_idx")]

    def __str__(self) -> str:
        who = "merged" if self.is_merged else str(self.reviewer)
        return f"Feedback on run {self.run_id} by {who} ({self.status})"

    def get_absolute_url(self) -> str:
        if self.is_merged:
            return reverse("reviews:run-approve", args=[self.cycle_id, self.run_id])
        return reverse("reviews:feedback-edit", args=[self.cycle_id, self.run_id])

    @property
    def is_editable(self) -> bool:
        return self.status in self.EDITABLE_STATUSES

    def observations(self) -> list["FeedbackItem"]:
        return [item for item in self.items.all() if item.kind == FeedbackItem.Kind.REQUIRED_OBSERVATION]

    def claims(self) -> list["FeedbackItem"]:
        return [item for item in self.items.all() if item.kind == FeedbackItem.Kind.PROHIBITED_CLAIM]

    def content(self) -> dict[str, Any]:
        """What the author wrote, in a comparable form."""
        return {
            "summary": self.summary,
            "theme": self.theme,
            "verdict": self.verdict,
            "items": [item.as_dict() for item in self.items.all()],
        }

    def snapshot(self) -> dict[str, Any]:
        return {
            **self.content(),
            "status": self.status,
            "version": self.version,
            "is_merged": self.is_merged,
            "reviewer": self.reviewer.get_username(),
            "sent_back_comment": self.sent_back_comment,
        }

    def as_seed_dict(self) -> dict[str, Any]:
        """The seed's human feedback shape (Step 4), for generation."""
        run = self.run
        return {
            "feedback_id": f"human-{run.label or run.pk}-{self.pk}",
            "trace_id": run.trace_id,
            "trace_label": run.label,
            "question": run.question.text,
            "source_type": "human_feedback",
            "theme": self.theme,
            "summary": self.summary,
            "required_observations": [item.text for item in self.observations()],
            "prohibited_claims": [item.text for item in self.claims()],
        }

    # --- state changes: each locks the row, checks, saves update_fields, keeps history ---

    def _locked(self) -> "Feedback":
        return Feedback.objects.select_for_update().get(pk=self.pk)

    def _remember(self, *, by, action: str, before: dict | None) -> None:
        after = self.snapshot()
        FeedbackRevision.objects.create(feedback=self, action=action, by=by, version=self.version, snapshot=after)
        AuditEvent.record(
            actor=by, action=f"feedback.{action}", obj=self,
            summary=f"{action.replace('_', ' ')}: run {self.run_id} in cycle {self.cycle_id}"
            + (" (merged)" if self.is_merged else f" by {self.reviewer.get_username()}"),
            before=before, after=after,
        )

    def _refresh_from(self, locked: "Feedback") -> None:
        for field in locked._meta.concrete_fields:
            setattr(self, field.attname, getattr(locked, field.attname))
        if hasattr(self, "_prefetched_objects_cache"):
            self._prefetched_objects_cache.clear()

    def save_content(self, *, by, content: dict[str, Any], version: int) -> bool:
        """Replace what the author wrote. False if nothing changed; StaleFeedbackError if `version` is old."""
        with transaction.atomic():
            locked = self._locked()
            if by.pk != locked.reviewer_id and not (locked.is_merged and has_role(by, APPROVER)):
                raise PermissionDenied("Only the author can edit this feedback.")
            if locked.content() == _normal(content):
                self._refresh_from(locked)
                return False
            if locked.version != version:
                raise StaleFeedbackError(locked)
            if not locked.is_editable and not (locked.is_merged and locked.status == self.Status.APPROVED):
                raise FeedbackStateError(f"{locked.get_status_display()} feedback cannot be edited.")
            before = locked.snapshot()
            locked.summary = content["summary"]
            locked.theme = content["theme"]
            locked.verdict = content["verdict"]
            locked.version += 1
            locked.save(update_fields=["summary", "theme", "verdict", "version", "updated_at"])
            locked.items.all().delete()
            FeedbackItem.objects.bulk_create(
                FeedbackItem(feedback=locked, position=position, **item)
                for position, item in enumerate(_normal(content)["items"])
            )
            locked._remember(by=by, action="save", before=before)
        self._refresh_from(locked)
        return True

    def submit(self, *, by) -> None:
        with transaction.atomic():
            locked = self._locked()
            if by.pk != locked.reviewer_id or locked.is_merged:
                raise PermissionDenied("Only the reviewer who wrote this feedback can submit it.")
            if not locked.is_editable:
                raise FeedbackStateError(f"{locked.get_status_display()} feedback cannot be submitted.")
            before = locked.snapshot()
            locked.status = self.Status.SUBMITTED
            locked.submitted_at = timezone.now()
            locked.version += 1
            locked.save(update_fields=["status", "submitted_at", "version", "updated_at"])
            locked._remember(by=by, action="submit", before=before)
        self._refresh_from(locked)

    def approve(self, *, by) -> None:
        """Approve a reviewer's submission. Called by approve_run() when the merged feedback is approved."""
        with transaction.atomic():
            locked = self._locked()
            _check_approver(by, locked)
            if locked.is_merged:
                raise FeedbackStateError("Merged feedback is approved through approve_run().")
            if locked.status != self.Status.SUBMITTED:
                raise FeedbackStateError(f"{locked.get_status_display()} feedback cannot be approved.")
            before = locked.snapshot()
            locked.status = self.Status.APPROVED
            locked.approved_by = by
            locked.approved_at = timezone.now()
            locked.version += 1
            locked.save(update_fields=["status", "approved_by", "approved_at", "version", "updated_at"])
            locked._remember(by=by, action="approve", before=before)
        self._refresh_from(locked)

    def send_back(self, *, by, comment: str) -> None:
        comment = (comment or "").strip()
        if not comment:
            raise ValueError("Say what needs changing.")
        with transaction.atomic():
            locked = self._locked()
            _check_approver(by, locked)
            if locked.is_merged or locked.status != self.Status.SUBMITTED:
                raise FeedbackStateError(f"{locked.get_status_display()} feedback cannot be sent back.")
            before = locked.snapshot()
            locked.status = self.Status.SENT_BACK
            locked.sent_back_comment = comment
            locked.version += 1
            locked.save(update_fields=["status", "sent_back_comment", "version", "updated_at"])
            locked._remember(by=by, action="send_back", before=before)
        self._refresh_from(locked)


def _check_approver(user, feedback: Feedback) -> None:
    if not has_role(user, APPROVER):
        raise PermissionDenied("Only approvers approve or send back feedback.")
    if user.pk == feedback.reviewer_id and not feedback.is_merged:
        raise PermissionDenied("You cannot approve or send back your own feedback.")


def _normal(content: dict[str, Any]) -> dict[str, Any]:
    """Content with every item carrying the same keys as FeedbackItem.as_dict()."""
    return {
        "summary": content.get("summary", ""),
        "theme": content.get("theme", ""),
        "verdict": content.get("verdict", ""),
        "items": [
            {
                "kind": item["kind"],
                "text": item.get("text", ""),
                "citation_span_id": item.get("citation_span_id", ""),
                "citation_artifact": item.get("citation_artifact", ""),
                "citation_line": item.get("citation_line"),
            }
            for item in content.get("items", [])
        ],
    }


def get_or_create_feedback(*, cycle: Cycle, run, user, merged: bool = False) -> Feedback:
    """The author's feedback row for a run, created as an empty draft on first save."""
    lookup = {"cycle": cycle, "run": run, "is_merged": merged}
    if not merged:
        lookup["reviewer"] = user
    feedback = Feedback.objects.filter(**lookup).first()
    if feedback is not None:
        return feedback
    from django.db import IntegrityError

    try:
        with transaction.atomic():
            feedback = Feedback.objects.create(cycle=cycle, run=run, reviewer=user, is_merged=merged)
            AuditEvent.record(
                actor=user, action="feedback.create", obj=feedback,
                summary=f"{'Merged feedback' if merged else 'Feedback'} started on run {run.pk} in cycle {cycle.pk}",
            )
    except IntegrityError:  # a concurrent first save won the race
        feedback = Feedback.objects.get(**lookup)
    return feedback


def approve_run(*, cycle: Cycle, run, by, content: dict[str, Any], version: int) -> Feedback:
    """Approve the run's merged feedback with `content`, and the reviewers' submissions behind it."""
    if not has_role(by, APPROVER):
        raise PermissionDenied("Only approvers approve feedback.")
    with transaction.atomic():
        sources = list(
            Feedback.objects.select_for_update()
            .filter(cycle=cycle, run=run, is_merged=False, status__in=Feedback.REVIEWED_STATUSES)
            .order_by("submitted_at", "pk")
        )
        if not sources:
            raise FeedbackStateError("No reviewer has submitted feedback on this run yet.")
        if any(source.reviewer_id == by.pk for source in sources):
            raise PermissionDenied("You reviewed this run yourself, so another approver must approve it.")
        merged = get_or_create_feedback(cycle=cycle, run=run, user=by, merged=True)
        merged.save_content(by=by, content=content, version=version)
        locked = merged._locked()
        before = locked.snapshot()
        locked.status = Feedback.Status.APPROVED
        locked.approved_by = by
        locked.approved_at = timezone.now()
        locked.submitted_at = locked.submitted_at or locked.approved_at
        locked.version += 1
        locked.save(update_fields=["status", "approved_by", "approved_at", "submitted_at", "version", "updated_at"])
        locked.merged_from.add(*sources)
        locked._remember(by=by, action="approve", before=before)
        for source in sources:
            if source.status == Feedback.Status.SUBMITTED:
                source.approve(by=by)
        cycle.refresh_review_status()
        from .generation import start_when_reviewed  # part 2: the insights -> evals chain, on commit

        start_when_reviewed(cycle=cycle, run=run, user=by)
    merged._refresh_from(locked)
    return merged


def can_see_others_feedback(user, *, cycle: Cycle, run) -> bool:
    """Blind review: a reviewer sees the others' feedback on a run only after submitting their own."""
    own = Feedback.objects.filter(cycle=cycle, run=run, reviewer=user, is_merged=False).first()
    if own is not None:
        return own.submitted_at is not None
    if ReviewAssignment.objects.filter(cycle=cycle, run=run, reviewer=user).exists():
        return False
    return has_role(user, APPROVER)


def can_review(user) -> bool:
    return has_role(user, REVIEWER)


class FeedbackItem(models.Model):
    class Kind(models.TextChoices):
        REQUIRED_OBSERVATION = "required_observation", "Required observation"
        PROHIBITED_CLAIM = "prohibited_claim", "Prohibited claim"

    feedback = models.ForeignKey(Feedback, on_delete=models.CASCADE, related_name="items")
    kind = models.CharField(max_length=24, choices=Kind.choices)
    text = models.TextField(blank=True)
    position = models.PositiveIntegerField(default=0)
    citation_span_id = models.CharField(max_length=64, blank=True)
    citation_artifact = models.CharField(max_length=200, blank=True)
    citation_line = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["feedback", "position", "id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(citation_line__isnull=True) | Q(citation_line__gte=1), name="feedback_item_line_positive",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()}: {self.text[:60]}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "text": self.text,
            "citation_span_id": self.citation_span_id,
            "citation_artifact": self.citation_artifact,
            "citation_line": self.citation_line,
        }

    @property
    def has_citation(self) -> bool:
        return bool(self.citation_span_id or self.citation_artifact)

    @property
    def citation_url(self) -> str:
        from .trace import citation_url

        return citation_url(self.feedback.run, span_id=self.citation_span_id, artifact=self.citation_artifact)

    @property
    def citation_label(self) -> str:
        from .trace import citation_label

        return citation_label(self.citation_span_id, self.citation_artifact, self.citation_line)


class FeedbackRevision(models.Model):
    """The whole feedback with its items, as it stood after a save, submit, approval or send-back."""

    feedback = models.ForeignKey(Feedback, on_delete=models.CASCADE, related_name="revisions")
    action = models.CharField(max_length=20)
    version = models.PositiveIntegerField()
    snapshot = models.JSONField()
    by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["feedback", "-at", "-id"]

    def __str__(self) -> str:
        return f"{self.action} v{self.version} of feedback {self.feedback_id}"


# --- Generation (behaviour in part 2) ---------------------------------------------------------


class GenerationJob(TrackedWork, models.Model):
    """One step of the insights -> evals chain for a cycle; task state lives here."""

    class Kind(models.TextChoices):
        INSIGHTS = "insights", "LLM insights"
        EVALS = "evals", "Eval generation"

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"

    cycle = models.ForeignKey(Cycle, on_delete=models.CASCADE, related_name="generation_jobs")
    kind = models.CharField(max_length=12, choices=Kind.choices)
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.QUEUED)
    attempts = models.PositiveSmallIntegerField(default=0)
    last_error = models.TextField(blank=True)
    raw_output = models.TextField(blank=True, help_text="The model's last raw output, kept when it fails validation.")
    model_name = models.CharField(max_length=120, blank=True)
    endpoint = models.CharField(max_length=300, blank=True)
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["status", "heartbeat_at"], name="genjob_status_heartbeat_idx")]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} for cycle {self.cycle_id} ({self.status})"

    ACTIVE_STATUSES = (Status.QUEUED, Status.RUNNING)

    def claim(self) -> bool:
        """Take a queued job for this worker (a conditional UPDATE). False if someone else has it or it is done."""
        now = timezone.now()
        claimed = GenerationJob.objects.filter(pk=self.pk, status=self.Status.QUEUED).update(
            status=self.Status.RUNNING, attempts=models.F("attempts") + 1, started_at=now, heartbeat_at=now,
            finished_at=None, last_error="", raw_output="",
        )
        if claimed:
            self.refresh_from_db()
        return bool(claimed)

    def beat(self) -> None:
        GenerationJob.objects.filter(pk=self.pk, status=self.Status.RUNNING).update(heartbeat_at=timezone.now())

    def finish(self, *, error: str = "", raw_output: str = "") -> bool:
        """Running -> succeeded, or failed with `error`. False if the job was no longer running (e.g. swept)."""
        now = timezone.now()
        changes = {"finished_at": now, "heartbeat_at": now}
        if error:
            changes.update(status=self.Status.FAILED, last_error=error[-8000:], raw_output=raw_output[-200_000:])
        else:
            changes.update(status=self.Status.SUCCEEDED, last_error="", raw_output="")
        done = GenerationJob.objects.filter(pk=self.pk, status=self.Status.RUNNING).update(**changes)
        if done:
            self.refresh_from_db()
        return bool(done)

    def requeue(self, *, by) -> bool:
        """A failed job back to queued (the Retry button). False if it is not failed."""
        with transaction.atomic():
            locked = GenerationJob.objects.select_for_update().get(pk=self.pk)
            if locked.status != self.Status.FAILED:
                return False
            before = {"status": locked.status, "attempts": locked.attempts, "last_error": locked.last_error}
            locked.status = self.Status.QUEUED
            locked.heartbeat_at = timezone.now()  # when it was (re-)enqueued, for the sweep
            locked.finished_at = None
            locked.save(update_fields=["status", "heartbeat_at", "finished_at"])
            AuditEvent.record(
                actor=by, action="generation.retry", obj=locked,
                summary=f"Retry of the {locked.get_kind_display().lower()} step for cycle {locked.cycle_id}",
                before=before, after={"status": locked.status},
            )
        self.refresh_from_db()
        return True


class Insight(models.Model):
    """Model-generated observations on one run (the seed's llm_insight)."""

    cycle = models.ForeignKey(Cycle, on_delete=models.CASCADE, related_name="insights")
    run = models.ForeignKey("runs.Run", on_delete=models.CASCADE, related_name="insights")
    job = models.ForeignKey(GenerationJob, null=True, blank=True, on_delete=models.SET_NULL, related_name="insights")
    observations = models.JSONField(default=list)
    model_name = models.CharField(max_length=120, blank=True)
    endpoint = models.CharField(max_length=300, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["cycle", "run", "-created_at"]
        indexes = [models.Index(fields=["cycle", "run"], name="insight_cycle_run_idx")]

    def __str__(self) -> str:
        return f"Insight on run {self.run_id} in cycle {self.cycle_id}"


class EvalCaseStateError(Exception):
    """The eval case is not in a state that allows this change."""


class StaleEvalCaseError(Exception):
    """Someone edited this eval case since the form was loaded."""

    def __init__(self, case: "EvalCase"):
        super().__init__(f"Eval case {case.pk} was edited by someone else.")
        self.case = case


def _require_approver(user) -> None:
    if not has_role(user, APPROVER):
        raise PermissionDenied("Only approvers edit, approve, reject or retire eval cases.")


class EvalCase(models.Model):
    """A proposed eval definition (the seed's schema); approved cases form the regression suite."""

    class ScoringMethod(models.TextChoices):
        DETERMINISTIC = "deterministic", "Deterministic"
        LLM_JUDGE = "llm_judge", "LLM judge"
        HYBRID = "hybrid", "Hybrid"

    class Status(models.TextChoices):
        PROPOSED = "proposed", "Proposed"
        APPROVED = "approved", "Approved"
        REJECTED = "rejected", "Rejected"
        RETIRED = "retired", "Retired"

    cycle = models.ForeignKey(Cycle, on_delete=models.CASCADE, related_name="eval_cases")
    eval_id = models.SlugField(max_length=120)
    title = models.CharField(max_length=300)
    scoring_method = models.CharField(max_length=16, choices=ScoringMethod.choices, default=ScoringMethod.HYBRID)
    expected_behavior = models.TextField()
    source_run = models.ForeignKey("runs.Run", on_delete=models.PROTECT, related_name="eval_cases")
    rubric = models.TextField(blank=True)
    deterministic_assertions = models.JSONField(default=list, blank=True)
    pass_example = models.TextField(blank=True)
    fail_example = models.TextField(blank=True)
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.PROPOSED, db_index=True)
    reject_reason = models.TextField(blank=True)
    source_feedback = models.ManyToManyField(Feedback, blank=True, related_name="eval_cases")
    source_insights = models.ManyToManyField(Insight, blank=True, related_name="eval_cases")
    job = models.ForeignKey(GenerationJob, null=True, blank=True, on_delete=models.SET_NULL, related_name="eval_cases")
    approved_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    approved_at = models.DateTimeField(null=True, blank=True)
    model_name = models.CharField(max_length=120, blank=True)
    endpoint = models.CharField(max_length=300, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["cycle", "eval_id"]
        constraints = [
            models.UniqueConstraint(fields=["cycle", "eval_id"], name="evalcase_cycle_eval_id_unique"),
        ]
        indexes = [models.Index(fields=["status", "cycle"], name="evalcase_status_cycle_idx")]

    def __str__(self) -> str:
        return self.eval_id

    EDITABLE_FIELDS = (
        "title", "scoring_method", "expected_behavior", "rubric", "deterministic_assertions", "pass_example", "fail_example",
    )
    EDITABLE_STATUSES = (Status.PROPOSED, Status.APPROVED)

    def get_absolute_url(self) -> str:
        return reverse("reviews:eval-detail", args=[self.pk])

    def content(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.EDITABLE_FIELDS}

    def snapshot(self) -> dict[str, Any]:
        return {
            **self.content(), "eval_id": self.eval_id, "status": self.status, "reject_reason": self.reject_reason,
            "approved_by": self.approved_by.get_username() if self.approved_by_id else None,
        }

    def problems(self) -> list[str]:
        """Why this case could not run as a promptfoo test (empty when it can)."""
        from .validation import validate_assertions

        problems = validate_assertions(self.deterministic_assertions)[1]
        if self.scoring_method != self.ScoringMethod.DETERMINISTIC and not self.rubric.strip():
            problems.append(f"a {self.get_scoring_method_display().lower()} case needs a rubric")
        if self.scoring_method == self.ScoringMethod.DETERMINISTIC and not self.deterministic_assertions:
            problems.append("a deterministic case needs at least one assertion")
        return problems

    def _locked(self) -> "EvalCase":
        return EvalCase.objects.select_for_update().get(pk=self.pk)

    def _refresh_from(self, locked: "EvalCase") -> None:
        for field in locked._meta.concrete_fields:
            setattr(self, field.attname, getattr(locked, field.attname))

    def _record(self, *, by, action: str, before: dict[str, Any], summary: str) -> None:
        AuditEvent.record(actor=by, action=f"evalcase.{action}", obj=self, summary=summary,
                          before=before, after=self.snapshot())

    def edit(self, *, by, content: dict[str, Any], edits_seen: int | None = None) -> bool:
        """Change any editable field; every change keeps a revision (before/after). False if nothing changed."""
        _require_approver(by)
        with transaction.atomic():
            locked = self._locked()
            if locked.status not in self.EDITABLE_STATUSES:
                raise EvalCaseStateError(f"The case is {locked.get_status_display().lower()}: it cannot be edited.")
            if edits_seen is not None and locked.revisions.count() != edits_seen:
                raise StaleEvalCaseError(locked)
            before = locked.content()
            after = {**before, **{name: content[name] for name in self.EDITABLE_FIELDS if name in content}}
            changed = [name for name in self.EDITABLE_FIELDS if after[name] != before[name]]
            if not changed:
                self._refresh_from(locked)
                return False
            snapshot_before = locked.snapshot()
            for name in changed:
                setattr(locked, name, after[name])
            locked.save(update_fields=[*changed, "updated_at"])
            EvalCaseRevision.objects.create(case=locked, edited_by=by, before=before, after=after)
            locked._record(by=by, action="edit", before=snapshot_before,
                           summary=f"Edited {', '.join(changed)} of eval {locked.eval_id} (cycle {locked.cycle_id})")
        self._refresh_from(locked)
        return True

    def _transition(self, *, by, action: str, allowed: tuple[str, ...], status: str, **changes) -> None:
        _require_approver(by)
        with transaction.atomic():
            locked = self._locked()
            if locked.status not in allowed:
                done = {"approve": "approved", "reject": "rejected", "retire": "retired", "restore": "restored"}[action]
                raise EvalCaseStateError(f"The case is {locked.get_status_display().lower()}: it cannot be {done}.")
            if action == "approve" and (problems := locked.problems()):
                raise EvalCaseStateError("Fix this case before approving it: " + "; ".join(problems) + ".")
            before = locked.snapshot()
            locked.status = status
            for name, value in changes.items():
                setattr(locked, name, value)
            locked.save(update_fields=["status", *changes, "updated_at"])
            locked._record(by=by, action=action, before=before,
                           summary=f"{action.capitalize()} eval {locked.eval_id} (cycle {locked.cycle_id})")
            if action in ("approve", "reject"):
                from .gate import gate_when_decided  # the gate starts on commit once no proposal is left

                gate_when_decided(cycle_id=locked.cycle_id, user=by)
        self._refresh_from(locked)

    def approve(self, *, by) -> None:
        """Into the regression suite."""
        self._transition(by=by, action="approve", allowed=(self.Status.PROPOSED,), status=self.Status.APPROVED,
                         approved_by=by, approved_at=timezone.now(), reject_reason="")

    def reject(self, *, by, reason: str) -> None:
        reason = (reason or "").strip()
        if not reason:
            raise ValueError("Say why this case is rejected.")
        self._transition(by=by, action="reject", allowed=(self.Status.PROPOSED,), status=self.Status.REJECTED,
                         reject_reason=reason)

    def retire(self, *, by) -> None:
        """Out of the active suite, keeping its history."""
        self._transition(by=by, action="retire", allowed=(self.Status.APPROVED,), status=self.Status.RETIRED)

    def restore(self, *, by) -> None:
        self._transition(by=by, action="restore", allowed=(self.Status.RETIRED,), status=self.Status.APPROVED)


class EvalCaseRevision(models.Model):
    case = models.ForeignKey(EvalCase, on_delete=models.CASCADE, related_name="revisions")
    edited_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    at = models.DateTimeField(auto_now_add=True)
    before = models.JSONField()
    after = models.JSONField()

    class Meta:
        ordering = ["case", "-at", "-id"]

    def __str__(self) -> str:
        return f"Edit of {self.case_id} at {self.at:%Y-%m-%d %H:%M}"


# --- Gate ----------------------------------------------------------------------------------------------


class GateRun(TrackedWork, models.Model):
    """One promptfoo run of the approved suite on one harness version's stored answers; task state lives here.

    A *baseline* gate run judges the answers of a cycle (or, without a cycle, the harness's latest
    answers per question). A *candidate* gate run judges a candidate harness's fresh runs (its
    cycle's batch) and names the baseline gate run it is compared against; it waits in
    `waiting` until those runs have finished. reviews/gate.py does the work.
    """

    class Kind(models.TextChoices):
        BASELINE = "baseline", "Baseline"
        CANDIDATE = "candidate", "Candidate"

    class Status(models.TextChoices):
        WAITING = "waiting", "Waiting for runs"
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"

    ACTIVE_STATUSES = (Status.WAITING, Status.QUEUED, Status.RUNNING)

    cycle = models.ForeignKey(Cycle, null=True, blank=True, on_delete=models.CASCADE, related_name="gate_runs")
    harness = models.ForeignKey("runs.Harness", on_delete=models.PROTECT, related_name="gate_runs",
                                help_text="The version whose answers are judged.")
    baseline = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="candidates",
                                 help_text="For a candidate: the gate run it is compared against.")
    kind = models.CharField(max_length=12, choices=Kind.choices, default=Kind.BASELINE)
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.QUEUED)
    attempts = models.PositiveSmallIntegerField(default=0)
    last_error = models.TextField(blank=True)
    total = models.PositiveIntegerField(default=0)
    passed = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0)
    errors = models.PositiveIntegerField(default=0)
    returncode = models.IntegerField(null=True, blank=True, help_text="promptfoo's exit code (100: some test failed).")
    results = models.JSONField(null=True, blank=True, help_text="promptfoo's results file, as written.")
    log_tail = models.TextField(blank=True)
    config = models.JSONField(default=dict, blank=True, help_text="The promptfoo config the gate ran, plus skipped cases.")
    judge_model = models.CharField(max_length=120, blank=True)
    endpoint = models.CharField(max_length=300, blank=True)
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True,
                                        help_text="Running: the worker's last beat. Queued/waiting: last (re-)enqueued or checked.")
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["status", "heartbeat_at"], name="gaterun_status_heartbeat_idx"),
            models.Index(fields=["harness", "status", "finished_at"], name="gaterun_harness_status_idx"),
            models.Index(fields=["cycle", "status"], name="gaterun_cycle_status_idx"),
        ]
        constraints = [
            models.CheckConstraint(condition=Q(kind="baseline") | Q(cycle__isnull=False), name="gaterun_candidate_has_cycle"),
        ]

    def __str__(self) -> str:
        return f"Gate run {self.pk} on {self.harness} ({self.status})"

    def get_absolute_url(self) -> str:
        return reverse("reviews:gate-detail", args=[self.pk])

    @property
    def is_finished(self) -> bool:
        return self.status in (self.Status.SUCCEEDED, self.Status.FAILED)

    @property
    def pass_rate(self) -> float | None:
        return self.passed / self.total if self.total else None

    def summary(self) -> dict[str, Any]:
        """The seed's gate summary (promptfoo_summary without rows), for HALO and the audit log."""
        return {"backend": "promptfoo", "total": self.total, "passed": self.passed, "failed": self.failed,
                "errors": self.errors}

    def summary_rows(self) -> list[dict[str, Any]]:
        """The seed's promptfoo_summary rows: what HALO's context reads for each gate row."""
        return [row.as_seed_dict() for row in self.rows.select_related("run", "eval_case")]

    # --- task state: each change is a conditional UPDATE on the row --------------------------------

    def claim(self) -> bool:
        """Queued -> running for this worker. False if someone else has it or it is done."""
        now = timezone.now()
        claimed = GateRun.objects.filter(pk=self.pk, status=self.Status.QUEUED).update(
            status=self.Status.RUNNING, attempts=models.F("attempts") + 1, started_at=now, heartbeat_at=now,
            finished_at=None, last_error="",
        )
        if claimed:
            self.refresh_from_db()
        return bool(claimed)

    def beat(self) -> bool:
        """Still running here? False once the row stopped being ours (swept)."""
        return bool(GateRun.objects.filter(pk=self.pk, status=self.Status.RUNNING).update(heartbeat_at=timezone.now()))

    def fail(self, error: str, **fields) -> bool:
        """Running -> failed with a readable reason (and whatever was collected). False if no longer running."""
        now = timezone.now()
        done = GateRun.objects.filter(pk=self.pk, status=self.Status.RUNNING).update(
            status=self.Status.FAILED, last_error=error[-8000:], finished_at=now, heartbeat_at=now, **fields,
        )
        if done:
            self.refresh_from_db()
        return bool(done)

    def requeue(self, *, by) -> bool:
        """A finished gate run back to queued (Re-run). False while it is still active."""
        with transaction.atomic():
            locked = GateRun.objects.select_for_update().get(pk=self.pk)
            if locked.is_active:
                return False
            before = {"status": locked.status, "attempts": locked.attempts, "last_error": locked.last_error,
                      **locked.summary()}
            locked.status = self.Status.QUEUED
            locked.heartbeat_at = timezone.now()
            locked.started_at = locked.finished_at = None
            locked.requested_by = by
            locked.save(update_fields=["status", "heartbeat_at", "started_at", "finished_at", "requested_by"])
            AuditEvent.record(actor=by, action="gate.rerun", obj=locked,
                              summary=f"Re-run of gate run {locked.pk} on {locked.harness.version}",
                              before=before, after={"status": locked.status})
        self.refresh_from_db()
        return True


class GateRow(models.Model):
    """One promptfoo result: an approved eval case on one run's stored answer."""

    gate_run = models.ForeignKey(GateRun, on_delete=models.CASCADE, related_name="rows")
    eval_case = models.ForeignKey(EvalCase, on_delete=models.CASCADE, related_name="gate_rows")
    run = models.ForeignKey("runs.Run", null=True, blank=True, on_delete=models.SET_NULL, related_name="gate_rows")
    position = models.PositiveIntegerField(default=0)
    eval_id = models.CharField(max_length=120, help_text="The case's eval_id when it ran.")
    title = models.CharField(max_length=300, blank=True)
    passed = models.BooleanField(default=False)
    score = models.FloatField(null=True, blank=True)
    reason = models.TextField(blank=True)
    assertions = models.JSONField(default=list, blank=True,
                                  help_text="Each assertion's result: type, value, pass, score, reason.")
    error = models.TextField(blank=True, help_text="Why there is no real verdict (no answer, judge error).")

    class Meta:
        ordering = ["gate_run", "position", "id"]
        constraints = [
            models.UniqueConstraint(fields=["gate_run", "eval_case"], name="gaterow_run_case_unique"),
        ]
        indexes = [models.Index(fields=["eval_case", "gate_run"], name="gaterow_case_run_idx")]

    def __str__(self) -> str:
        return f"{self.eval_id} in gate run {self.gate_run_id}: {'pass' if self.passed else 'fail'}"

    @property
    def verdict(self) -> bool | None:
        """True/False, or None when there is no real verdict (an error)."""
        return None if self.error else self.passed

    def as_seed_dict(self) -> dict[str, Any]:
        run = self.run
        return {
            "eval_id": self.eval_id,
            "title": self.title or "Untitled",
            "trace_id": run.trace_id if run else "",
            "trace_label": run.label if run else "",
            "passed": self.passed,
            "score": self.score,
            "explanation": self.error or self.reason,
        }


# --- Optimization (HALO) -------------------------------------------------------------------------------


class Optimization(TrackedWork, models.Model):
    """One HALO run over a cycle's optimization context, and the handoff it wrote; task state lives here.

    reviews/optimization.py does the work: the context (runs' spans + synthetic spans for the harness,
    feedback, insights, evals and the gate) is built when the task runs, HALO runs in its own process,
    and every event it reports is appended as an OptimizationEvent for the live page.
    """

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"

    ACTIVE_STATUSES = (Status.QUEUED, Status.RUNNING)

    cycle = models.ForeignKey(Cycle, on_delete=models.CASCADE, related_name="optimizations")
    gate_run = models.ForeignKey(GateRun, null=True, blank=True, on_delete=models.SET_NULL, related_name="optimizations",
                                 help_text="The gate run whose rows and summary went into the context.")
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.QUEUED)
    attempts = models.PositiveSmallIntegerField(default=0)
    last_error = models.TextField(blank=True)
    options = models.JSONField(default=dict, blank=True,
                               help_text="maximum_depth, maximum_turns, maximum_parallel_subagents, model, endpoint.")
    context_stats = models.JSONField(default=list, blank=True, help_text="The HALO input summary rows of the context.")
    report = models.TextField(blank=True, help_text="HALO's report, as written.")
    handoff = models.TextField(blank=True, help_text="The cleaned handoff (from ## Executive summary on).")
    missing_sections = models.JSONField(default=list, blank=True,
                                        help_text="Required sections still missing or out of order after the re-prompt.")
    retried = models.BooleanField(default=False, help_text="HALO was re-prompted once for missing sections.")
    model_name = models.CharField(max_length=120, blank=True)
    endpoint = models.CharField(max_length=300, blank=True)
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True,
                                        help_text="Running: the worker's last beat. Queued: last (re-)enqueued.")
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["status", "heartbeat_at"], name="optim_status_heartbeat_idx"),
            models.Index(fields=["cycle", "status"], name="optim_cycle_status_idx"),
        ]

    def __str__(self) -> str:
        return f"HALO run {self.pk} for cycle {self.cycle_id} ({self.status})"

    def get_absolute_url(self) -> str:
        return reverse("reviews:halo", args=[self.cycle_id])

    def claim(self) -> bool:
        """Queued -> running for this worker (a conditional UPDATE). False if someone else has it or it is done."""
        now = timezone.now()
        claimed = Optimization.objects.filter(pk=self.pk, status=self.Status.QUEUED).update(
            status=self.Status.RUNNING, attempts=models.F("attempts") + 1, started_at=now, heartbeat_at=now,
            finished_at=None, last_error="",
        )
        if claimed:
            self.refresh_from_db()
        return bool(claimed)

    def beat(self) -> bool:
        """Still running here? False once the row stopped being ours (swept)."""
        return bool(Optimization.objects.filter(pk=self.pk, status=self.Status.RUNNING).update(heartbeat_at=timezone.now()))

    def finish(self, *, error: str = "", **fields) -> bool:
        """Running -> succeeded (with `fields`), or failed with `error`. False if it was no longer running."""
        now = timezone.now()
        changes = {"finished_at": now, "heartbeat_at": now, **fields}
        if error:
            changes.update(status=self.Status.FAILED, last_error=error[-8000:])
        else:
            changes.update(status=self.Status.SUCCEEDED, last_error="")
        done = Optimization.objects.filter(pk=self.pk, status=self.Status.RUNNING).update(**changes)
        if done:
            self.refresh_from_db()
        return bool(done)


class OptimizationEvent(models.Model):
    """One event HALO reported while it ran (status, tool_call, tool_result, text, retry, report, error)."""

    optimization = models.ForeignKey(Optimization, on_delete=models.CASCADE, related_name="events")
    seq = models.PositiveIntegerField()
    at = models.DateTimeField(default=timezone.now)
    type = models.CharField(max_length=20)
    data = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["optimization", "seq"]
        constraints = [
            models.UniqueConstraint(fields=["optimization", "seq"], name="optimevent_optim_seq_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.type} #{self.seq} of HALO run {self.optimization_id}"
