"""The HALO page, the handoff, and the cycle dashboard.

Included from reviews/urls.py, so every name here is in the `reviews:` namespace.

    reviews:halo               the HALO page of a cycle; HTMX GET: the polled panel; POST: run HALO
    reviews:halo-context       the cycle's optimization context as JSONL (what HALO would read now)
    reviews:handoff            one HALO run's handoff: the notebook's snapshot and the full report
    reviews:handoff-download   codex_handoff.md
    reviews:cycle-dashboard    the cycle's pipeline, step by step; HTMX GET: the polled panel
    reviews:dashboard-gate     POST: run the gate on the cycle's answers again
"""

from __future__ import annotations

import html as html_lib
import re
from dataclasses import dataclass, field
from datetime import datetime

from django import forms
from django.contrib import messages
from django.db.models import Count, Max, Min, Q
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import NoReverseMatch, path, reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe
from django_htmx.http import HttpResponseStopPolling

from loopsite.markdown import render_markdown

from loopsite.roles import APPROVER, ENGINEER, REVIEWER, has_role, require_role
from runs.models import Run

from . import halo
from .generation import latest_chain
from .models import Cycle, EvalCase, Feedback, GateRun, GenerationJob, Optimization
from .optimization import (
    CONTEXT_FILE,
    HANDOFF_FILE,
    OPTION_LIMITS,
    active_optimization,
    context_jsonl,
    cycle_context_lines,
    default_options,
    handoff_file,
    latest_gate_run,
    latest_handoff,
    latest_optimization,
    request_optimization,
)
from .stage import gate_waits_for, halo_waits_for

ANY_ROLE = (REVIEWER, APPROVER, ENGINEER)
RUNNERS = (ENGINEER, APPROVER)


def _get_cycle(request, pk: int) -> Cycle:
    require_role(request.user, *ANY_ROLE)
    return get_object_or_404(Cycle.objects.select_related("harness"), pk=pk)


def _stop_polling(response: HttpResponse) -> HttpResponse:
    response.status_code = HttpResponseStopPolling.status_code
    return response


# --- the HALO page --------------------------------------------------------------------------------------------


class HaloForm(forms.Form):
    maximum_depth = forms.IntegerField(
        label="Depth", min_value=OPTION_LIMITS["maximum_depth"][0], max_value=OPTION_LIMITS["maximum_depth"][1],
        help_text="0: the root agent reads alone; 1: it may call subagents.")
    maximum_turns = forms.IntegerField(
        label="Turns", min_value=OPTION_LIMITS["maximum_turns"][0], max_value=OPTION_LIMITS["maximum_turns"][1],
        help_text="Model turns per agent.")
    maximum_parallel_subagents = forms.IntegerField(
        label="Parallel subagents", min_value=OPTION_LIMITS["maximum_parallel_subagents"][0],
        max_value=OPTION_LIMITS["maximum_parallel_subagents"][1])

    @classmethod
    def initial_for(cls, optimization: Optimization | None) -> "HaloForm":
        initial = default_options()
        if optimization is not None:
            initial.update({name: optimization.options[name] for name in OPTION_LIMITS if name in optimization.options})
        return cls(initial=initial, auto_id="halo-%s")


@dataclass
class Entry:
    """One line of the live progress: a tool call (with its result), a run of text, a retry, an error."""

    kind: str
    at: datetime
    agent: str = ""
    depth: int = 0
    name: str = ""
    text: str = ""
    result_chars: int | None = None
    missing: list = field(default_factory=list)


