from django import forms
from django.conf import settings
from django.template.defaultfilters import filesizeformat

from .models import Dataroom, Harness, Question, Run


class RunFilterForm(forms.Form):
    """The GET filters of the runs list. Invalid values are ignored, not fatal."""

    harness = forms.ModelChoiceField(
        queryset=Harness.objects.only("id", "version"), to_field_name="version", required=False, empty_label="Any harness"
    )
    dataroom = forms.ModelChoiceField(
        queryset=Dataroom.objects.only("id", "name"), required=False, empty_label="Any dataroom"
    )
    status = forms.ChoiceField(choices=[("", "Any status"), *Run.Status.choices], required=False)
    batch = forms.IntegerField(required=False, min_value=1, widget=forms.HiddenInput)

    def filter(self, queryset):
        """Apply the fields that validated; an unbound form filters nothing."""
        if not self.is_bound:
            return queryset
        self.is_valid()
        data = self.cleaned_data
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
    questions = forms.ModelMultipleChoiceField(
        queryset=Question.objects.all(),
        widget=forms.CheckboxSelectMultiple,
        error_messages={"required": "Pick at least one question."},
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        harness_qs = Harness.objects.exclude(status=Harness.Status.RETIRED)
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
