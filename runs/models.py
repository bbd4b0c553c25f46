import re
import json
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import models, transaction
from django.db.models import F, Q
from django.urls import reverse
from django.utils import timezone

from loopsite.models import AuditEvent
from loopsite.work import WorkItem
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


# The version of an external agent's traces that name none.
UNVERSIONED = "unversioned"


class Agent(models.Model):
    """A named agent that Loopsite improves: the built-in diligence analyst, or an external agent
    whose traces come in through /v1/traces or an upload, authenticated by its ingest token.

    The token is shown once when created or rotated; only its SHA-256 (tokens are 32 random bytes,
    so a fast hash is enough) and a short prefix (to recognise it in lists) are stored.
    """

    class Kind(models.TextChoices):
        BUILTIN = "builtin", "Built-in"
        EXTERNAL = "external", "External"

    BUILTIN_NAME = "Diligence analyst"
    BUILTIN_SLUG = "diligence-analyst"
    TOKEN_PREFIX = "lsk_"

    name = models.CharField(max_length=120, unique=True)
    slug = models.SlugField(max_length=60, unique=True)
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.EXTERNAL)
    version_attribute = models.CharField(
        max_length=200, default="service.version",
        help_text="The resource or span attribute whose value names the agent's version in its traces.")
    token_hash = models.CharField(max_length=64, blank=True, db_index=True)
    token_prefix = models.CharField(max_length=16, blank=True, help_text="The token's first characters, to recognise it.")
    token_created_at = models.DateTimeField(null=True, blank=True)
    token_revoked_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    # The agent's HTTP endpoint, which Loopsite calls to evaluate a candidate version (one call per suite case).
    endpoint_url = models.URLField(max_length=500, blank=True, help_text="http(s) URL Loopsite POSTs each case's input to.")
    endpoint_body = models.TextField(blank=True, help_text="JSON body template; {{input}} stands for the case's input.")
    endpoint_response_path = models.CharField(max_length=200, blank=True,
                                              help_text="Dotted path of the answer in the JSON response, e.g. output.")
    endpoint_header_name = models.CharField(max_length=100, blank=True)
    endpoint_header_value = models.CharField(max_length=2000, blank=True, help_text="Stored; never shown back in full.")
    # The agent's webhook: Loopsite POSTs a signed event here when a handoff is written and when a version is
    # promoted or refused (runs/webhooks.py). The secret signs them, so it is kept as is; it is shown once.
    webhook_url = models.URLField(max_length=500, blank=True, help_text="http(s) URL Loopsite POSTs events to.")
    webhook_secret = models.CharField(max_length=100, blank=True, help_text="Signs each event; shown once.")

    INPUT_PLACEHOLDER = "{{input}}"
    WEBHOOK_SECRET_PREFIX = "whsec_"
    # Credentials the admin's audit snapshots leave out (loopsite.admin.admin_snapshot).
    SECRET_FIELDS = ("endpoint_header_value", "webhook_secret")

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["kind"], condition=Q(kind="builtin"), name="agent_one_builtin"),
        ]

    def __str__(self) -> str:
        return self.name

    def get_absolute_url(self) -> str:
        return reverse("runs:agent-detail", args=[self.slug])

    @property
    def is_builtin(self) -> bool:
        return self.kind == self.Kind.BUILTIN

    @property
    def has_active_token(self) -> bool:
        return bool(self.token_hash) and self.token_revoked_at is None

    @classmethod
    def builtin(cls) -> "Agent":
        """The built-in diligence analyst (made by a migration; made again after a test flush)."""
        agent, _ = cls.objects.get_or_create(
            kind=cls.Kind.BUILTIN, defaults={"name": cls.BUILTIN_NAME, "slug": cls.BUILTIN_SLUG})
        return agent

    @staticmethod
    def hash_token(token: str) -> str:
        import hashlib

        return hashlib.sha256(token.encode("utf-8")).hexdigest()

    @classmethod
    def for_token(cls, token: str) -> "Agent | None":
        """The external agent whose active token this is, or None."""
        if not token or not token.startswith(cls.TOKEN_PREFIX) or len(token) > 200:
            return None
        return cls.objects.filter(token_hash=cls.hash_token(token), token_revoked_at__isnull=True,
                                  kind=cls.Kind.EXTERNAL).first()

    @classmethod
    def for_authorization(cls, header: str | None) -> "Agent | None":
        """The external agent whose active token an `Authorization: Bearer <token>` header carries, or None
        (the OTLP endpoint and the read-only API ask the same way)."""
        scheme, _, token = (header or "").partition(" ")
        return cls.for_token(token.strip()) if scheme.lower() == "bearer" else None

    @classmethod
    def create_external(cls, *, by, name: str, version_attribute: str = "service.version") -> tuple["Agent", str]:
        """A new external agent (engineers only) and its ingest token, returned once and stored hashed."""
        require_role(by, ENGINEER)
        with transaction.atomic():
            slug = cls.free_slug(name)
            agent = cls(name=name, slug=slug, kind=cls.Kind.EXTERNAL,
                        version_attribute=version_attribute or "service.version", created_by=by)
            token = agent._new_token()
            agent.save()
            AuditEvent.record(actor=by, action="agent.create", obj=agent, summary=f"Created external agent {name}",
                              after={"name": name, "slug": slug, "version_attribute": agent.version_attribute,
                                     "token_prefix": agent.token_prefix})
        return agent, token

    @classmethod
    def free_slug(cls, name: str) -> str:
        """A slug for `name` that no agent has yet: `bot`, else `bot-2`, `bot-3`, …"""
        from django.utils.text import slugify

        base = slugify(name)[:50] or "agent"
        slug, n = base, 1
        while cls.objects.filter(slug=slug).exists():
            n += 1
            slug = f"{base}-{n}"
        return slug

    def _new_token(self) -> str:
        import secrets

        from django.utils import timezone

        token = self.TOKEN_PREFIX + secrets.token_urlsafe(32)
        self.token_hash = self.hash_token(token)
        self.token_prefix = token[:10]
        self.token_created_at = timezone.now()
        self.token_revoked_at = None
        return token

    def rotate_token(self, *, by) -> str:
        """A new token replaces the old one at once (engineers only); returned once."""
        require_role(by, ENGINEER)
        if self.is_builtin:
            raise ValueError("The built-in agent takes no traces from outside.")
        with transaction.atomic():
            locked = Agent.objects.select_for_update().get(pk=self.pk)
            before = {"token_prefix": locked.token_prefix}
            token = locked._new_token()
            locked.save(update_fields=["token_hash", "token_prefix", "token_created_at", "token_revoked_at"])
            AuditEvent.record(actor=by, action="agent.rotate_token", obj=locked,
                              summary=f"Rotated the ingest token of {locked.name}", before=before,
                              after={"token_prefix": locked.token_prefix})
        self.token_hash, self.token_prefix = locked.token_hash, locked.token_prefix
        self.token_created_at, self.token_revoked_at = locked.token_created_at, locked.token_revoked_at
        return token

    def revoke_token(self, *, by) -> None:
        """The token stops working at once (engineers only)."""
        from django.utils import timezone

        require_role(by, ENGINEER)
        with transaction.atomic():
            locked = Agent.objects.select_for_update().get(pk=self.pk)
            if not locked.has_active_token:
                return
            locked.token_revoked_at = timezone.now()
            locked.save(update_fields=["token_revoked_at"])
            AuditEvent.record(actor=by, action="agent.revoke_token", obj=locked,
                              summary=f"Revoked the ingest token of {locked.name}",
                              before={"token_prefix": locked.token_prefix, "revoked": False}, after={"revoked": True})
        self.token_revoked_at = locked.token_revoked_at

    @property
    def has_endpoint(self) -> bool:
        return bool(self.endpoint_url) and not self.is_builtin

    @property
    def endpoint_header_hint(self) -> str:
        """The extra header as the pages show it: its name and at most the value's first 4 characters."""
        if not self.endpoint_header_name:
            return ""
        value = self.endpoint_header_value
        return f"{self.endpoint_header_name}: {value[:4]}…" if len(value) > 8 else f"{self.endpoint_header_name}: …"

    def _endpoint_state(self) -> dict:
        return {"url": self.endpoint_url, "body": self.endpoint_body, "response_path": self.endpoint_response_path,
                "header": self.endpoint_header_hint}

    def set_endpoint(self, *, by, url: str, body: str, response_path: str, header_name: str = "",
                     header_value: str | None = None) -> None:
        """Register (or with url "" remove) the HTTP endpoint Loopsite calls to evaluate a candidate version
        (engineers only, audited; the header's value only as a hint). header_value None keeps the stored value."""
        require_role(by, ENGINEER)
        if self.is_builtin:
            raise ValueError("The built-in agent runs inside Loopsite: it has no endpoint.")
        with transaction.atomic():
            locked = Agent.objects.select_for_update().get(pk=self.pk)
            before = locked._endpoint_state()
            locked.endpoint_url, locked.endpoint_body = url, body if url else ""
            locked.endpoint_response_path = response_path if url else ""
            locked.endpoint_header_name = header_name if url else ""
            if not url or not header_name:
                locked.endpoint_header_value = ""
            elif header_value is not None:
                locked.endpoint_header_value = header_value
            locked.save(update_fields=["endpoint_url", "endpoint_body", "endpoint_response_path",
                                       "endpoint_header_name", "endpoint_header_value"])
            AuditEvent.record(actor=by, action="agent.endpoint", obj=locked,
                              summary=(f"Set the HTTP endpoint of {locked.name} to {url}" if url
                                       else f"Removed the HTTP endpoint of {locked.name}"),
                              before=before, after=locked._endpoint_state())
        for name in ("endpoint_url", "endpoint_body", "endpoint_response_path", "endpoint_header_name",
                     "endpoint_header_value"):
            setattr(self, name, getattr(locked, name))

    @property
    def webhook_secret_hint(self) -> str:
        return f"{self.webhook_secret[:10]}…" if self.webhook_secret else ""

    def set_webhook(self, *, by, url: str, new_secret: bool = False) -> str:
        """Set (or with url "" remove) the webhook (engineers only, audited without the secret). Returns the
        signing secret when a new one was made (the first time, or with `new_secret`), to be shown once; else ""."""
        import secrets

        require_role(by, ENGINEER)
        if self.is_builtin:
            raise ValueError("The built-in agent has no webhook: its handoffs and versions are on its pages.")
        with transaction.atomic():
            locked = Agent.objects.select_for_update().get(pk=self.pk)
            before = {"url": locked.webhook_url, "secret": locked.webhook_secret_hint}
            made = self.WEBHOOK_SECRET_PREFIX + secrets.token_urlsafe(32) if url and (
                new_secret or not locked.webhook_secret) else ""
            locked.webhook_url = url
            locked.webhook_secret = (made or locked.webhook_secret) if url else ""
            locked.save(update_fields=["webhook_url", "webhook_secret"])
            AuditEvent.record(actor=by, action="agent.webhook", obj=locked,
                              summary=(f"Set the webhook of {locked.name} to {url}" + (" with a new secret" if made else "")
                                       if url else f"Removed the webhook of {locked.name}"),
                              before=before, after={"url": url, "secret": locked.webhook_secret_hint})
        self.webhook_url, self.webhook_secret = locked.webhook_url, locked.webhook_secret
        return made

    def harness_for_version(self, raw_version: str) -> "Harness":
        """The Harness row of one version seen in this agent's traces, created (imported, empty prompt)
        the first time it is seen. Its `version` label, the key of the harness pages, is globally unique."""
        from django.db import IntegrityError
        from django.utils.text import slugify

        raw_version = (raw_version or UNVERSIONED).strip()[:100] or UNVERSIONED
        found = Harness.objects.filter(agent=self, agent_version=raw_version).first()
        if found is not None:
            return found
        base = f"{self.slug}-{slugify(raw_version) or 'v'}"[:36]
        label, n = base, 1
        while Harness.objects.filter(version=label).exists():
            n += 1
            label = f"{base}-{n}"
        try:
            with transaction.atomic():
                return Harness.objects.create(
                    agent=self, agent_version=raw_version, version=label, system_prompt="",
                    origin=Harness.Origin.IMPORTED, eval_metadata={"version": raw_version, "imported": True},
                )
        except IntegrityError:  # another request created it meanwhile
            return Harness.objects.get(agent=self, agent_version=raw_version)


