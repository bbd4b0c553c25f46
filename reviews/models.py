"""Review cycles, reviewers' feedback and its approval, and (for generation) insights and eval cases.

Approval model: every run gets ONE merged feedback per cycle (`Feedback.is_merged`), written by
an approver from the reviewers' submitted feedback (even when a single reviewer wrote it). A run
counts as approved when its merged feedback is approved; approving it also marks the reviewers'
submissions it was built from as approved. `approve_run()` is the only way in.
"""

from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.db import models, transaction
from django.db.models import Count, Exists, OuterRef, Q
from django.urls import reverse
from django.utils import timezone

from loopsite.models import AuditEvent
from loopsite.work import WorkItem
from loopsite.roles import APPROVER, ENGINEER, REVIEWER, has_role

if TYPE_CHECKING:
    from .backtest import BackTestState


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
        return Cycle.progress_of([self.pk])[self.pk]

    @staticmethod
    def progress_of(cycle_ids) -> dict[int, dict[str, int]]:
        """`progress()` of many cycles in one query (the cycles list), by cycle id."""
        cycle_ids = list(cycle_ids)
        feedback = Feedback.objects.filter(cycle_id=OuterRef("cycle_id"), run_id=OuterRef("run_id"))
        rows = (
            Cycle.runs.through.objects.filter(cycle_id__in=cycle_ids)
            .annotate(
                is_reviewed=Exists(feedback.filter(is_merged=False, status__in=Feedback.REVIEWED_STATUSES)),
                is_approved=Exists(feedback.filter(is_merged=True, status=Feedback.Status.APPROVED)),
            )
            .values("cycle_id")
            .annotate(total=Count("pk"), reviewed=Count("pk", filter=Q(is_reviewed=True)),
                      approved=Count("pk", filter=Q(is_approved=True)))
        )
        counts = {cycle_id: {"total": 0, "reviewed": 0, "approved": 0} for cycle_id in cycle_ids}
        for row in rows:
            counts[row["cycle_id"]] = {key: row[key] for key in ("total", "reviewed", "approved")}
        return counts

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
            "verdict": self.verdict,  # pass / mixed / fail: whether the answer shows the failure to catch
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
        from .calibration import calibrate_when_approved  # the judge's calibration gains labels, on commit

        calibrate_when_approved(user=by)
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
    def merge_key(self) -> tuple[str, str]:
        """Two reviewers' items are the same one when this is: same kind, same words (case and a final full
        stop ignored). The approver's merged form and the approval's agreement count both go by it."""
        return self.kind, " ".join(self.text.lower().split()).rstrip(".")

    @property
    def has_citation(self) -> bool:
        return bool(self.citation_span_id or self.citation_artifact)

    @property
    def citation_url(self) -> str:
        from .trace import citation_url

        return citation_url(self.feedback.run, span_id=self.citation_span_id, artifact=self.citation_artifact,
                            line=self.citation_line)

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


class GenerationJob(WorkItem):
    """One step of the insights -> evals chain for a cycle; task state (loopsite.work.WorkItem) lives here."""

    WORK_KIND = "generation"
    LOST_HINT = "Use Retry to run it again."
    REQUEUE_ACTION = "generation.retry"
    TEXT_CAPS = {"raw_output": 200_000}

    class Kind(models.TextChoices):
        INSIGHTS = "insights", "LLM insights"
        EVALS = "evals", "Eval generation"

    cycle = models.ForeignKey(Cycle, on_delete=models.CASCADE, related_name="generation_jobs")
    kind = models.CharField(max_length=12, choices=Kind.choices)
    raw_output = models.TextField(blank=True, help_text="The model's last raw output, kept when it fails validation.")
    model_name = models.CharField(max_length=120, blank=True)
    endpoint = models.CharField(max_length=300, blank=True)
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["status", "heartbeat_at"], name="genjob_status_heartbeat_idx")]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} for cycle {self.cycle_id} ({self.status})"

    @classmethod
    def enqueue_work(cls, pk: int) -> None:
        from .generation import enqueue

        job = cls.objects.filter(pk=pk).first()
        if job is not None:
            enqueue(job)

    def claim_resets(self) -> dict[str, Any]:
        return {"raw_output": ""}

    @classmethod
    def after_given_up(cls, pk: int) -> None:
        from .generation import _settle_cycle

        cycle_id = cls.objects.filter(pk=pk).values_list("cycle_id", flat=True).first()
        if cycle_id is not None:
            _settle_cycle(cycle_id)

    def finish(self, attempt: int | None = None, *, error: str = "", raw_output: str = "", **fields) -> bool:
        """Running -> succeeded, or failed with `error` (keeping the model's raw output). False if no longer ours."""
        return super().finish(attempt, error=error, raw_output=raw_output if error else "", **fields)

    def requeue_summary(self) -> str:
        return f"Retry of the {self.get_kind_display().lower()} step for cycle {self.cycle_id}"


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


