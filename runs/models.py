import re
import json
from typing import Any

from django.conf import settings
from django.db import models, transaction
from django.db.models import F, Q
from django.urls import reverse
from django.utils import timezone

from loopsite.models import AuditEvent
from loopsite.work import TrackedWork
from loopsite.roles import APPROVER, ENGINEER, require_role

class DocumentJSONField(models.TextField):
    """A JSON document stored as text, so its key order survives on every database.

    PostgreSQL's jsonb sorts object keys; a harness's tool policy is rendered into the
    agent's instructions in its own order, so it must come back exactly as written.
    """

    def from_db_value(self, value, expression, connection):
        return None if value is None else json.loads(value)

    def to_python(self, value):
        return json.loads(value) if isinstance(value, str) else value

    def get_prep_value(self, value):
        return None if value is None else json.dumps(value, ensure_ascii=False)

    def value_to_string(self, obj):
        return self.get_prep_value(self.value_from_object(obj))

    def formfield(self, **kwargs):
        from django import forms

        return super(models.TextField, self).formfield(**{"form_class": forms.JSONField, **kwargs})


REQUIRED_ARTIFACTS = [
    "summary_answer.md",
    "investment_memo.md",
    "risk_register.json",
    "open_questions.md",
    "citations.json",
    "evidence_table.csv",
]


class HarnessFrozenError(Exception):
    """A harness version with runs cannot change what its agent was given: create a child instead."""

    def __init__(self, harness: "Harness", fields: list[str]):
        self.harness, self.fields = harness, fields
        super().__init__(
            f"Harness {harness.version} already has runs, so its {', '.join(f.replace('_', ' ') for f in fields)} "
            f"cannot change. Create a new version from {harness.version} instead."
        )


class HarnessStateError(Exception):
    """The harness version is not in a state that allows this change."""


