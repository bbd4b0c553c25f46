import json
import re

from django import forms
from django.conf import settings
from django.template.defaultfilters import filesizeformat

from loopsite import outbound
from loopsite.forms import BoundedIntegerField, BoundedModelMultipleChoiceField

from .models import Agent, Dataroom, Harness, Question, Run


class RunFilterForm(forms.Form):
    """The GET filters of the runs list. Invalid values are ignored, not fatal."""

    agent = forms.ModelChoiceField(
        queryset=Agent.objects.only("id", "name", "slug"), to_field_name="slug", required=False, empty_label="Any agent"
    )
    harness = forms.ModelChoiceField(
        queryset=Harness.objects.only("id", "version"), to_field_name="version", required=False, empty_label="Any harness"
    )
    dataroom = forms.ModelChoiceField(
        queryset=Dataroom.objects.only("id", "name"), required=False, empty_label="Any dataroom"
    )
    status = forms.ChoiceField(choices=[("", "Any status"), *Run.Status.choices], required=False)
    batch = BoundedIntegerField(required=False, min_value=1, label="Batch", widget=forms.HiddenInput)

    def filter(self, queryset):
        """Apply the fields that validated; an unbound form filters nothing."""
        if not self.is_bound:
            return queryset
        self.is_valid()
        data = self.cleaned_data
        if data.get("agent"):
            queryset = queryset.filter(agent=data["agent"])
        if data.get("harness"):
            queryset = queryset.filter(harness=data["harness"])
        if data.get("dataroom"):
            queryset = queryset.filter(dataroom=data["dataroom"])
        if data.get("status"):
            queryset = queryset.filter(status=data["status"])
        if data.get("batch"):
            queryset = queryset.filter(batch_id=data["batch"])
        return queryset


class StartRunsForm(forms.Form):
    harness = forms.ModelChoiceField(queryset=Harness.objects.all(), empty_label=None)
    dataroom = forms.ModelChoiceField(queryset=Dataroom.objects.all(), empty_label=None)
    questions = BoundedModelMultipleChoiceField(
        queryset=Question.objects.filter(imported=False),
        widget=forms.CheckboxSelectMultiple,
        error_messages={"required": "Pick at least one question."},
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Versions seen in an external agent's traces have no prompt to run here.
        harness_qs = Harness.objects.exclude(status=Harness.Status.RETIRED).exclude(origin=Harness.Origin.IMPORTED)
        self.fields["harness"].queryset = harness_qs
        self.fields["harness"].label_from_instance = lambda h: f"{h.version} ({h.get_status_display().lower()})"
        self.fields["dataroom"].label_from_instance = lambda d: f"{d.name} ({d.file_count} files)"
        if not self.is_bound:
            promoted = harness_qs.filter(status=Harness.Status.PROMOTED).first()
            self.initial.setdefault("harness", promoted or harness_qs.first())
            self.initial.setdefault("dataroom", Dataroom.objects.first())
            self.initial.setdefault("questions", list(Question.objects.filter(is_default=True)))


class DataroomUploadForm(forms.Form):
    name = forms.CharField(max_length=120, help_text="A short unique name, e.g. acme-2025-q4.")
    description = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2}))
    zip_file = forms.FileField(
        label="Zip file",
        help_text="A .zip of the dataroom's files. A single top-level folder is removed; __MACOSX and .DS_Store are skipped.",
        widget=forms.ClearableFileInput(attrs={"accept": ".zip,application/zip"}),
    )

    def clean_name(self):
        name = self.cleaned_data["name"].strip()
        if not name:
            raise forms.ValidationError("Give the dataroom a name.")
        if Dataroom.objects.filter(name=name).exists():
            raise forms.ValidationError(f"A dataroom named “{name}” already exists.")
        return name

    def clean_zip_file(self):
        upload = self.cleaned_data["zip_file"]
        limit = settings.DATAROOM_MAX_ZIP_BYTES
        if upload.size > limit:
            raise forms.ValidationError(
                f"{upload.name}: the zip is {filesizeformat(upload.size)}; the limit is {filesizeformat(limit)}."
            )
        return upload