class Harness(models.Model):
    """One version of the agent's harness: prompt, model settings, tool policy.

    A version is immutable once it has runs (`FROZEN_FIELDS`, enforced in `save()`); to change
    it, create a child (`create_child`). Exactly one version at a time is promoted (`promote`).
    """

    class Status(models.TextChoices):
        DRAFT = "draft", "Draft"
        PROMOTED = "promoted", "Promoted"
        RETIRED = "retired", "Retired"

    class Origin(models.TextChoices):
        BUILT = "built", "Configured here"
        IMPORTED = "imported", "Seen in imported traces"

    agent = models.ForeignKey(Agent, on_delete=models.PROTECT, related_name="harnesses")
    version = models.CharField(max_length=40, unique=True, help_text="A label such as v001 (the key of its pages).")
    agent_version = models.CharField(
        max_length=100, blank=True, help_text="The version as the agent's traces name it (imported versions).")
    origin = models.CharField(max_length=16, choices=Origin.choices, default=Origin.BUILT)
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
            models.UniqueConstraint(fields=["agent", "status"], condition=Q(status="promoted"),
                                    name="harness_one_promoted"),
            models.UniqueConstraint(fields=["agent", "agent_version"], condition=~Q(agent_version=""),
                                    name="harness_agent_version_unique"),
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
        if self.agent_id is None:
            self.agent = Agent.builtin()
        self._refuse_frozen_change(kwargs.get("update_fields"))
        super().save(*args, **kwargs)

    @property
    def is_imported(self) -> bool:
        return self.origin == self.Origin.IMPORTED

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
                agent_id=self.agent_id, version=version, system_prompt=system_prompt, tool_policy=tool_policy, model_settings=model_settings,
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
        `override_reason` is given; the reason is kept in the audit log, as is a refusal. The agent's
        webhook hears of either outcome (runs/webhooks.py).
        """
        from . import webhooks
        from .promotion import PromotionRefused, check_promotion

        require_role(by, APPROVER)
        override_reason = (override_reason or "").strip()
        refused = None
        with transaction.atomic():
            locked = Harness.objects.select_for_update().get(pk=self.pk)
            if locked.status == self.Status.PROMOTED:
                raise PromotionRefused(f"Harness {locked.version} is already the promoted version.")
            try:
                check_promotion(candidate=locked, comparison=comparison, override_reason=override_reason)
            except PromotionRefused as exc:
                refused = exc
            else:
                locked._replace_promoted(by=by, comparison=comparison, override_reason=override_reason)
        if refused is not None:
            AuditEvent.record(
                actor=by, action="harness.promotion_refused", obj=locked, summary=str(refused),
                after={"reason": str(refused), "blocking": [row.case_id for row in refused.blocking],
                       "comparison": comparison.summary() if comparison is not None else None},
            )
            webhooks.version_refused(harness=locked, refused=refused, comparison=comparison, by=by)
            raise refused
        self.status, self.eval_metadata = locked.status, locked.eval_metadata

    def _replace_promoted(self, *, by, comparison, override_reason: str) -> None:
        """Inside promote()'s transaction, on the locked row: retire the promoted version, promote this one."""
        from . import webhooks

        previous = list(Harness.objects.select_for_update().filter(
            agent_id=self.agent_id, status=self.Status.PROMOTED).exclude(pk=self.pk))
        for old in previous:
            old.save(update_fields=old._set_status(self.Status.RETIRED))
            AuditEvent.record(
                actor=by, action="harness.retire", obj=old,
                summary=f"Retired harness {old.version}: {self.version} was promoted",
                before={"status": self.Status.PROMOTED.value},
                after={"status": self.Status.RETIRED.value, "replaced_by": self.version},
            )
        before = {"status": self.status, "previous_promoted": [old.version for old in previous]}
        self.save(update_fields=self._set_status(self.Status.PROMOTED))
        summary = f"Promoted harness {self.version}" + (f", retiring {previous[0].version}" if previous else "")
        if override_reason:
            summary += f" (override: {override_reason})"
        AuditEvent.record(
            actor=by, action="harness.promote", obj=self, summary=summary, before=before,
            after={
                "status": self.Status.PROMOTED.value,
                "retired": [old.version for old in previous],
                "comparison": comparison.summary() if comparison is not None else None,
                "override_reason": override_reason or None,
            },
        )
        webhooks.version_promoted(harness=self, retired=previous, comparison=comparison,
                                  override_reason=override_reason, by=by)


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
    imported = models.BooleanField(
        default=False, help_text="The input of an imported run, not part of the built-in agent's question bank.")
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