class Harness(models.Model):
    """One version of the agent's harness: prompt, model settings, tool policy.

    A version is immutable once it has runs (`FROZEN_FIELDS`, enforced in `save()`); to change
    it, create a child (`create_child`). Exactly one version at a time is promoted (`promote`).
    """

    class Status(models.TextChoices):
        DRAFT = "draft", "Draft"
        PROMOTED = "promoted", "Promoted"
        RETIRED = "retired", "Retired"

    version = models.CharField(max_length=40, unique=True, help_text="A label such as v001.")
    system_prompt = models.TextField()
    model_settings = DocumentJSONField(default=dict, blank=True)
    tool_policy = DocumentJSONField(default=dict, blank=True)
    eval_metadata = DocumentJSONField(default=dict, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.DRAFT, db_index=True)
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.PROTECT, related_name="children")
    author = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "harnesses"
        constraints = [
            models.UniqueConstraint(fields=["status"], condition=Q(status="promoted"), name="harness_one_promoted"),
        ]

    def __str__(self) -> str:
        return self.version

    def get_absolute_url(self) -> str:
        return reverse("runs:harness-detail", args=[self.version])

    @property
    def required_artifacts(self) -> list[str]:
        return list(self.tool_policy.get("required_artifacts") or REQUIRED_ARTIFACTS)

    @property
    def agent_model(self) -> str:
        return self.model_settings.get("agent_model") or settings.OPENAI_AGENT_MODEL

    def build_instructions(self) -> str:
        """The agent's instructions, assembled as the seed's `build_instructions` does."""
        return "\n\n".join([
            self.system_prompt,
            format_policy_section("Tool policy", self.tool_policy),
            f"Runtime config:\n- Config version: `{self.version}`.\n"
            "- Treat this config as the promoted runtime contract.\n"
            "- Do not modify the runtime config during the run.",
        ]) + "\n"

    def as_config(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "system_prompt": self.system_prompt,
            "model_settings": self.model_settings,
            "tool_policy": self.tool_policy,
            "eval_metadata": self.eval_metadata,
        }

    # --- versions: immutability, children, promotion ---------------------------------------

    # What the agent is given (and the label its runs are filed under): fixed once a run exists.
    FROZEN_FIELDS = ("version", "system_prompt", "model_settings", "tool_policy")

    def save(self, *args, **kwargs) -> None:
        self._refuse_frozen_change(kwargs.get("update_fields"))
        super().save(*args, **kwargs)

    def _refuse_frozen_change(self, update_fields) -> None:
        if self._state.adding or self.pk is None:
            return
        fields = [name for name in self.FROZEN_FIELDS if update_fields is None or name in update_fields]
        if not fields:
            return
        stored = Harness.objects.filter(pk=self.pk).values(*fields).first()
        if stored is None:
            return
        changed = [name for name in fields if stored[name] != getattr(self, name)]
        if changed and Run.objects.filter(harness_id=self.pk).exists():
            raise HarnessFrozenError(self, changed)

    @property
    def has_runs(self) -> bool:
        return Run.objects.filter(harness_id=self.pk).exists()

    def next_version_label(self) -> str:
        """The next free label after this one: v001 -> v002 (digits keep their width), base -> base-2."""
        match = re.match(r"^(.*?)(\d+)$", self.version)
        if match:
            prefix, number, width = match.group(1), int(match.group(2)), len(match.group(2))
        else:
            prefix, number, width = f"{self.version}-", 1, 1
        taken = set(Harness.objects.filter(version__startswith=prefix).values_list("version", flat=True))
        while True:
            number += 1
            label = f"{prefix}{number:0{width}d}"
            if label not in taken:
                return label

    def create_child(self, *, by, version: str, system_prompt: str, tool_policy: dict[str, Any],
                     model_settings: dict[str, Any], note: str = "", drafted: dict[str, Any] | None = None) -> "Harness":
        """A new draft version derived from this one (engineers only), audited with its whole config."""
        require_role(by, ENGINEER)
        eval_metadata = {
            **(self.eval_metadata or {}),
            "version": version,
            "status": self.Status.DRAFT.value,
            "created_by": by.get_username(),
            "parent_version": self.version,
        }
        if note:
            eval_metadata["description"] = note
        with transaction.atomic():
            child = Harness.objects.create(
                version=version, system_prompt=system_prompt, tool_policy=tool_policy, model_settings=model_settings,
                eval_metadata=eval_metadata, status=self.Status.DRAFT, parent=self, author=by,
            )
            AuditEvent.record(
                actor=by, action="harness.create", obj=child,
                summary=f"Created harness {version} from {self.version}" + (" (drafted from a handoff)" if drafted else ""),
                after={**child.as_config(), "parent": self.version, "drafted_with": drafted or None},
            )
        return child

    def edit_config(self, *, by, system_prompt: str, tool_policy: dict[str, Any], model_settings: dict[str, Any]) -> list[str]:
        """Change a draft that has no runs yet (engineers only). Returns the changed field names."""
        require_role(by, ENGINEER)
        wanted = {"system_prompt": system_prompt, "tool_policy": tool_policy, "model_settings": model_settings}
        with transaction.atomic():
            locked = Harness.objects.select_for_update().get(pk=self.pk)
            if locked.status != self.Status.DRAFT:
                raise HarnessStateError(
                    f"Harness {locked.version} is {locked.get_status_display().lower()}: only a draft can be edited. "
                    f"Create a new version from it instead."
                )
            changed = [name for name, value in wanted.items() if getattr(locked, name) != value]
            if changed and locked.has_runs:
                raise HarnessFrozenError(locked, changed)
            if not changed:
                return []
            before = locked.as_config()
            for name in changed:
                setattr(locked, name, wanted[name])
            locked.save(update_fields=changed)
            AuditEvent.record(
                actor=by, action="harness.edit", obj=locked,
                summary=f"Edited {', '.join(changed)} of draft harness {locked.version}",
                before={name: before[name] for name in changed}, after={name: wanted[name] for name in changed},
            )
        for name in changed:
            setattr(self, name, wanted[name])
        return changed

    def _set_status(self, status: str) -> list[str]:
        self.status = status
        if isinstance(self.eval_metadata, dict) and "status" in self.eval_metadata:
            self.eval_metadata = {**self.eval_metadata, "status": str(status)}
            return ["status", "eval_metadata"]
        return ["status"]

    def promote(self, *, by, comparison=None, override_reason: str = "") -> None:
        """Make this the promoted version (approvers only) and retire the one it replaces.

        Refused (`promotion.PromotionRefused`) while `comparison` (a `promotion.Comparison` of
        this candidate against the baseline) reports a case that passes on the baseline and
        fails, or was not run, on the candidate, or when there is no comparison at all, unless
        `override_reason` is given; the reason is kept in the audit log.
        """
        from .promotion import PromotionRefused, check_promotion

        require_role(by, APPROVER)
        override_reason = (override_reason or "").strip()
        with transaction.atomic():
            locked = Harness.objects.select_for_update().get(pk=self.pk)
            if locked.status == self.Status.PROMOTED:
                raise PromotionRefused(f"Harness {locked.version} is already the promoted version.")
            check_promotion(candidate=locked, comparison=comparison, override_reason=override_reason)
            previous = list(Harness.objects.select_for_update().filter(status=self.Status.PROMOTED).exclude(pk=locked.pk))
            for old in previous:
                old.save(update_fields=old._set_status(self.Status.RETIRED))
                AuditEvent.record(
                    actor=by, action="harness.retire", obj=old,
                    summary=f"Retired harness {old.version}: {locked.version} was promoted",
                    before={"status": self.Status.PROMOTED.value},
                    after={"status": self.Status.RETIRED.value, "replaced_by": locked.version},
                )
            before = {"status": locked.status, "previous_promoted": [old.version for old in previous]}
            locked.save(update_fields=locked._set_status(self.Status.PROMOTED))
            summary = f"Promoted harness {locked.version}" + (f", retiring {previous[0].version}" if previous else "")
            if override_reason:
                summary += f" (override: {override_reason})"
            AuditEvent.record(
                actor=by, action="harness.promote", obj=locked, summary=summary, before=before,
                after={
                    "status": self.Status.PROMOTED.value,
                    "retired": [old.version for old in previous],
                    "comparison": comparison.summary() if comparison is not None else None,
                    "override_reason": override_reason or None,
                },
            )
        self.status, self.eval_metadata = locked.status, locked.eval_metadata