class QuestionForm(forms.ModelForm):
    class Meta:
        model = Question
        fields = ["text", "is_default"]
        widgets = {"text": forms.Textarea(attrs={"rows": 2, "placeholder": "What should the analyst answer?"})}
        labels = {"text": "Question", "is_default": "Preselect when starting runs"}
        error_messages = {"text": {"unique": "That question is already in the bank."}}

    def clean_text(self):
        text = " ".join(self.cleaned_data["text"].split())
        if len(text) < 10:
            raise forms.ValidationError("Write the question out in full (at least 10 characters).")
        if Question.objects.filter(text=text).exists():
            raise forms.ValidationError("That question is already in the bank.")
        return text


class AgentForm(forms.Form):
    name = forms.CharField(max_length=120, help_text="What your team calls the agent, e.g. Support bot.")
    version_attribute = forms.CharField(
        max_length=200, initial="service.version", label="Version attribute",
        help_text="The resource or span attribute that names the agent's version in its traces.")

    def clean_name(self):
        name = " ".join(self.cleaned_data["name"].split())
        if not name:
            raise forms.ValidationError("Give the agent a name.")
        if Agent.objects.filter(name__iexact=name).exists():
            raise forms.ValidationError(f"An agent named “{name}” already exists.")
        return name

    def clean_version_attribute(self):
        return self.cleaned_data["version_attribute"].strip() or "service.version"


class TraceUploadForm(forms.Form):
    file = forms.FileField(
        label="Trace file (.jsonl)",
        help_text="One span per line in HALO's schema (a run's own trace download) or an Agents SDK span export, "
                  "or one OTLP JSON ExportTraceServiceRequest per line.",
        widget=forms.ClearableFileInput(attrs={"accept": ".jsonl,.json,.ndjson,application/x-ndjson,application/json"}),
    )

    def clean_file(self):
        upload = self.cleaned_data["file"]
        limit = settings.TRACE_MAX_UPLOAD_BYTES
        if upload.size > limit:
            raise forms.ValidationError(
                f"{upload.name}: the file is {filesizeformat(upload.size)}; the limit is {filesizeformat(limit)}.")
        return upload


RESPONSE_PATH = re.compile(r"^[A-Za-z_$][A-Za-z0-9_$-]*(\.([A-Za-z_$][A-Za-z0-9_$-]*|[0-9]+))*$")
HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")


def _holds_placeholder(value) -> bool:
    if isinstance(value, str):
        return Agent.INPUT_PLACEHOLDER in value
    if isinstance(value, dict):
        return any(_holds_placeholder(item) for item in value.values())
    if isinstance(value, list):
        return any(_holds_placeholder(item) for item in value)
    return False


def http_url_field(label: str, *, help_text: str, required: str) -> forms.URLField:
    """A URL field whose errors name it; `clean_http_url` keeps it to http and https."""
    return forms.URLField(max_length=500, label=label, assume_scheme="https", help_text=help_text,
                          error_messages={"invalid": f"{label}: enter a full http:// or https:// URL.",
                                          "required": f"{label}: {required}"})


def clean_http_url(form: forms.Form, name: str) -> str:
    url = form.cleaned_data[name].strip()
    if not url.lower().startswith(("http://", "https://")):
        raise forms.ValidationError(f"{form.fields[name].label}: only http:// and https:// URLs can be called.")
    if refused := outbound.literal_refusal(url):
        raise forms.ValidationError(f"{form.fields[name].label}: {refused}")
    return url