class Run(WorkItem):
    """One agent run: harness version + dataroom + question. Task state (status, attempts, heartbeat)
    comes from loopsite.work.WorkItem."""

    WORK_KIND = "run"
    LOST_HINT = "Start the question again in a new batch."

    class Source(models.TextChoices):
        BUILTIN = "builtin", "Run here"
        IMPORTED = "imported", "Imported trace"

    agent = models.ForeignKey(Agent, on_delete=models.PROTECT, related_name="runs")
    harness = models.ForeignKey(Harness, on_delete=models.PROTECT, related_name="runs")
    dataroom = models.ForeignKey(Dataroom, null=True, blank=True, on_delete=models.PROTECT, related_name="runs",
                                 help_text="Empty for imported runs.")
    question = models.ForeignKey(Question, on_delete=models.PROTECT, related_name="runs",
                                 help_text="The run's input (an imported run's first user message or root input).")
    source = models.CharField(max_length=16, choices=Source.choices, default=Source.BUILTIN)
    batch = models.ForeignKey(Batch, null=True, blank=True, on_delete=models.SET_NULL, related_name="runs")
    label = models.CharField(max_length=40, blank=True, help_text="Human-readable trace label, e.g. trace-01.")
    trace_id = models.CharField(max_length=64, help_text="32 hex characters, as in the exported spans.")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")

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
    waiting_for_model = models.BooleanField(
        default=False, help_text="Running, and a model call waits for a slot of the endpoint or a Retry-After.")
    evidence_coverage = models.JSONField(null=True, blank=True, help_text="check_evidence_coverage.py result.")
    output_contract = models.JSONField(null=True, blank=True, help_text="validate_output_contract.py result.")

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["status", "heartbeat_at"], name="run_status_heartbeat_idx"),
            models.Index(fields=["harness", "status"], name="run_harness_status_idx"),
            models.Index(fields=["agent", "-created_at"], name="run_agent_created_idx"),
        ]
        constraints = [
            models.UniqueConstraint(fields=["agent", "trace_id"], name="run_agent_trace_unique"),
        ]

    def __str__(self) -> str:
        return f"Run {self.pk} {self.label or ''} ({self.harness.version})".replace("  ", " ")

    def get_absolute_url(self) -> str:
        return reverse("runs:detail", args=[self.pk])

    def save(self, *args, **kwargs) -> None:
        if self.agent_id is None and self.harness_id is not None:
            self.agent_id = self.harness.agent_id
        super().save(*args, **kwargs)

    @property
    def is_imported(self) -> bool:
        return self.source == self.Source.IMPORTED

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

    @classmethod
    def enqueue_work(cls, pk: int) -> None:
        from .tasks import execute_run

        execute_run.delay_on_commit(pk)

    def claim_resets(self) -> dict:
        return {"waiting_for_model": False}

    def mark_waiting_for_model(self, *, waiting: bool, attempt: int | None = None) -> bool:
        """While running `attempt`: whether a model call waits (for the endpoint's limits or a Retry-After)."""
        return bool(self._owned(attempt).update(waiting_for_model=waiting))

    @property
    def status_label(self) -> str:
        """The status as pages say it: a running run whose model call waits for a slot says so."""
        if self.status == self.Status.RUNNING and self.waiting_for_model:
            return "Waiting for the model"
        return self.get_status_display()


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