class ApprovalReasonRequired(EvalCaseStateError):
    """Approving this case needs a written reason: its back-test speaks against it."""

    def __init__(self, concern: str):
        super().__init__(f"{concern} Approving it anyway needs a written reason.")
        self.concern = concern


def _hash_json(value: Any) -> str:
    import hashlib
    import json

    return hashlib.sha256(json.dumps(value, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


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
    approval_concern = models.CharField(
        max_length=300, blank=True, help_text="What its back-test said against it when it was approved anyway.")
    approval_reason = models.TextField(blank=True, help_text="The approver's written reason for approving it anyway.")
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
            "approval_concern": self.approval_concern, "approval_reason": self.approval_reason,
        }

    # What a back-test depends on: a change to any of these makes the last back-test stale.
    CHECK_FIELDS = ("scoring_method", "rubric", "deterministic_assertions", "pass_example", "fail_example")

    def checks_hash(self) -> str:
        return _hash_json({name: getattr(self, name) for name in self.CHECK_FIELDS})

    def rubric_hash(self) -> str:
        return _hash_json(self.rubric.strip()) if self.rubric.strip() else ""

    def latest_backtest(self) -> "BackTestRun | None":
        return self.backtest_runs.order_by("-created_at", "-pk").first()

    def backtest_state(self) -> "BackTestState":
        """What the back-tests say about the present version of the case (reviews/backtest.py)."""
        from .backtest import backtest_state

        return backtest_state(self)

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
            changed = locked._apply(content, by=by, action="edit", note="", summary=lambda fields: (
                f"Edited {', '.join(fields)} of eval {locked.eval_id} (cycle {locked.cycle_id})"))
            if not changed:
                self._refresh_from(locked)
                return False
            if set(changed) & set(self.CHECK_FIELDS):
                from .backtest import request_backtest  # the edited checks are back-tested again

                request_backtest(case=locked, purpose=BackTestRun.Purpose.EDITED, user=by)
        self._refresh_from(locked)
        return True

    def revise(self, *, content: dict[str, Any], note: str, edits_seen: int | None = None) -> bool:
        """The generator's change to a proposal (a repair after its back-test, or keeping the better version):
        a revision without a user, audited. False if nothing changed, the case is no longer proposed, or
        someone edited it since `edits_seen` (a person's edit is never overwritten by the generator)."""
        with transaction.atomic():
            locked = self._locked()
            if locked.status != self.Status.PROPOSED:
                return False
            if edits_seen is not None and locked.revisions.count() != edits_seen:
                return False
            changed = locked._apply(content, by=None, action="revise", note=note[:200], summary=lambda fields: (
                f"{note[:200]}: changed {', '.join(fields)} of eval {locked.eval_id}"))
        self._refresh_from(locked)
        return bool(changed)

    def _apply(self, content: dict[str, Any], *, by, action: str, note: str, summary) -> list[str]:
        """On a locked row: set the editable fields `content` changes, keep a revision and audit it (by a person,
        or by the generator when `by` is None). Returns the changed field names (none: nothing was written)."""
        before = self.content()
        after = {**before, **{name: content[name] for name in self.EDITABLE_FIELDS if name in content}}
        changed = [name for name in self.EDITABLE_FIELDS if after[name] != before[name]]
        if not changed:
            return []
        snapshot_before = self.snapshot()
        for name in changed:
            setattr(self, name, after[name])
        self.save(update_fields=[*changed, "updated_at"])
        EvalCaseRevision.objects.create(case=self, edited_by=by, before=before, after=after, note=note)
        self._record(by=by, action=action, before=snapshot_before, summary=summary(changed))
        return changed

    def _transition(self, *, by, action: str, allowed: tuple[str, ...], status: str, **changes) -> None:
        _require_approver(by)
        with transaction.atomic():
            locked = self._locked()
            if locked.status not in allowed:
                done = {"approve": "approved", "reject": "rejected", "retire": "retired", "restore": "restored"}[action]
                raise EvalCaseStateError(f"The case is {locked.get_status_display().lower()}: it cannot be {done}.")
            if action == "approve" and (problems := locked.problems()):
                raise EvalCaseStateError("Fix this case before approving it: " + "; ".join(problems) + ".")
            if action == "approve":
                concern = locked.backtest_state().concern
                reason = (changes.pop("approval_reason", "") or "").strip()
                if concern and not reason:
                    raise ApprovalReasonRequired(concern)
                changes.update(approval_concern=concern[:300] if concern else "", approval_reason=reason if concern else "")
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

    def approve(self, *, by, reason: str = "") -> None:
        """Into the regression suite. A case its back-test speaks against (does not catch its source failure,
        fails its pass example, stale or failed back-test) needs a written `reason`, kept and audited."""
        self._transition(by=by, action="approve", allowed=(self.Status.PROPOSED,), status=self.Status.APPROVED,
                         approved_by=by, approved_at=timezone.now(), reject_reason="", approval_reason=reason)

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
    note = models.CharField(max_length=200, blank=True, help_text="Who or what changed it, when not a person's edit.")
    at = models.DateTimeField(auto_now_add=True)
    before = models.JSONField()
    after = models.JSONField()

    class Meta:
        ordering = ["case", "-at", "-id"]

    def __str__(self) -> str:
        return f"Edit of {self.case_id} at {self.at:%Y-%m-%d %H:%M}"


# --- Back-tests ----------------------------------------------------------------------------------------


class BackTestRun(WorkItem):
    """One back-test of one eval case (reviews/backtest.py): its task state, the version of the case it
    ran on, and the verdict. Its rows are BackTest, one per target answer."""

    WORK_KIND = "backtest"
    LOST_HINT = "Re-run the back-test from the case page."
    REQUEUE_ACTION = "backtest.retry"

    class Purpose(models.TextChoices):
        GENERATED = "generated", "After generation"
        EDITED = "edited", "After an edit"
        RERUN = "rerun", "Re-run on request"
        REPAIR = "repair", "Repair by the generator"

    case = models.ForeignKey(EvalCase, on_delete=models.CASCADE, related_name="backtest_runs")
    purpose = models.CharField(max_length=12, choices=Purpose.choices, default=Purpose.GENERATED)
    case_hash = models.CharField(max_length=64, help_text="EvalCase.checks_hash() of the version it ran on.")
    rubric_hash = models.CharField(max_length=64, blank=True)
    revision = models.PositiveIntegerField(default=0, help_text="How many edits the case had when it ran.")
    catches = models.BooleanField(
        null=True, blank=True,
        help_text="Built from fail/mixed feedback: fails its source answer and fail example and passes its pass "
                  "example. None: not applicable, or not decidable (errors).")
    pass_example_ok = models.BooleanField(null=True, blank=True, help_text="Passes its own pass example.")
    expects_failure = models.BooleanField(default=False, help_text="Its source feedback's verdict is fail or mixed.")
    met = models.PositiveSmallIntegerField(default=0, help_text="Source, fail and pass example rows that met their expectation.")
    judge_model = models.CharField(max_length=120, blank=True)
    endpoint = models.CharField(max_length=300, blank=True)
    log_tail = models.TextField(blank=True)
    repair = models.JSONField(
        default=dict, blank=True,
        help_text="A repair: the original content, the generator's version, the back-test it is compared with "
                  "and which version was kept.")
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                     related_name="+")

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["case", "-created_at"], name="backtestrun_case_created_idx"),
            models.Index(fields=["status", "heartbeat_at"], name="backtestrun_status_beat_idx"),
        ]

    def __str__(self) -> str:
        return f"Back-test {self.pk} of case {self.case_id} ({self.status})"

    @classmethod
    def enqueue_work(cls, pk: int) -> None:
        from .tasks import backtest_task

        backtest_task.delay_on_commit(pk)

    def on_claimed(self, attempt: int) -> None:
        BackTest.objects.filter(backtest_run_id=self.pk).delete()

    def requeue_summary(self) -> str:
        return f"Retry of back-test {self.pk} of eval case {self.case_id}"

    @property
    def is_current(self) -> bool:
        """Ran on the case's present checks (the case has not changed since)."""
        return self.case_hash == self.case.checks_hash()


