"""Forms of the harness pages: the version editor, promotion, and choosing two versions to diff."""

import json
import re
from typing import Any

from django import forms
from django.conf import settings

from .models import Harness

VERSION_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,39}$")
# Path segments of the harness URLs that a version label must not take.
RESERVED_LABELS = frozenset({"diff", "new", "cycle", "edit", "promote"})
REASONING_EFFORTS = ("minimal", "low", "medium", "high", "xhigh")


class HarnessVersionForm(forms.Form):
    """A harness version's config as an engineer edits it: a new child, or a draft without runs."""

    version = forms.CharField(
        max_length=40, label="Version label",
        help_text="Letters, digits, dot, dash or underscore; unique. Runs are filed under it.",
    )
    note = forms.CharField(
        max_length=300, required=False, label="Change note",
        help_text="One line on what changed and why (kept in eval_metadata.description).",
    )
    system_prompt = forms.CharField(widget=forms.Textarea(attrs={"rows": 22, "spellcheck": "false"}))
    tool_policy = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 16, "spellcheck": "false"}), label="Tool policy (JSON object)",
    )
    agent_model = forms.CharField(max_length=120, required=False, label="Agent model")
    reasoning_effort = forms.ChoiceField(required=False, label="Reasoning effort")
    handoff_markdown = forms.CharField(
        required=False, label="Handoff", widget=forms.Textarea(attrs={"rows": 18, "spellcheck": "false"}),
        help_text="The HALO handoff to work from. Not saved with the version; used by “Draft from handoff”.",
    )
    # Where the editor's content came from when "Draft from handoff" filled it (for the audit log).
    drafted = forms.CharField(required=False, widget=forms.HiddenInput)
    # The queued "Draft from handoff" (a HarnessDraft) whose proposal the editor waits for.
    draft_job = forms.IntegerField(required=False, min_value=1, max_value=2**31 - 1, widget=forms.HiddenInput)

    def __init__(self, *args, base: Harness, editing: Harness | None = None, **kwargs):
        """`base`: the harness whose model settings the new ones start from (the parent, or the draft edited)."""
        super().__init__(*args, **kwargs)
        self.base, self.editing = base, editing
        effort = (base.model_settings or {}).get("reasoning_effort") or ""
        efforts = list(REASONING_EFFORTS) + ([effort] if effort and effort not in REASONING_EFFORTS else [])
        self.fields["reasoning_effort"].choices = [("", "(model default)")] + [(e, e) for e in efforts]
        self.fields["agent_model"].help_text = f"Empty: the default agent model ({settings.OPENAI_AGENT_MODEL})."
        if editing is not None:
            self.fields["version"].disabled = True
            self.fields["version"].initial = editing.version

    @classmethod
    def initial_for(cls, harness: Harness, *, version: str, handoff: str | None = None) -> dict[str, Any]:
        model_settings = harness.model_settings or {}
        return {
            "version": version,
            "system_prompt": harness.system_prompt,
            "tool_policy": json.dumps(harness.tool_policy or {}, indent=2, ensure_ascii=False),
            "agent_model": model_settings.get("agent_model") or "",
            "reasoning_effort": model_settings.get("reasoning_effort") or "",
            "handoff_markdown": handoff or "",
        }

    def clean_version(self) -> str:
        version = self.cleaned_data["version"].strip()
        if self.editing is not None:
            return self.editing.version
        if not VERSION_PATTERN.match(version):
            raise forms.ValidationError(
                "Use 1 to 40 letters, digits, dots, dashes or underscores, starting with a letter or digit."
            )
        if version.lower() in RESERVED_LABELS:
            raise forms.ValidationError(f"“{version}” is reserved by the harness pages; pick another label.")
        if Harness.objects.filter(version=version).exists():
            raise forms.ValidationError(f"Version {version} already exists; labels are unique.")
        return version

    def clean_system_prompt(self) -> str:
        # Browsers submit textareas with CRLF; store the prompt with the newlines it was written with.
        return self.cleaned_data["system_prompt"].replace("\r\n", "\n").replace("\r", "\n")

    def clean_tool_policy(self) -> dict[str, Any]:
        text = self.cleaned_data["tool_policy"]
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise forms.ValidationError(
                f"Not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}."
            ) from exc
        except ValueError as exc:  # e.g. a number with more digits than Python converts
            raise forms.ValidationError(f"Not valid JSON: {exc}.") from exc
        if not isinstance(value, dict):
            raise forms.ValidationError(f"The tool policy must be a JSON object ({{...}}), not a {type(value).__name__}.")
        return value

    def clean_drafted(self) -> dict[str, Any] | None:
        try:
            value = json.loads(self.cleaned_data.get("drafted") or "null")
        except ValueError:  # JSONDecodeError, or a number too long to convert
            return None
        return value if isinstance(value, dict) else None

    def model_settings(self) -> dict[str, Any]:
        """The base's model settings with the two edited keys set (or removed when left empty)."""
        result = dict(self.base.model_settings or {})
        for key in ("agent_model", "reasoning_effort"):
            value = (self.cleaned_data.get(key) or "").strip()
            if value:
                result[key] = value
            else:
                result.pop(key, None)
        return result

    def candidate(self, *, default_version: str) -> Harness | None:
        """An unsaved Harness with the edited config, for the diff; None while the prompt or policy is invalid."""
        data = getattr(self, "cleaned_data", {})
        if "system_prompt" not in data or "tool_policy" not in data:
            return None
        return Harness(
            version=data.get("version") or default_version, system_prompt=data["system_prompt"],
            tool_policy=data["tool_policy"], model_settings=self.model_settings(),
        )


class PromoteForm(forms.Form):
    override_reason = forms.CharField(
        required=False, max_length=2000, widget=forms.Textarea(attrs={"rows": 3}), label="Override reason",
        help_text="Needed to promote despite a regression, a case not verified, a judge not calibrated, or without "
                  "a gate comparison; kept in the audit log.",
    )


class HarnessPairForm(forms.Form):
    """Two versions to compare: ?a=v001&b=v002."""

    a = forms.ModelChoiceField(queryset=Harness.objects.only("id", "version"), to_field_name="version", label="From",
                               error_messages={"invalid_choice": "There is no harness version with that label."})
    b = forms.ModelChoiceField(queryset=Harness.objects.only("id", "version"), to_field_name="version", label="To",
                               error_messages={"invalid_choice": "There is no harness version with that label."})

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for name in ("a", "b"):
            self.fields[name].label_from_instance = lambda h: h.version