class HarnessDraft(WorkItem):
    """"Draft from handoff" as a task (runs/handoffs.py): what the draft starts from (the editor's prompt
    and policy when the engineer asked, and the handoff), its progress, and the proposal or the reason
    it failed. Nothing here changes a harness: the editor shows the proposal, the engineer saves it."""

    WORK_KIND = "harness-draft"
    LOST_HINT = "Click “Draft from handoff” again."
    REQUEUE_ACTION = "harness.draft.retry"
    TEXT_CAPS = {"raw_output": 200_000}

    base = models.ForeignKey(Harness, on_delete=models.CASCADE, related_name="drafts",
                             help_text="The version the editor edits (the parent of a new version, or the draft edited).")
    version = models.CharField(max_length=40, help_text="The label the editor held: the version being drafted.")
    input_prompt = models.TextField(help_text="The editor's system prompt when the draft was asked for.")
    input_policy = models.JSONField(default=dict, help_text="The editor's tool policy when the draft was asked for.")
    handoff = models.TextField()
    progress = models.CharField(max_length=300, blank=True)
    proposed_prompt = models.TextField(blank=True)
    proposed_policy = models.JSONField(null=True, blank=True)
    rationale = models.TextField(blank=True)
    model_name = models.CharField(max_length=120, blank=True)
    endpoint = models.CharField(max_length=300, blank=True)
    used_standin = models.BooleanField(default=False)
    raw_output = models.TextField(blank=True, help_text="The model's raw output when it was not usable.")
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                     related_name="+")

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["status", "heartbeat_at"], name="harnessdraft_status_beat_idx")]

    def __str__(self) -> str:
        return f"Draft {self.pk} from {self.base.version} ({self.status})"

    def get_absolute_url(self) -> str:
        return reverse("runs:harness-draft", args=[self.base.version, self.pk])

    @classmethod
    def enqueue_work(cls, pk: int) -> None:
        from .tasks import draft_harness

        draft_harness.delay_on_commit(pk)

    @classmethod
    def max_attempts(cls) -> int:
        return 2

    def claim_resets(self) -> dict[str, Any]:
        return {"raw_output": "", "progress": "Started: reading the handoff."}

    def report(self, progress: str, *, attempt: int | None = None) -> bool:
        """While running `attempt`: what it is doing now (shown in the editor); also a heartbeat."""
        return bool(self._owned(attempt).update(progress=progress[:300], heartbeat_at=timezone.now()))

    def provenance(self) -> dict[str, Any]:
        """Where the proposal came from, as the editor's `drafted` field and the audit log keep it."""
        return {"model": self.model_name, "endpoint": self.endpoint, "used_standin": self.used_standin,
                "rationale": self.rationale, "draft": self.pk}

    def started_from(self, *, system_prompt: str, tool_policy: Any) -> bool:
        """Does the editor still hold what this draft started from (so filling it in loses nothing)?"""
        return system_prompt == self.input_prompt and tool_policy == self.input_policy