class AgentEndpointForm(forms.Form):
    """The agent's HTTP endpoint, which Loopsite calls with each suite case's input to evaluate a candidate."""

    url = http_url_field("Endpoint URL", required="enter the URL Loopsite should call.",
                         help_text="Loopsite POSTs each case's input here (http or https).")
    body = forms.CharField(
        label="JSON body template", initial='{"input": "{{input}}"}',
        widget=forms.Textarea(attrs={"rows": 4, "class": "mono"}),
        help_text="JSON with {{input}} inside a string where the case's input goes.")
    response_path = forms.CharField(
        max_length=200, label="Answer field", initial="output",
        help_text="Dotted path of the answer in the JSON response, e.g. output or choices.0.message.content.")
    header_name = forms.CharField(max_length=100, required=False, label="Extra header name",
                                  help_text="Optional, e.g. Authorization.")
    header_value = forms.CharField(
        max_length=2000, required=False, label="Extra header value", widget=forms.PasswordInput(render_value=False),
        help_text="Stored and sent with every call, never shown back. Leave empty to keep the stored value.")

    def __init__(self, *args, agent: Agent | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.agent = agent

    def clean_url(self):
        return clean_http_url(self, "url")

    def clean_body(self):
        text = self.cleaned_data["body"].strip()
        try:
            document = json.loads(text)
        except ValueError as exc:
            raise forms.ValidationError(f"JSON body template: not valid JSON ({exc}).") from exc
        if not isinstance(document, dict):
            raise forms.ValidationError("JSON body template: write a JSON object, e.g. {\"input\": \"{{input}}\"}.")
        if not _holds_placeholder(document):
            raise forms.ValidationError("JSON body template: put {{input}} in a string value where the case's input goes.")
        return text

    def clean_response_path(self):
        path = self.cleaned_data["response_path"].strip()
        if not RESPONSE_PATH.match(path):
            raise forms.ValidationError("Answer field: a dotted path of names and list positions, e.g. "
                                        "output or choices.0.message.content.")
        return path

    def clean_header_name(self):
        name = self.cleaned_data["header_name"].strip()
        if name and not HEADER_NAME.match(name):
            raise forms.ValidationError("Extra header name: letters, digits and - only, e.g. Authorization.")
        return name

    def clean(self):
        cleaned = super().clean()
        name, value = cleaned.get("header_name"), cleaned.get("header_value", "")
        if name and not value and not (self.agent and self.agent.endpoint_header_name == name
                                       and self.agent.endpoint_header_value):
            self.add_error("header_value", "Extra header value: give the value to send with that header.")
        if value and any(char in value for char in "\r\n\0"):
            self.add_error("header_value", "Extra header value: one line, no line breaks.")
        if value and not name:
            self.add_error("header_name", "Extra header name: name the header this value goes in.")
        return cleaned


class AgentWebhookForm(forms.Form):
    """The agent's webhook: where Loopsite POSTs a signed event when a handoff is written or a version is
    promoted or refused."""

    url = http_url_field("Webhook URL", required="enter the URL Loopsite should POST events to.",
                         help_text="Loopsite POSTs a signed JSON event here (http or https).")
    new_secret = forms.BooleanField(required=False, label="Make a new signing secret",
                                    help_text="The old secret stops working at once; the new one is shown once.")

    def clean_url(self):
        return clean_http_url(self, "url")


class AgentFilterForm(forms.Form):
    """The GET filter of the lists that span agents (cycles, suite, versions): one agent's (invalid values
    are ignored)."""

    agent = forms.ModelChoiceField(queryset=None, to_field_name="slug", required=False, empty_label="Any agent")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["agent"].queryset = Agent.objects.only("id", "name", "slug")

    @property
    def chosen(self):
        """The chosen agent, or None (no choice or an unknown one). Not `agent`: that is the field."""
        return self.cleaned_data.get("agent") if self.is_bound and self.is_valid() else None

    def filter(self, queryset, field: str):
        """`queryset` narrowed to the agent (`field` leads from its rows to the agent)."""
        return queryset.filter(**{field: self.chosen}) if self.chosen is not None else queryset
