"""Forms for eval proposals: editing a case (assertions as validated JSON) and rejecting one."""

import json

from django import forms

from loopsite.forms import BoundedIntegerField

from .models import EvalCase
from .validation import validate_assertions


class EvalCaseForm(forms.Form):
    title = forms.CharField(max_length=300)
    scoring_method = forms.ChoiceField(choices=EvalCase.ScoringMethod.choices)
    expected_behavior = forms.CharField(widget=forms.Textarea(attrs={"rows": 4}))
    rubric = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 6}))
    assertions = forms.CharField(
        required=False, widget=forms.Textarea(attrs={"rows": 6, "spellcheck": "false", "class": "mono"}),
        help_text='A JSON list such as [{"type": "icontains", "value": "Northstar"}]; '
                  "types: contains, icontains, not-contains. Leave [] for none.",
    )
    pass_example = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 3}))
    fail_example = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 3}))
    edits_seen = BoundedIntegerField(widget=forms.HiddenInput, min_value=0, label="Edits seen")

    @classmethod
    def for_case(cls, case: EvalCase) -> "EvalCaseForm":
        return cls(initial={
            "title": case.title, "scoring_method": case.scoring_method, "expected_behavior": case.expected_behavior,
            "rubric": case.rubric, "assertions": json.dumps(case.deterministic_assertions, indent=2, ensure_ascii=False),
            "pass_example": case.pass_example, "fail_example": case.fail_example,
            "edits_seen": case.revisions.count(),
        }, auto_id="case-%s")

    def clean_assertions(self) -> list[dict[str, str]]:
        text = (self.cleaned_data.get("assertions") or "").strip() or "[]"
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise forms.ValidationError(f"Not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}.") from exc
        except ValueError as exc:  # e.g. a number with more digits than Python converts
            raise forms.ValidationError(f"Not valid JSON: {exc}.") from exc
        cleaned, problems = validate_assertions(value, "assertions")
        if problems:
            raise forms.ValidationError(problems)
        return cleaned

    def clean(self):
        data = super().clean()
        method = data.get("scoring_method")
        if method in (EvalCase.ScoringMethod.LLM_JUDGE, EvalCase.ScoringMethod.HYBRID) and not data.get("rubric", "").strip():
            self.add_error("rubric", "An LLM-judge or hybrid case needs a rubric.")
        if method == EvalCase.ScoringMethod.DETERMINISTIC and "assertions" in data and not data["assertions"]:
            self.add_error("assertions", "A deterministic case needs at least one assertion.")
        return data

    def content(self) -> dict:
        data = self.cleaned_data
        return {
            "title": data["title"].strip(), "scoring_method": data["scoring_method"],
            "expected_behavior": data["expected_behavior"].strip(), "rubric": data.get("rubric", "").strip(),
            "deterministic_assertions": data["assertions"], "pass_example": data.get("pass_example", "").strip(),
            "fail_example": data.get("fail_example", "").strip(),
        }


class RejectForm(forms.Form):
    reason = forms.CharField(
        max_length=2000, widget=forms.Textarea(attrs={"rows": 2}),
        error_messages={"required": "Say why this case is rejected."},
    )


class ApproveForm(forms.Form):
    reason = forms.CharField(
        required=False, max_length=4000, widget=forms.Textarea(attrs={"rows": 2}),
        label="Reason for approving anyway",
        help_text="Needed when the back-test speaks against the case (it does not catch the failure it came from, "
                  "fails its pass example, or has not run on this version).",
    )