def format_policy_section(title: str, policy: dict[str, Any]) -> str:
    lines = [f"{title}:"]
    for key, value in policy.items():
        lines.extend(_format_policy_value(key, value))
    return "\n".join(lines)


def _format_policy_value(key: str, value: Any, indent: int = 0) -> list[str]:
    prefix = "  " * indent
    if isinstance(value, dict):
        lines = [f"{prefix}- {key}:"]
        for child_key, child_value in value.items():
            lines.extend(_format_policy_value(child_key, child_value, indent + 1))
        return lines
    if isinstance(value, list):
        lines = [f"{prefix}- {key}:"]
        for item in value:
            if isinstance(item, dict):
                lines.append(f"{prefix}  -")
                for child_key, child_value in item.items():
                    lines.extend(_format_policy_value(child_key, child_value, indent + 2))
            else:
                lines.append(f"{prefix}  - {item}")
        return lines
    return [f"{prefix}- {key}: {value}"]


class Dataroom(models.Model):
    """A set of files the agent reads. File contents live in the database."""

    name = models.CharField(max_length=120, unique=True)
    description = models.TextField(blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    file_count = models.PositiveIntegerField(default=0)
    total_bytes = models.PositiveBigIntegerField(default=0)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def get_absolute_url(self) -> str:
        return reverse("runs:dataroom-detail", args=[self.pk])


class DataroomFile(models.Model):
    dataroom = models.ForeignKey(Dataroom, on_delete=models.CASCADE, related_name="files")
    path = models.CharField(max_length=500, help_text="Relative path inside the dataroom, with forward slashes.")
    content = models.BinaryField()
    size = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["path"]
        constraints = [models.UniqueConstraint(fields=["dataroom", "path"], name="dataroom_file_path_unique")]

    def __str__(self) -> str:
        return self.path

    def text(self) -> str:
        return bytes(self.content).decode("utf-8", errors="replace")


class Question(models.Model):
    text = models.TextField(unique=True)
    bank_index = models.PositiveIntegerField(null=True, blank=True, help_text="Position in the question bank.")
    is_default = models.BooleanField(default=False, help_text="Preselected when starting a batch.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = [F("bank_index").asc(nulls_last=True), "id"]

    def __str__(self) -> str:
        return self.text


class Batch(models.Model):
    """Runs started together: one harness, one dataroom, several questions."""

    harness = models.ForeignKey(Harness, on_delete=models.PROTECT, related_name="batches")
    dataroom = models.ForeignKey(Dataroom, on_delete=models.PROTECT, related_name="batches")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "batches"

    def __str__(self) -> str:
        return f"Batch {self.pk} ({self.harness.version})"


class Run(TrackedWork, models.Model):
    """One agent run: harness version + dataroom + question."""

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"

    ACTIVE_STATUSES = (Status.QUEUED, Status.RUNNING)

    harness = models.ForeignKey(Harness, on_delete=models.PROTECT, related_name="runs")
    dataroom = models.ForeignKey(Dataroom, on_delete=models.PROTECT, related_name="runs")
    question = models.ForeignKey(Question, on_delete=models.PROTECT, related_name="runs")
    batch = models.ForeignKey(Batch, null=True, blank=True, on_delete=models.SET_NULL, related_name="runs")
    label = models.CharField(max_length=40, blank=True, help_text="Human-readable trace label, e.g. trace-01.")
    trace_id = models.CharField(max_length=32, unique=True, help_text="32 hex characters, as in the exported spans.")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")

    # Task state lives here; the broker is transport only.
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    attempts = models.PositiveSmallIntegerField(default=0)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    # What the run produced.
    final_answer = models.TextField(blank=True)
    model_name = models.CharField(max_length=120, blank=True)
    endpoint = models.CharField(max_length=300, blank=True)
    used_standin = models.BooleanField(default=False)
    input_tokens = models.PositiveIntegerField(default=0)
    output_tokens = models.PositiveIntegerField(default=0)
    total_tokens = models.PositiveIntegerField(default=0)
    model_calls = models.PositiveIntegerField(default=0)
    tool_calls = models.PositiveIntegerField(default=0)
    agent_seconds = models.FloatField(null=True, blank=True, help_text="Wall time of the agent itself.")
    evidence_coverage = models.JSONField(null=True, blank=True, help_text="check_evidence_coverage.py result.")
    output_contract = models.JSONField(null=True, blank=True, help_text="validate_output_contract.py result.")

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["status", "heartbeat_at"], name="run_status_heartbeat_idx"),
            models.Index(fields=["harness", "status"], name="run_harness_status_idx"),
        ]

    def __str__(self) -> str:
        return f"Run {self.pk} {self.label or ''} ({self.harness.version})".replace("  ", " ")

    def get_absolute_url(self) -> str:
        return reverse("runs:detail", args=[self.pk])

    @property
    def evidence_passed(self) -> bool | None:
        return None if self.evidence_coverage is None else bool(self.evidence_coverage.get("passed"))

    @property
    def contract_passed(self) -> bool | None:
        return None if self.output_contract is None else bool(self.output_contract.get("passed"))

    @staticmethod
    def new_trace_id() -> str:
        import uuid

        return uuid.uuid4().hex

    def claim(self) -> bool:
        """Take a queued run for this worker. False if someone else has it or it is done."""
        now = timezone.now()
        claimed = Run.objects.filter(pk=self.pk, status=Run.Status.QUEUED).update(
            status=Run.Status.RUNNING, attempts=F("attempts") + 1, started_at=now, heartbeat_at=now,
            finished_at=None, last_error="",
        )
        if claimed:
            self.refresh_from_db()
        return bool(claimed)

    def beat(self) -> None:
        Run.objects.filter(pk=self.pk, status=Run.Status.RUNNING).update(heartbeat_at=timezone.now())

    def fail(self, error: str) -> None:
        self.status = Run.Status.FAILED
        self.last_error = error[-8000:]
        self.finished_at = timezone.now()
        self.save(update_fields=["status", "last_error", "finished_at"])