class BackTest(models.Model):
    """One case on one answer, as the gate would judge it: through promptfoo, stored answer, same checks."""

    class Target(models.TextChoices):
        SOURCE_RUN = "source_run", "Source answer"
        FAIL_EXAMPLE = "fail_example", "Fail example"
        PASS_EXAMPLE = "pass_example", "Pass example"
        OTHER_RUN = "other_run", "Other reviewed run"

    class Expected(models.TextChoices):
        FAIL = "fail", "Fail"
        PASS = "pass", "Pass"
        NONE = "", "Informational"

    backtest_run = models.ForeignKey(BackTestRun, on_delete=models.CASCADE, related_name="rows")
    case = models.ForeignKey(EvalCase, on_delete=models.CASCADE, related_name="backtests")
    target = models.CharField(max_length=16, choices=Target.choices)
    run = models.ForeignKey("runs.Run", null=True, blank=True, on_delete=models.SET_NULL, related_name="backtests")
    position = models.PositiveIntegerField(default=0)
    answer_hash = models.CharField(max_length=64)
    answer_excerpt = models.TextField(blank=True)
    expected = models.CharField(max_length=4, choices=Expected.choices, blank=True)
    expected_because = models.CharField(max_length=200, blank=True)
    passed = models.BooleanField(null=True, blank=True, help_text="None: no verdict (error).")
    score = models.FloatField(null=True, blank=True)
    reason = models.TextField(blank=True)
    assertions = models.JSONField(default=list, blank=True, help_text="promptfoo's per-assertion results.")
    error = models.TextField(blank=True)
    case_hash = models.CharField(max_length=64)
    rubric_hash = models.CharField(max_length=64, blank=True)
    revision = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["backtest_run", "position", "id"]
        constraints = [
            models.UniqueConstraint(fields=["backtest_run", "position"], name="backtest_run_position_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.get_target_display()} of case {self.case_id}: {self.outcome}"

    @property
    def outcome(self) -> str:
        if self.error or self.passed is None:
            return "error"
        return "pass" if self.passed else "fail"

    @property
    def meets_expectation(self) -> bool | None:
        """True/False against `expected`; None when informational or without a verdict."""
        if not self.expected or self.outcome == "error":
            return None
        return self.outcome == self.expected


# --- Gate ----------------------------------------------------------------------------------------------


class GateRun(WorkItem):
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
    WORK_KIND = "gate"
    LOST_HINT = "Re-run the gate to try again."
    REQUEUE_FROM = (Status.SUCCEEDED, Status.FAILED)
    REQUEUE_ACTION = "gate.rerun"

    cycle = models.ForeignKey(Cycle, null=True, blank=True, on_delete=models.CASCADE, related_name="gate_runs")
    harness = models.ForeignKey("runs.Harness", on_delete=models.PROTECT, related_name="gate_runs",
                                help_text="The version whose answers are judged.")
    baseline = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="candidates",
                                 help_text="For a candidate: the gate run it is compared against.")
    kind = models.CharField(max_length=12, choices=Kind.choices, default=Kind.BASELINE)
    # The shared task state (loopsite.work.WorkItem), plus `waiting` for a candidate's runs.
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
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
    judge_rubric_hash = models.CharField(max_length=64, blank=True,
                                         help_text="The rubric version (reviews.calibration.rubric_version) the judge ran under.")
    judge_calibration = models.JSONField(default=dict, blank=True,
                                         help_text="The judge's calibration when the gate ran: labels, kappa, tpr, tnr, calibrated.")
    repeats = models.PositiveSmallIntegerField(default=1, help_text="How often each case ran (GATE_REPEATS).")
    flaky = models.PositiveIntegerField(default=0, help_text="Cases whose repeats disagreed (counted as failed).")
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")

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
    def pass_rate(self) -> float | None:
        return self.passed / self.total if self.total else None

    def summary(self) -> dict[str, Any]:
        """The seed's gate summary (promptfoo_summary without rows), for HALO and the audit log."""
        return {"backend": "promptfoo", "total": self.total, "passed": self.passed, "failed": self.failed,
                "errors": self.errors}

    def summary_rows(self) -> list[dict[str, Any]]:
        """The seed's promptfoo_summary rows: what HALO's context reads for each gate row."""
        return [row.as_seed_dict() for row in self.rows.select_related("run", "eval_case")]

    # --- task state (loopsite.work.WorkItem): what is particular to a gate run ----------------------

    @classmethod
    def enqueue_work(cls, pk: int) -> None:
        from .gate import enqueue

        gate_run = cls.objects.filter(pk=pk).first()
        if gate_run is not None:
            enqueue(gate_run)

    @classmethod
    def sweep_more(cls, now) -> dict[str, int]:
        from .gate import sweep_waiting

        return sweep_waiting(now=now)

    def requeue_before(self) -> dict[str, Any]:
        return {**super().requeue_before(), **self.summary()}

    def requeue_changes(self, *, by) -> dict[str, Any]:
        return {"requested_by": by}

    def requeue_summary(self) -> str:
        return f"Re-run of gate run {self.pk} on {self.harness.version}"


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
    repeats = models.PositiveSmallIntegerField(default=1, help_text="How often the case ran in this gate run.")
    passes = models.PositiveSmallIntegerField(default=0, help_text="How many of its repeats passed.")
    flaky = models.BooleanField(default=False, help_text="Its repeats disagreed: never a pass (pass^N).")
    repeat_results = models.JSONField(default=list, blank=True,
                                      help_text="Each repeat's outcome: repeat, passed, score, reason, error.")

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

    @property
    def judge_decided(self) -> bool:
        """Whether the rubric judge decided this row: it has an llm-rubric assertion and no deterministic
        assertion failed (a failed literal check fails the case whatever the judge says). A row decided by
        deterministic assertions alone needs no judge calibration."""
        if self.error:
            return False
        kinds = [(item.get("type"), item.get("pass")) for item in self.assertions or [] if isinstance(item, dict)]
        if not any(kind == "llm-rubric" for kind, _ in kinds):
            return False
        return not any(kind != "llm-rubric" and passed is False for kind, passed in kinds)

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


# --- Judge calibration (reviews/calibration.py) ---------------------------------------------------------


class JudgeCalibration(WorkItem):
    """One refresh of the judge's calibration: the judge grades every human-labelled criterion of the
    reviewed runs (reviews.calibration.human_labels) through promptfoo; task state (loopsite.work.WorkItem)
    lives here. The labels it writes replace those of the same judge (model, endpoint, rubric version)."""

    WORK_KIND = "calibration"
    LOST_HINT = "Refresh the calibration to try again."
    REQUEUE_ACTION = "calibration.retry"

    judge_model = models.CharField(max_length=120, blank=True)
    endpoint = models.CharField(max_length=300, blank=True)
    rubric_version = models.CharField(max_length=64, blank=True)
    total = models.PositiveIntegerField(default=0, help_text="Criteria to grade.")
    done = models.PositiveIntegerField(default=0, help_text="Criteria graded so far.")
    summary = models.JSONField(default=dict, blank=True, help_text="The agreement when it finished.")
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                     related_name="+")

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["status", "heartbeat_at"], name="judgecal_status_heartbeat_idx")]
        constraints = [
            models.UniqueConstraint(fields=["judge_model", "endpoint", "rubric_version"],
                                    condition=Q(status="queued"), name="judgecal_one_queued_per_judge"),
        ]

    def __str__(self) -> str:
        return f"Judge calibration {self.pk} ({self.status})"

    @classmethod
    def enqueue_work(cls, pk: int) -> None:
        from .calibration import enqueue

        calibration = cls.objects.filter(pk=pk).first()
        if calibration is not None:
            enqueue(calibration)

    def claim_resets(self) -> dict[str, Any]:
        return {"done": 0}

    def progress(self, *, done: int, total: int | None = None, attempt: int | None = None) -> bool:
        """Record progress (and beat). False once the row stopped being ours."""
        changes: dict[str, Any] = {"done": done, "heartbeat_at": timezone.now()}
        if total is not None:
            changes["total"] = total
        return bool(self._owned(attempt).update(**changes))

    def requeue_summary(self) -> str:
        return f"Retry of judge calibration {self.pk}"


