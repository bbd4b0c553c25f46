from dataclasses import dataclass, field
from typing import Any

from django import forms
from django.contrib.auth import get_user_model
from django.db.models.functions import Coalesce

from loopsite.forms import BoundedIntegerField, BoundedModelMultipleChoiceField
from loopsite.roles import REVIEWER
from runs.models import Agent, Harness, Run

from .models import Feedback, FeedbackItem
from .trace import ANSWER, citation_label, citation_url

Kind = FeedbackItem.Kind


class FeedbackForm(forms.Form):
    summary = forms.CharField(required=False, max_length=4000, widget=forms.Textarea(attrs={"rows": 3}))
    theme = forms.CharField(required=False, max_length=80)
    verdict = forms.ChoiceField(required=False, choices=[("", "Choose…"), *Feedback.Verdict.choices])

    def check_complete(self) -> None:
        """Rules for submitting (drafts may be incomplete)."""
        for name, message in (
            ("summary", "Write a summary before submitting."),
            ("theme", "Name a theme before submitting."),
            ("verdict", "Choose a verdict before submitting."),
        ):
            if not self.cleaned_data.get(name):
                self.add_error(name, message)


class ItemForm(forms.Form):
    kind = forms.ChoiceField(choices=Kind.choices)
    text = forms.CharField(required=False, max_length=1000)
    citation_span_id = forms.CharField(required=False, max_length=64)
    citation_artifact = forms.CharField(required=False, max_length=200)
    citation_line = BoundedIntegerField(
        required=False, min_value=1, max_value=10_000_000, label="Line",
        error_messages={code: "Line number: enter a whole number from 1 to 10000000."
                        for code in ("invalid", "min_value", "max_value")},
    )

    def __init__(self, *args, run: Run, autofocus: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.run = run
        self.autofocus = autofocus

    def clean_citation_span_id(self) -> str:
        span_id = self.cleaned_data["citation_span_id"].strip()
        if span_id and not self.run.spans.filter(span_id=span_id).exists():
            raise forms.ValidationError("That span is not in this run's trace.")
        return span_id

    def clean_citation_artifact(self) -> str:
        name = self.cleaned_data["citation_artifact"].strip()
        if name and name != ANSWER and not self.run.artifacts.filter(name=name).exists():
            raise forms.ValidationError("That artifact is not in this run.")
        return name

    def clean(self):
        data = super().clean()
        if data.get("citation_span_id") and data.get("citation_artifact"):
            raise forms.ValidationError("Cite a span or an artifact, not both.")
        if data.get("citation_line") and not data.get("citation_artifact"):
            self.add_error("citation_line", "A line number needs a cited artifact.")
        return data

    def value(self, name: str) -> Any:
        return self[name].value() if self.is_bound else self.initial.get(name, "")

    @property
    def item_kind(self) -> str:
        # Not `kind`: templates would find the form field of that name first.
        return self.value("kind")

    @property
    def cites(self) -> str:
        if self.value("citation_span_id"):
            return "span"
        return "artifact" if self.value("citation_artifact") else ""

    @property
    def citation_url(self) -> str:
        return citation_url(self.run, span_id=self.value("citation_span_id") or "",
                            artifact=self.value("citation_artifact") or "", line=self.value("citation_line"))

    @property
    def citation_label(self) -> str:
        return citation_label(self.value("citation_span_id"), self.value("citation_artifact"), self.value("citation_line"))


@dataclass
class FeedbackDraft:
    """What the form holds: the header fields and the rows in page order, bound or initial."""

    run: Run
    form: FeedbackForm
    rows: list[ItemForm]
    messages: list[str] = field(default_factory=list)

    # At most this many rows (observations and claims together); Django's DATA_UPLOAD_MAX_NUMBER_FIELDS
    # (settings) leaves room for them, at five posted fields a row.
    MAX_ROWS = 1000

    # Names of the parallel lists the rows post.
    FIELDS = {
        "kind": "item_kind",
        "text": "item_text",
        "citation_span_id": "item_span",
        "citation_artifact": "item_artifact",
        "citation_line": "item_line",
    }

    @classmethod
    def from_feedback(cls, feedback: Feedback | None, *, run: Run) -> "FeedbackDraft":
        if feedback is None:
            return cls(run=run, form=FeedbackForm(), rows=[])
        return cls.from_content(feedback.content(), run=run)

    @classmethod
    def from_content(cls, content: dict[str, Any], *, run: Run) -> "FeedbackDraft":
        form = FeedbackForm(initial={key: content[key] for key in ("summary", "theme", "verdict")})
        rows = [ItemForm(run=run, initial=item) for item in content["items"]]
        return cls(run=run, form=form, rows=_grouped(rows))

    @classmethod
    def from_post(cls, data, *, run: Run) -> "FeedbackDraft":
        form = FeedbackForm(data)
        columns = {name: data.getlist(posted) for name, posted in cls.FIELDS.items()}
        count = len(columns["kind"])
        rows = []
        for index in range(count):
            row = {name: (values[index] if index < len(values) else "") for name, values in columns.items()}
            rows.append(ItemForm(row, run=run))
        return cls(run=run, form=form, rows=rows)

    def _room_for(self, count: int) -> bool:
        if count <= self.MAX_ROWS:
            return True
        message = f"This feedback has {count} observations and claims; the limit is {self.MAX_ROWS}."
        if message not in self.messages:
            self.messages.append(message)
        return False

    # --- in-place row operations (the form is re-rendered afterwards) ---

    def add(self, kind: str) -> None:
        if kind not in Kind.values:
            return
        if len(self.rows) >= self.MAX_ROWS:
            self.messages.append(f"No row added: feedback holds at most {self.MAX_ROWS} observations and claims.")
            return
        row = ItemForm(
            {"kind": kind, "text": "", "citation_span_id": "", "citation_artifact": "", "citation_line": ""},
            run=self.run, autofocus=True,
        )
        self.rows.append(row)
        self.rows = _grouped(self.rows)

    def remove(self, index: int) -> None:
        if 0 <= index < len(self.rows):
            del self.rows[index]

    def move(self, index: int, step: int) -> None:
        """Swap a row with its neighbour of the same kind."""
        if not 0 <= index < len(self.rows):
            return
        kind = self.rows[index].item_kind
        same = [i for i, row in enumerate(self.rows) if row.item_kind == kind]
        at = same.index(index)
        if 0 <= at + step < len(same):
            other = same[at + step]
            self.rows[index], self.rows[other] = self.rows[other], self.rows[index]
            self.rows[other].autofocus = True

    # --- validation and content ---

    def is_valid(self, *, complete: bool = False) -> bool:
        valid = self._room_for(len(self.rows))
        valid = self.form.is_valid() and valid
        for row in self.rows:
            valid = row.is_valid() and valid
        if complete and valid:
            self.form.check_complete()
            if not any(row.cleaned_data["text"].strip() for row in self.rows):
                self.messages.append("Add at least one required observation or prohibited claim before submitting.")
            for row in self.rows:
                if not row.cleaned_data["text"].strip():
                    row.add_error("text", "Write this item or remove the row.")
            valid = not self.form.errors and not self.messages and not any(row.errors for row in self.rows)
        return valid

    def content(self) -> dict[str, Any]:
        """The cleaned content in model order (observations, then claims); call after is_valid()."""
        items = []
        for row in _grouped(self.rows):
            data = row.cleaned_data
            items.append({
                "kind": data["kind"],
                "text": data["text"].strip(),
                "citation_span_id": data["citation_span_id"],
                "citation_artifact": data["citation_artifact"],
                "citation_line": data["citation_line"],
            })
        return {
            "summary": self.form.cleaned_data["summary"].strip(),
            "theme": self.form.cleaned_data["theme"].strip(),
            "verdict": self.form.cleaned_data["verdict"],
            "items": items,
        }

    @property
    def has_errors(self) -> bool:
        return bool(self.messages or (self.form.is_bound and self.form.errors) or any(r.is_bound and r.errors for r in self.rows))

    def indexed(self, kind: str) -> list[tuple[int, ItemForm, bool, bool]]:
        """(index in the posted list, form, is first of its kind, is last of its kind)."""
        rows = [(index, row) for index, row in enumerate(self.rows) if row.item_kind == kind]
        return [(index, row, n == 0, n == len(rows) - 1) for n, (index, row) in enumerate(rows)]

    @property
    def observation_rows(self):
        return self.indexed(Kind.REQUIRED_OBSERVATION)

    @property
    def claim_rows(self):
        return self.indexed(Kind.PROHIBITED_CLAIM)


def _grouped(rows: list[ItemForm]) -> list[ItemForm]:
    order = {kind: n for n, kind in enumerate(Kind.values)}
    return sorted(rows, key=lambda row: order.get(row.item_kind, len(order)))


def merged_content(sources: list[Feedback]) -> dict[str, Any]:
    """The approver's starting point: the first summary, theme and verdict, and every item once."""
    first = sources[0]
    seen: set[tuple[str, str]] = set()
    items = []
    for kind in Kind.values:
        for source in sources:
            for item in source.items.all():
                key = item.merge_key
                if item.kind != kind or key in seen or not item.text.strip():
                    continue
                seen.add(key)
                items.append(item.as_dict())
    return {
        "summary": next((s.summary for s in sources if s.summary), first.summary),
        "theme": next((s.theme for s in sources if s.theme), first.theme),
        "verdict": next((s.verdict for s in sources if s.verdict), first.verdict),
        "items": items,
    }


class AssignForm(forms.Form):
    reviewer = forms.ModelChoiceField(queryset=get_user_model().objects.none(), empty_label="Reviewer…")

    def __init__(self, *args, exclude_ids=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["reviewer"].queryset = (
            get_user_model().objects.filter(is_active=True)
            .filter(groups__name=REVIEWER).exclude(pk__in=exclude_ids).distinct().order_by("username")
        )


class SendBackForm(forms.Form):
    comment = forms.CharField(max_length=4000, widget=forms.Textarea(attrs={"rows": 2}),
                              error_messages={"required": "Say what needs changing."})


class RunChoiceField(BoundedModelMultipleChoiceField):
    def label_from_instance(self, run: Run) -> str:
        version = run.harness.version if run.agent.is_builtin else f"{run.agent.name} {run.harness.agent_version}"
        return f"{version} · {run.label or run.pk} · {run.get_status_display()} · {run.question.text[:90]}"


class NewCycleForm(forms.Form):
    """A cycle from runs picked by hand: the 200 newest runs, or the newest 200 of one agent (the list's
    agent filter, carried in the form so the choices it was shown are the ones it checks)."""

    RECENT = 200

    name = forms.CharField(required=False, max_length=200, help_text="Blank: harness version and today's date.")
    agent = forms.ModelChoiceField(queryset=Agent.objects.all(), to_field_name="slug", required=False,
                                   widget=forms.HiddenInput)
    runs = RunChoiceField(
        queryset=Run.objects.none(), widget=forms.CheckboxSelectMultiple,
        error_messages={"required": "Choose the runs to review."},
    )

    def __init__(self, *args, agent: Agent | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        if self.is_bound:
            agent = Agent.objects.filter(slug=self.data.get("agent") or "").first()
        elif agent is not None:
            self.initial["agent"] = agent.slug
        self.chosen_agent = agent
        runs = Run.objects.all() if agent is None else Run.objects.filter(agent=agent)
        recent = list(runs.order_by("-created_at", "-id").values_list("pk", flat=True)[:self.RECENT])
        self.fields["runs"].queryset = (
            Run.objects.filter(pk__in=recent).select_related("harness", "question", "agent").order_by("-created_at", "-id")
        )

    def clean_runs(self):
        runs = self.cleaned_data["runs"]
        if len({run.harness_id for run in runs}) > 1:
            raise forms.ValidationError("A cycle groups the runs of one harness version: choose runs of one harness.")
        return runs


class TraceCycleForm(forms.Form):
    """A cycle from an external agent's imported runs of one version, optionally within a time range
    (of the traces' start times)."""

    harness = forms.ModelChoiceField(
        queryset=None, label="Agent version", empty_label="Choose…",
        error_messages={"required": "Choose the agent version whose imported runs to review.",
                        "invalid_choice": "Choose one of the listed agent versions."},
    )
    since = forms.DateTimeField(required=False, label="From", help_text="Blank: from its first run.",
                                widget=forms.DateTimeInput(attrs={"type": "datetime-local"}),
                                error_messages={"invalid": "From: enter a date and time such as 2026-11-29 09:00."})
    until = forms.DateTimeField(required=False, label="To", help_text="Blank: up to now.",
                                widget=forms.DateTimeInput(attrs={"type": "datetime-local"}),
                                error_messages={"invalid": "To: enter a date and time such as 2026-11-29 18:00."})
    name = forms.CharField(required=False, max_length=200, help_text="Blank: the version and today's date.")

    MAX_RUNS = 500

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["harness"].queryset = (
            Harness.objects.filter(origin=Harness.Origin.IMPORTED).select_related("agent").order_by("agent__name", "version"))
        self.fields["harness"].label_from_instance = lambda h: f"{h.agent.name} · {h.agent_version} ({h.version})"

    def runs(self):
        """The finished imported runs of the chosen version in the time range, oldest first."""
        data = self.cleaned_data
        runs = Run.objects.filter(harness=data["harness"], source=Run.Source.IMPORTED).exclude(
            status__in=Run.ACTIVE_STATUSES).annotate(at=Coalesce("started_at", "created_at"))
        if data.get("since"):
            runs = runs.filter(at__gte=data["since"])
        if data.get("until"):
            runs = runs.filter(at__lte=data["until"])
        return runs.order_by("at", "pk")

    def clean(self):
        data = super().clean()
        if data.get("since") and data.get("until") and data["since"] > data["until"]:
            self.add_error("until", "To: choose a time after From.")
        if self.errors:
            return data
        count = self.runs().count()
        if not count:
            raise forms.ValidationError("No finished imported run of that version falls in that time range.")
        if count > self.MAX_RUNS:
            raise forms.ValidationError(
                f"{count} runs match; a cycle holds at most {self.MAX_RUNS}: narrow the time range.")
        return data