def progress_entries(optimization: Optimization) -> tuple[list[Entry], float | None]:
    """The events as the page shows them: consecutive text of one agent joined, results under their call.
    Also returns the elapsed time HALO last reported."""
    entries: list[Entry] = []
    reported: float | None = None
    open_calls: dict[tuple[str, int, str], Entry] = {}
    for event in optimization.events.all():
        data = event.data or {}
        agent, depth = str(data.get("agent") or ""), int(data.get("depth") or 0)
        if event.type == "status":
            reported = data.get("elapsed")
        elif event.type == "text":
            last = entries[-1] if entries else None
            if last is not None and last.kind == "text" and (last.agent, last.depth) == (agent, depth):
                last.text += str(data.get("delta") or "")
            else:
                entries.append(Entry("text", event.at, agent, depth, text=str(data.get("delta") or "")))
        elif event.type == "tool_call":
            entry = Entry("call", event.at, agent, depth, name=str(data.get("name") or ""),
                          text=str(data.get("arguments") or ""))
            entries.append(entry)
            open_calls[(agent, depth, entry.name)] = entry
        elif event.type == "tool_result":
            call = open_calls.pop((agent, depth, str(data.get("name") or "")), None)
            if call is not None:
                call.result_chars = int(data.get("chars") or 0)
        elif event.type == "retry":
            entries.append(Entry("retry", event.at, missing=list(data.get("missing") or [])))
        elif event.type == "error":
            entries.append(Entry("error", event.at, text=str(data.get("message") or "")))
        elif event.type == "report":
            entries.append(Entry("report", event.at, result_chars=int(data.get("chars") or 0)))
            reported = data.get("elapsed") or reported
    return entries, reported


def _input_summary(cycle: Cycle) -> tuple[list[dict], str]:
    """The HALO input summary table computed from the cycle now, or ([], why not)."""
    try:
        lines = cycle_context_lines(cycle=cycle, gate_run=latest_gate_run(cycle))
    except ValueError as exc:
        return [], str(exc)
    return halo.input_summary_rows(lines), ""


def halo_panel_context(request, cycle: Cycle, *, form: HaloForm | None = None, error: str = "") -> dict:
    optimization = latest_optimization(cycle)
    entries, reported = progress_entries(optimization) if optimization is not None else ([], None)
    active = optimization is not None and optimization.is_active
    return {
        "cycle": cycle,
        "optimization": optimization,
        "active": active,
        "entries": entries,
        "reported_elapsed": reported,
        "tool_calls": sum(1 for entry in entries if entry.kind == "call"),
        "can_run": has_role(request.user, *RUNNERS),
        "form": form or HaloForm.initial_for(optimization),
        "error": error,
        "gate_run": latest_gate_run(cycle),
        "halo_waits": "" if active else halo_waits_for(cycle),
    }


def halo_page(request, pk: int):
    """GET: the HALO page (HTMX: the polled panel). POST: run HALO with the form's options."""
    cycle = _get_cycle(request, pk)
    form, error = None, ""
    if request.method == "POST":
        require_role(request.user, *RUNNERS)
        form = HaloForm(request.POST, auto_id="halo-%s")
        if form.is_valid():
            active = active_optimization(cycle)
            if active is not None:
                error = "HALO is already running for this cycle; wait for it to finish before running it again."
            elif waits := halo_waits_for(cycle):
                error = f"Not started: {waits}"
            else:
                request_optimization(cycle=cycle, user=request.user, options=form.cleaned_data)
                form = None
        else:
            error = "Not started: fix the marked fields."
        if request.POST.get("from") == "dashboard":
            if not request.htmx:
                if error:
                    messages.error(request, error)
                return redirect("reviews:cycle-dashboard", cycle.pk)
            return render(request, "reviews/_dashboard.html", {**dashboard_context(request, cycle), "error": error})
        if not request.htmx:
            if error and form is not None and form.errors:
                return render(request, "reviews/optimization_halo.html",
                              {**halo_panel_context(request, cycle, form=form, error=error),
                               **_page_extras(cycle)}, status=400)
            if error:
                messages.error(request, error)
            return redirect("reviews:halo", cycle.pk)
    context = halo_panel_context(request, cycle, form=form, error=error)
    if request.htmx:
        response = render(request, "reviews/optimization_halo.html#halo-panel", context)
        if request.method == "GET" and not context["active"]:
            return _stop_polling(response)
        return response
    return render(request, "reviews/optimization_halo.html", {**context, **_page_extras(cycle)})