class JudgeLabel(models.Model):
    """One criterion on one reviewed run's answer: the human label (from approved feedback) beside the
    judge's label (llm-rubric through promptfoo, as the gate calls it). See reviews.calibration."""

    class Kind(models.TextChoices):
        VERDICT = "verdict", "Verdict"
        OBSERVATION = "observation", "Required observation"
        CLAIM = "claim", "Prohibited claim"

    calibration = models.ForeignKey(JudgeCalibration, null=True, blank=True, on_delete=models.SET_NULL,
                                    related_name="labels")
    run = models.ForeignKey("runs.Run", on_delete=models.CASCADE, related_name="judge_labels")
    feedback = models.ForeignKey(Feedback, null=True, blank=True, on_delete=models.SET_NULL, related_name="judge_labels")
    eval_case = models.ForeignKey(EvalCase, null=True, blank=True, on_delete=models.SET_NULL, related_name="judge_labels",
                                  help_text="For a verdict criterion: the case whose rubric was graded.")
    kind = models.CharField(max_length=12, choices=Kind.choices)
    criterion = models.TextField(help_text="The rubric text the judge was given.")
    criterion_hash = models.CharField(max_length=64, db_index=True)
    human_pass = models.BooleanField(help_text="The human label: does the answer meet the criterion?")
    judge_pass = models.BooleanField(null=True, blank=True, help_text="The judge's label; empty when it did not answer.")
    score = models.FloatField(null=True, blank=True)
    reason = models.TextField(blank=True)
    error = models.TextField(blank=True)
    judge_model = models.CharField(max_length=120)
    endpoint = models.CharField(max_length=300, blank=True)
    rubric_version = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["run", "kind", "id"]
        indexes = [models.Index(fields=["judge_model", "endpoint", "rubric_version"], name="judgelabel_judge_idx")]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} on run {self.run_id}: human {self.human_pass}, judge {self.judge_pass}"

    @property
    def agrees(self) -> bool | None:
        return None if self.judge_pass is None else self.judge_pass == self.human_pass


