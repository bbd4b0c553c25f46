"""The gate's pages: one gate run (cases × runs), the gate panel on the cycle page, re-running, the
candidate comparison with the promote form, and "Evaluate candidate" on a harness page.

Included from reviews/urls.py, so every name here is in the `reviews:` namespace. Pages that show
work in progress poll their own URL (HTMX) for a fragment and stop polling (286) once it is done.
"""

from django import forms
from django.contrib import messages
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import path
from django.views.decorators.http import require_GET, require_POST
from django_htmx.http import HttpResponseStopPolling

from loopsite.forms import BoundedModelMultipleChoiceField
from loopsite.roles import APPROVER, ENGINEER, REVIEWER, has_role, require_role
from runs.harness_forms import PromoteForm
from runs.models import Harness, Question
from runs.promotion import PromotionRefused

from .candidates import CandidateError, compared_cases, comparison, evaluate_candidate
from .gate import request_gate, rerun_gate, runs_still_active
from .models import Cycle, GateRun

ANY_ROLE = (REVIEWER, APPROVER, ENGINEER)


def _get_gate_run(request, pk: int) -> GateRun:
    require_role(request.user, *ANY_ROLE)
    return get_object_or_404(GateRun.objects.select_related("cycle", "harness", "baseline__harness", "requested_by"),
                             pk=pk)


def _polled(request, template: str, context: dict, *, active: bool):
    """Render the fragment for an HTMX GET (286 = stop polling once the work is done)."""
    response = render(request, template, context)
    if request.method == "GET" and not active:
        response.status_code = HttpResponseStopPolling.status_code
    return response


# --- one gate run ------------------------------------------------------------------------------------------


def judge_headline(gate_run: GateRun, rows) -> dict:
    """What the gate page says about the judge it ran under: its calibration snapshot, how many rows it
    decided (rows decided by deterministic assertions alone need no calibration), and why promotion on
    it needs a reason (reviews.calibration.gate_needs_reason)."""
    from .calibration import gate_needs_reason

    snapshot = gate_run.judge_calibration or {}
    decided = sum(1 for row in rows if row.judge_decided)
    return {
        "judge_snapshot": snapshot,
        "judge_decided": decided,
        "judge_uncalibrated": bool(gate_run.is_finished and rows and not snapshot.get("calibrated")),
        "judge_needs_reason": gate_needs_reason(gate_run) if gate_run.is_finished and rows else None,
    }


def gate_context(request, gate_run: GateRun, *, error: str = "") -> dict:
    rows = list(gate_run.rows.select_related("run", "eval_case"))
    return {
        **judge_headline(gate_run, rows),
        "gate_run": gate_run,
        "rows": rows,
        "skipped": (gate_run.config or {}).get("skipped", []),
        "runs_active": runs_still_active(gate_run) if gate_run.status == GateRun.Status.WAITING else 0,
        "can_rerun": has_role(request.user, APPROVER, ENGINEER) and not gate_run.is_active,
        "candidates": list(gate_run.candidates.select_related("harness").order_by("-created_at")[:5]),
        "error": error,
    }


@require_GET
def gate_detail(request, pk: int):
    """The gate page; HTMX GETs get the gate body (polled while the gate run is active)."""
    gate_run = _get_gate_run(request, pk)
    context = gate_context(request, gate_run)
    if request.htmx:
        return _polled(request, "reviews/gate_detail.html#gate-body", context, active=gate_run.is_active)
    return render(request, "reviews/gate_detail.html", context)


@require_POST
def gate_rerun(request, pk: int):
    gate_run = _get_gate_run(request, pk)
    require_role(request.user, APPROVER, ENGINEER)
    queued = rerun_gate(gate_run=gate_run, user=request.user)
    error = "" if queued else "This gate run is still in progress: it can be re-run once it has finished."
    if not request.htmx:
        (messages.success if queued else messages.error)(request, "Gate queued again." if queued else error)
        return redirect(gate_run)
    gate_run.refresh_from_db()
    return render(request, "reviews/gate_detail.html#gate-body", gate_context(request, gate_run, error=error))


# --- the gate panel on the cycle page ------------------------------------------------------------------------