def _page_extras(cycle: Cycle) -> dict:
    rows, problem = _input_summary(cycle)
    return {"summary_rows": rows, "summary_problem": problem,
            "history": list(cycle.optimizations.order_by("-created_at", "-pk")[:10])}


@require_GET
def halo_context(request, pk: int):
    """The optimization context HALO would read for this cycle now (JSONL)."""
    cycle = _get_cycle(request, pk)
    try:
        lines = cycle_context_lines(cycle=cycle, gate_run=latest_gate_run(cycle))
    except ValueError as exc:
        return HttpResponse(f"The optimization context cannot be built: {exc}\n", status=409,
                            content_type="text/plain; charset=utf-8")
    response = HttpResponse(context_jsonl(lines), content_type="application/x-ndjson; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="cycle-{cycle.pk}-{CONTEXT_FILE}"'
    return response


# --- the handoff -------------------------------------------------------------------------------------------------


def _get_handoff(request, pk: int) -> Optimization:
    require_role(request.user, *ANY_ROLE)
    optimization = get_object_or_404(Optimization.objects.select_related("cycle__harness"), pk=pk)
    if not optimization.handoff:
        from django.http import Http404

        raise Http404("This HALO run has no handoff.")
    return optimization


def _mark_citations(html: str, checks: dict) -> SafeString:
    """The rendered handoff with each citation marked: unresolved ones in red (with the reason), others quietly."""
    status = {entry["citation"]: entry for entry in checks.get("citations") or []}
    unresolved = {entry["citation"]: entry for entry in checks.get("unresolved") or []}

    def mark(match: re.Match) -> str:
        citation = html_lib.unescape(match.group(0))
        bad = unresolved.get(citation)
        if bad is not None:
            return (f'<mark class="citation unresolved" data-testid="citation-unresolved" '
                    f'title="{escape(bad.get("reason", ""))}">{match.group(0)}</mark>')
        if citation in status:
            return f'<span class="citation resolved">{match.group(0)}</span>'
        return match.group(0)

    return mark_safe(re.sub(r"\[(?:feedback|eval|gate|span):[^\]<\s]+\]", mark, str(html)))


@require_GET
def handoff_page(request, pk: int):
    optimization = _get_handoff(request, pk)
    checks = optimization.evidence_checks or {}
    return render(request, "reviews/handoff_detail.html", {
        "optimization": optimization,
        "cycle": optimization.cycle,
        "summary": _mark_citations(render_markdown(halo.handoff_summary(optimization.handoff)), checks),
        "handoff_html": _mark_citations(render_markdown(optimization.handoff), checks),
        "checks": checks,
        "checked": bool(checks),
        "is_latest": latest_handoff(optimization.cycle) == optimization,
    })


@require_GET
def handoff_download(request, pk: int):
    """codex_handoff.md: the handoff as HALO wrote it, then the evidence check's findings (if any)."""
    optimization = _get_handoff(request, pk)
    response = HttpResponse(handoff_file(optimization), content_type="text/markdown; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{HANDOFF_FILE}"'
    return response


# --- the cycle dashboard ---------------------------------------------------------------------------------------


@dataclass
class PipelineStep:
    key: str
    label: str
    state: str  # done, active, failed, waiting, idle
    counts: str = ""
    url: str | None = None
    waiting_for: str = ""
    seconds: float | None = None
    detail: str = ""

    STATE_LABELS = {"done": "Done", "active": "Working", "failed": "Failed", "waiting": "Waiting", "idle": "Not started"}
    BADGES = {"done": "succeeded", "active": "running", "failed": "failed", "waiting": "none", "idle": "none"}

    @property
    def state_label(self) -> str:
        return self.STATE_LABELS[self.state]

    @property
    def badge(self) -> str:
        return self.BADGES[self.state]


def _seconds(start, end) -> float | None:
    if start is None:
        return None
    return ((end or timezone.now()) - start).total_seconds()


def _url(name: str, *args) -> str | None:
    try:
        return reverse(name, args=args)
    except NoReverseMatch:  # a page another part of the app has not added yet
        return None


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _job_step(key: str, label: str, job: GenerationJob | None, counts: str, url: str | None) -> PipelineStep:
    state = {"queued": "active", "running": "active", "succeeded": "done", "failed": "failed"}[job.status]
    return PipelineStep(key, label, state, counts=counts, url=url, seconds=_seconds(job.started_at, job.finished_at),
                        detail=job.last_error if job.status == GenerationJob.Status.FAILED else "")


def pipeline(cycle: Cycle) -> list[PipelineStep]:
    """The cycle's steps with state, counts, duration, link and what each one is waiting for."""
    steps: list[PipelineStep] = []
    cycle_url = cycle.get_absolute_url()

    runs = cycle.runs.aggregate(
        total=Count("pk"), succeeded=Count("pk", filter=Q(status=Run.Status.SUCCEEDED)),
        failed=Count("pk", filter=Q(status=Run.Status.FAILED)),
        active=Count("pk", filter=Q(status__in=Run.ACTIVE_STATUSES)),
        started=Min("started_at"), finished=Max("finished_at"),
    )
    done_runs = runs["succeeded"] + runs["failed"]
    if not runs["total"]:
        step = PipelineStep("runs", "Runs", "waiting", "0 runs", cycle_url, "waiting for runs to be added")
    elif runs["active"]:
        step = PipelineStep("runs", "Runs", "active", f"{done_runs}/{runs['total']} done", cycle_url,
                            f"waiting for {_plural(runs['active'], 'run')} to finish",
                            seconds=_seconds(runs["started"], None))
    else:
        step = PipelineStep("runs", "Runs", "failed" if runs["failed"] == runs["total"] else "done",
                            f"{done_runs}/{runs['total']} done", cycle_url,
                            seconds=_seconds(runs["started"], runs["finished"]),
                            detail=f"{_plural(runs['failed'], 'run')} failed" if runs["failed"] else "")
    steps.append(step)

    progress = cycle.progress()
    total, reviewed, approved = progress["total"], progress["reviewed"], progress["approved"]
    feedback_times = Feedback.objects.filter(cycle=cycle).aggregate(first=Min("created_at"),
                                                                    last=Max("approved_at"))
    counts = f"{reviewed} reviewed · {approved} approved · {total} total"
    if total and approved == total:
        steps.append(PipelineStep("feedback", "Feedback", "done", counts, f"{cycle_url}#queue",
                                  seconds=_seconds(feedback_times["first"], feedback_times["last"])))
    else:
        waits = []
        if reviewed < total:
            waits.append(f"{_plural(total - reviewed, 'run')} to be reviewed")
        if reviewed > approved:
            waits.append(f"{_plural(reviewed - approved, 'run')} to be approved")
        steps.append(PipelineStep("feedback", "Feedback", "waiting" if not reviewed else "active", counts,
                                  f"{cycle_url}#queue", "waiting for " + " and ".join(waits) if waits else "",
                                  seconds=_seconds(feedback_times["first"], None) if feedback_times["first"] else None))
    feedback_done = bool(total) and approved == total

    chain = latest_chain(cycle)
    insights_job = chain[0] if chain else None
    evals_job = chain[-1] if len(chain) > 1 else None
    generation_url = _url("reviews:generation", cycle.pk)
    insight_count = insights_job.insights.count() if insights_job is not None else 0
    if insights_job is None:
        steps.append(PipelineStep("insights", "Insights", "waiting" if not feedback_done else "idle", "", generation_url,
                                  "waiting for every run to be approved" if not feedback_done
                                  else "not started: an approver can start eval generation"))
    else:
        steps.append(_job_step("insights", "Insights", insights_job, _plural(insight_count, "insight"), generation_url))

    case_counts = dict(cycle.eval_cases.values_list("status").annotate(n=Count("pk")).values_list("status", "n"))
    case_total = sum(case_counts.values())
    evals_url = _url("reviews:evals", cycle.pk)
    if evals_job is None:
        if case_total:  # proposals from an earlier chain
            steps.append(PipelineStep("proposals", "Eval proposals", "done", _plural(case_total, "proposal"), evals_url))
        else:
            steps.append(PipelineStep("proposals", "Eval proposals", "waiting", "", evals_url, "waiting for insights"))
    else:
        steps.append(_job_step("proposals", "Eval proposals", evals_job, _plural(case_total, "proposal"), evals_url))

    proposed = case_counts.get(EvalCase.Status.PROPOSED, 0)
    approved_cases = case_counts.get(EvalCase.Status.APPROVED, 0)
    decided = cycle.eval_cases.filter(status__in=[EvalCase.Status.APPROVED, EvalCase.Status.REJECTED]).aggregate(
        last=Max("updated_at"))["last"]
    approved_counts = (f"{approved_cases} approved · {case_counts.get(EvalCase.Status.REJECTED, 0)} rejected"
                       f" · {proposed} to decide")
    if not case_total:
        steps.append(PipelineStep("approved", "Approved evals", "waiting", "", evals_url, "waiting for eval proposals"))
    elif proposed:
        steps.append(PipelineStep("approved", "Approved evals", "active" if approved_cases else "waiting",
                                  approved_counts, evals_url,
                                  f"waiting for {_plural(proposed, 'proposal')} to be decided"))
    else:
        start = evals_job.finished_at if evals_job is not None else None
        steps.append(PipelineStep("approved", "Approved evals", "done", approved_counts, evals_url,
                                  seconds=_seconds(start, decided) if start and decided else None))

    gate_run = (GateRun.objects.filter(cycle=cycle, kind=GateRun.Kind.BASELINE).order_by("-created_at", "-pk").first())
    if gate_run is None:
        if proposed:
            wait = f"waiting for {_plural(proposed, 'proposal')} to be decided"
        elif not approved_cases:
            wait = "waiting for approved evals"
        else:
            wait = "not started: re-run the gate to judge the answers"
        steps.append(PipelineStep("gate", "Gate", "waiting" if proposed or not approved_cases else "idle", "", None, wait))
    else:
        url = _url("reviews:gate-detail", gate_run.pk)
        if gate_run.is_active:
            label = "waiting for the cycle's runs" if gate_run.status == GateRun.Status.WAITING else ""
            steps.append(PipelineStep("gate", "Gate", "active", gate_run.get_status_display(), url, label,
                                      seconds=_seconds(gate_run.started_at, None)))
        elif gate_run.status == GateRun.Status.FAILED:
            steps.append(PipelineStep("gate", "Gate", "failed", "", url, seconds=gate_run.duration_seconds,
                                      detail=gate_run.last_error))
        else:
            steps.append(PipelineStep("gate", "Gate", "done",
                                      f"{gate_run.passed} passed · {gate_run.failed} failed"
                                      + (f" · {gate_run.errors} errors" if gate_run.errors else "")
                                      + f" of {gate_run.total}", url, seconds=gate_run.duration_seconds))

    optimization = latest_optimization(cycle)
    halo_url = reverse("reviews:halo", args=[cycle.pk])
    if optimization is None:
        if gate_run is None or gate_run.is_active:
            wait = "waiting for the gate to finish"
        elif gate_run.status == GateRun.Status.FAILED:
            wait = "waiting for the gate to pass (it failed; re-run it, or run HALO without gate results)"
        else:
            wait = "not started: run HALO"
        steps.append(PipelineStep("halo", "HALO", "waiting" if gate_run is None or gate_run.is_active else "idle",
                                  "", halo_url, wait))
    else:
        state = {"queued": "active", "running": "active", "succeeded": "done", "failed": "failed"}[optimization.status]
        calls = optimization.events.filter(type="tool_call").count()
        steps.append(PipelineStep("halo", "HALO", state, f"{_plural(calls, 'tool call')}", halo_url,
                                  "waiting for a worker" if optimization.status == Optimization.Status.QUEUED else "",
                                  seconds=optimization.elapsed_seconds,
                                  detail=optimization.last_error if state == "failed" else ""))

    handoff = latest_handoff(cycle)
    if handoff is not None:
        missing = handoff.missing_sections
        steps.append(PipelineStep(
            "handoff", "Handoff", "done", f"{len(halo.REQUIRED_SECTIONS) - len(missing)}/{len(halo.REQUIRED_SECTIONS)} sections",
            reverse("reviews:handoff", args=[handoff.pk]),
            detail=("missing: " + ", ".join(section.lstrip("# ") for section in missing)) if missing else ""))
    else:
        steps.append(PipelineStep("handoff", "Handoff", "waiting", "", None, "waiting for HALO to write it"))
    return steps


def dashboard_context(request, cycle: Cycle) -> dict:
    steps = pipeline(cycle)
    gate_active = GateRun.objects.filter(cycle=cycle, status__in=GateRun.ACTIVE_STATUSES).exists()
    halo_active = active_optimization(cycle) is not None
    can_run = has_role(request.user, *RUNNERS)
    latest = latest_optimization(cycle)
    gate_waits, halo_waits = gate_waits_for(cycle), halo_waits_for(cycle)
    return {
        "cycle": cycle,
        "steps": steps,
        "active": any(step.state == "active" for step in steps) or gate_active or halo_active,
        "can_rerun_gate": can_run and not gate_waits,
        "can_run_halo": can_run and not halo_waits,
        "gate_waits": gate_waits if can_run else "",
        "halo_waits": halo_waits if can_run else "",
        "halo_form": HaloForm.initial_for(latest),
        "halo_label": "Re-run HALO" if latest is not None else "Run HALO",
    }


def cycle_dashboard(request, pk: int):
    cycle = _get_cycle(request, pk)
    context = dashboard_context(request, cycle)
    if request.htmx:
        response = render(request, "reviews/_dashboard.html", context)
        return response if context["active"] else _stop_polling(response)
    return render(request, "reviews/dashboard_page.html", context)


@require_POST
def dashboard_gate(request, pk: int):
    """Run the gate on the cycle's answers again (a new gate run; the active one if there is one)."""
    from .gate import request_gate

    cycle = _get_cycle(request, pk)
    require_role(request.user, *RUNNERS)
    error = ""
    if not cycle.eval_cases.filter(status=EvalCase.Status.APPROVED).exists():
        error = "Not started: the gate waits for approved evals from this cycle."
    else:
        request_gate(cycle=cycle, user=request.user)
    if not request.htmx:
        (messages.error if error else messages.success)(request, error or "Gate queued.")
        return redirect("reviews:cycle-dashboard", cycle.pk)
    return render(request, "reviews/_dashboard.html", {**dashboard_context(request, cycle), "error": error})


urlpatterns = [
    path("cycles/<int:pk>/halo/", halo_page, name="halo"),
    path("cycles/<int:pk>/halo/context.jsonl", halo_context, name="halo-context"),
    path("halo/<int:pk>/handoff/", handoff_page, name="handoff"),
    path("halo/<int:pk>/codex_handoff.md", handoff_download, name="handoff-download"),
    path("cycles/<int:pk>/dashboard/", cycle_dashboard, name="cycle-dashboard"),
    path("cycles/<int:pk>/dashboard/gate/", dashboard_gate, name="dashboard-gate"),
]