HALO_LINE_KEYS = (
    "trace_id", "span_id", "parent_span_id", "trace_state", "name", "kind", "start_time", "end_time",
    "status", "resource", "scope", "attributes",
)


class Span(models.Model):
    """One span of a run's trace, stored as the HALO JSONL line it was exported as."""

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="spans")
    position = models.PositiveIntegerField(help_text="Order in the exported JSONL file.")
    span_id = models.CharField(max_length=64)
    parent_span_id = models.CharField(max_length=64, blank=True)
    name = models.CharField(max_length=300)
    observation_kind = models.CharField(max_length=40, blank=True)
    start_time = models.DateTimeField(null=True, blank=True)
    end_time = models.DateTimeField(null=True, blank=True)
    is_error = models.BooleanField(default=False)
    data = models.JSONField(help_text="The whole HALO JSONL line.")

    class Meta:
        ordering = ["run", "position"]
        constraints = [
            models.UniqueConstraint(fields=["run", "position"], name="span_run_position_unique"),
        ]
        indexes = [models.Index(fields=["run", "span_id"], name="span_run_span_id_idx")]

    def __str__(self) -> str:
        return self.name

    @property
    def duration_ms(self) -> float | None:
        if self.start_time and self.end_time:
            return (self.end_time - self.start_time).total_seconds() * 1000
        return None

    @property
    def attributes(self) -> dict[str, Any]:
        return self.data.get("attributes") or {}

    @staticmethod
    def jsonl_line(data: dict[str, Any]) -> str:
        """One line of the trace file, top-level keys in HALO's order whatever the database kept."""
        ordered = {key: data[key] for key in HALO_LINE_KEYS if key in data}
        ordered.update((key, value) for key, value in data.items() if key not in ordered)
        return json.dumps(ordered, separators=(",", ":"), ensure_ascii=False)


class Artifact(models.Model):
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="artifacts")
    name = models.CharField(max_length=200)
    content = models.TextField()
    size = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["run", "name"]
        constraints = [models.UniqueConstraint(fields=["run", "name"], name="artifact_run_name_unique")]

    def __str__(self) -> str:
        return self.name

    @property
    def kind(self) -> str:
        return self.name.rsplit(".", 1)[-1].lower() if "." in self.name else "txt"