def gate_panel_context(cycle: Cycle, user, *, error: str = "") -> dict:
    latest = cycle.gate_runs.select_related("harness").order_by("-created_at", "-pk").first()
    approved = cycle.eval_cases.filter(status="approved").count()
    proposed = cycle.eval_cases.filter(status="proposed").count()
    return {
        "cycle": cycle,
        "latest": latest,
        "active": latest is not None and latest.is_active,
        "approved_cases": approved,
        "proposed_cases": proposed,
        "can_run": has_role(user, APPROVER, ENGINEER) and not (latest is not None and latest.is_active),
        "error": error,
    }


def cycle_gate(request, pk: int):
    """GET: the cycle's gate panel (HTMX, polled while active) or its latest gate page. POST: run the gate."""
    require_role(request.user, *ANY_ROLE)
    cycle = get_object_or_404(Cycle.objects.select_related("harness"), pk=pk)
    error = ""
    if request.method == "POST":
        require_role(request.user, APPROVER, ENGINEER)
        gate_run = request_gate(cycle=cycle, user=request.user)
        if not request.htmx:
            messages.success(request, f"Gate run {gate_run.pk} queued.")
            return redirect(gate_run)
    elif not request.htmx:
        latest = cycle.gate_runs.order_by("-created_at", "-pk").first()
        return redirect(latest or cycle)
    context = gate_panel_context(cycle, request.user, error=error)
    return _polled(request, "reviews/gate_panel.html", context, active=context["active"])


# --- candidate vs baseline ---------------------------------------------------------------------------------------


def compare_context(request, gate_run: GateRun, *, form: PromoteForm | None = None, error: str = "",
                    note: str = "") -> dict:
    baseline = gate_run.baseline
    ready = baseline is not None and gate_run.status == baseline.status == GateRun.Status.SUCCEEDED
    compared = compared_cases(baseline, gate_run) if ready else []
    result = comparison(baseline, gate_run, compared) if ready else None
    by_outcome = {"regression": 0, "unverified": 1, "fix": 2, "fail": 3, "pass": 4}
    rows = sorted(compared, key=lambda item: by_outcome[item.result.outcome])  # stable: suite order within each
    candidate = gate_run.harness
    return {
        "gate_run": gate_run,
        "baseline": baseline,
        "ready": ready,
        "active": gate_run.is_active or (baseline is not None and baseline.is_active),
        "comparison": result,
        "rows": rows,
        "delta_points": round(result.pass_rate_delta * 100) if result and result.pass_rate_delta is not None else None,
        "can_promote": (ready and has_role(request.user, APPROVER) and candidate.status == Harness.Status.DRAFT),
        "promote_form": form or PromoteForm(),
        "error": error,
        "note": note,
    }


def _get_candidate_gate(request, pk: int) -> GateRun:
    gate_run = _get_gate_run(request, pk)
    if gate_run.kind != GateRun.Kind.CANDIDATE:
        from django.http import Http404

        raise Http404("Only a candidate gate run has a comparison.")
    return gate_run


@require_GET
def gate_compare(request, pk: int):
    """Baseline vs candidate per case; HTMX GETs get the comparison body (polled until both gate runs finish)."""
    gate_run = _get_candidate_gate(request, pk)
    context = compare_context(request, gate_run)
    if request.htmx:
        return _polled(request, "reviews/gate_compare.html#compare-body", context, active=context["active"])
    return render(request, "reviews/gate_compare.html", context)


@require_POST
def gate_promote(request, pk: int):
    """Promote the candidate on this comparison (approvers); refused on a regression without an override reason."""
    gate_run = _get_candidate_gate(request, pk)
    require_role(request.user, APPROVER)
    form = PromoteForm(request.POST)
    error = note = ""
    if not form.is_valid():
        error = "Not promoted: fix the marked fields."
    else:
        context = compare_context(request, gate_run)
        if not context["ready"]:
            error = "Not promoted: both gate runs must have succeeded first."
        else:
            try:
                gate_run.harness.promote(by=request.user, comparison=context["comparison"],
                                         override_reason=form.cleaned_data["override_reason"])
                note = f"{gate_run.harness.version} is now the promoted version."
            except PromotionRefused as exc:
                error = str(exc)
    if not request.htmx:
        (messages.error if error else messages.success)(request, error or note)
        return redirect("reviews:gate-compare", pk=gate_run.pk)
    gate_run.harness.refresh_from_db()
    context = compare_context(request, gate_run, form=form if error else None, error=error, note=note)
    return render(request, "reviews/gate_compare.html#compare-body", context)