class WebhookDelivery(WorkItem):
    """One event for an agent's webhook (runs/webhooks.py), as a task: what it says and how its tries went.

    Each try is one claim (so `attempts` counts the POSTs); a connection error, a 5xx or a 429 puts the row
    back in the queue for another try after a backoff, up to WEBHOOK_MAX_ATTEMPTS tries."""

    class Event(models.TextChoices):
        HANDOFF_WRITTEN = "handoff.written", "Handoff written"
        VERSION_PROMOTED = "version.promoted", "Version promoted"
        VERSION_REFUSED = "version.refused", "Promotion refused"

    WORK_KIND = "webhook"
    LOST_HINT = "The event was not delivered."

    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="deliveries")
    event = models.CharField(max_length=32, choices=Event.choices)
    data = models.JSONField(default=dict, help_text="The event's details: the payload's `data`.")
    url = models.URLField(max_length=500, help_text="Where the last try went (the agent's webhook URL then).")
    response_code = models.PositiveSmallIntegerField(null=True, blank=True, help_text="The last try's HTTP status.")

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "webhook deliveries"
        indexes = [
            models.Index(fields=["status", "heartbeat_at"], name="delivery_status_beat_idx"),
            models.Index(fields=["agent", "-created_at"], name="delivery_agent_created_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.event} for {self.agent} ({self.status})"

    @classmethod
    def enqueue_work(cls, pk: int, *, countdown: float | None = None) -> None:
        from .tasks import deliver_webhook

        deliver_webhook.apply_async_on_commit((pk,), countdown=countdown)

    @classmethod
    def max_attempts(cls) -> int:
        return settings.WEBHOOK_MAX_ATTEMPTS

    def payload(self) -> dict[str, Any]:
        return {"id": self.pk, "event": self.event, "created_at": self.created_at.isoformat(),
                "agent": {"slug": self.agent.slug, "name": self.agent.name}, "data": self.data}

    def body(self) -> bytes:
        """The JSON POSTed, the same bytes on every try."""
        return json.dumps(self.payload(), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")

    def try_again(self, *, attempt: int, error: str, retry_in: float, **fields) -> bool:
        """Running `attempt` -> queued for the next try in `retry_in` seconds, then sent with that countdown.
        The heartbeat is set to when the try is due, so the sweep counts a lost message from then, not from
        now (it would otherwise resend a long backoff early). False if the row is no longer ours."""
        due = timezone.now() + timedelta(seconds=retry_in)
        if not self._owned(attempt).update(status=self.Status.QUEUED, heartbeat_at=due, last_error=error[-2000:],
                                           **fields):
            return False
        self.enqueue_work(self.pk, countdown=retry_in)
        return True