# --- Optimization (HALO) -------------------------------------------------------------------------------


class Optimization(WorkItem):
    """One HALO run over a cycle's optimization context, and the handoff it wrote; task state lives here.

    reviews/optimization.py does the work: the context (runs' spans + synthetic spans for the harness,
    feedback, insights, evals and the gate) is built when the task runs, HALO runs in its own process,
    and every event it reports is appended as an OptimizationEvent for the live page.
    """

    WORK_KIND = "halo"
    LOST_HINT = "Re-run HALO to try again."

    cycle = models.ForeignKey(Cycle, on_delete=models.CASCADE, related_name="optimizations")
    gate_run = models.ForeignKey(GateRun, null=True, blank=True, on_delete=models.SET_NULL, related_name="optimizations",
                                 help_text="The gate run whose rows and summary went into the context.")
    options = models.JSONField(default=dict, blank=True,
                               help_text="maximum_depth, maximum_turns, maximum_parallel_subagents, model, endpoint.")
    context_stats = models.JSONField(default=list, blank=True, help_text="The HALO input summary rows of the context.")
    report = models.TextField(blank=True, help_text="HALO's report, as written.")
    handoff = models.TextField(blank=True, help_text="The cleaned handoff (from ## Executive summary on).")
    missing_sections = models.JSONField(default=list, blank=True,
                                        help_text="Required sections still missing or out of order after the re-prompt.")
    retried = models.BooleanField(default=False, help_text="HALO was re-prompted once for missing sections.")
    evidence_checks = models.JSONField(
        default=dict, blank=True,
        help_text="The handoff's citations resolved against the cycle's data, and its \"does not state\" claims "
                  "checked against the harness (reviews.halo.check_evidence).")
    model_name = models.CharField(max_length=120, blank=True)
    endpoint = models.CharField(max_length=300, blank=True)
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")

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

    @classmethod
    def enqueue_work(cls, pk: int) -> None:
        from .optimization import enqueue

        optimization = cls.objects.filter(pk=pk).first()
        if optimization is not None:
            enqueue(optimization)

    def on_claimed(self, attempt: int) -> None:
        self.events.all().delete()  # an earlier attempt's events: this attempt starts the log afresh


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