# --- "Evaluate candidate" on a harness page -----------------------------------------------------------------------


class EvaluateForm(forms.Form):
    baseline = forms.ModelChoiceField(queryset=Harness.objects.all(), to_field_name="version", label="Baseline")
    extra_questions = BoundedModelMultipleChoiceField(queryset=Question.objects.all(), required=False,
                                                     label="Also run these questions")

    def __init__(self, *args, candidate: Harness, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["baseline"].queryset = Harness.objects.exclude(pk=candidate.pk).exclude(status=Harness.Status.RETIRED)
        self.fields["baseline"].label_from_instance = lambda h: f"{h.version} ({h.get_status_display().lower()})"
        promoted = Harness.objects.filter(status=Harness.Status.PROMOTED).exclude(pk=candidate.pk).first()
        self.initial.setdefault("baseline", (candidate.parent if candidate.parent_id else promoted) or promoted)


def evaluate_context(user, harness: Harness, *, form: EvaluateForm | None = None, error: str = "") -> dict:
    return {
        "harness": harness,
        "can_evaluate": has_role(user, ENGINEER) and harness.status == Harness.Status.DRAFT,
        "evaluate_form": form or EvaluateForm(candidate=harness),
        "evaluations": list(GateRun.objects.filter(harness=harness, kind=GateRun.Kind.CANDIDATE)
                            .select_related("baseline__harness").order_by("-created_at")[:5]),
        "error": error,
    }


@require_POST
def harness_evaluate(request, version: str):
    """Evaluate a draft version against a baseline (engineers): runs, then the gate, then the comparison."""
    require_role(request.user, ENGINEER)
    harness = get_object_or_404(Harness, version=version)
    form = EvaluateForm(request.POST, candidate=harness)
    error = ""
    if form.is_valid():
        try:
            gate_run = evaluate_candidate(candidate=harness, baseline=form.cleaned_data["baseline"], user=request.user,
                                          extra_questions=list(form.cleaned_data["extra_questions"]))
        except CandidateError as exc:
            error = str(exc)
        else:
            # No flash message: the comparison page says "Evaluating …" in its polled part, only while it is.
            return redirect("reviews:gate-compare", pk=gate_run.pk)
    else:
        error = "Not started: choose a baseline version."
    if request.htmx:
        return render(request, "reviews/gate_evaluate.html", evaluate_context(request.user, harness, form=form, error=error))
    messages.error(request, error)
    return redirect(harness)


# --- the judge's calibration (a panel on the suite and gate pages) ---------------------------------------------


def judge_calibration(request):
    """GET: the calibration panel (HTMX: polled while a refresh runs). POST: refresh the calibration
    (approvers and engineers); the judge runs in the worker, never in this request."""
    from .calibration import page_context, request_calibration

    require_role(request.user, *ANY_ROLE)
    error = ""
    if request.method == "POST":
        require_role(request.user, APPROVER, ENGINEER)
        request_calibration(user=request.user)
        if not request.htmx:
            messages.success(request, "The judge's calibration is being refreshed.")
            target = request.POST.get("next", "")
            return redirect(target if target.startswith("/") and not target.startswith("//") else "reviews:suite")
    elif request.method != "GET":
        from django.http import HttpResponseNotAllowed

        return HttpResponseNotAllowed(["GET", "POST"])
    context = {**page_context(), "can_refresh": has_role(request.user, APPROVER, ENGINEER), "error": error,
               "next": request.GET.get("next", "")}
    job = context["calibration_job"]
    if not request.htmx and request.method == "GET":
        return redirect("reviews:suite")
    return _polled(request, "reviews/_judge_calibration.html", context, active=job is not None and job.is_active)


urlpatterns = [
    path("judge/calibration/", judge_calibration, name="judge-calibration"),
    path("gate/<int:pk>/", gate_detail, name="gate-detail"),
    path("gate/<int:pk>/rerun/", gate_rerun, name="gate-rerun"),
    path("gate/<int:pk>/compare/", gate_compare, name="gate-compare"),
    path("gate/<int:pk>/promote/", gate_promote, name="gate-promote"),
    path("cycles/<int:pk>/gate/", cycle_gate, name="cycle-gate"),
    path("harnesses/<str:version>/evaluate/", harness_evaluate, name="harness-evaluate"),
]
