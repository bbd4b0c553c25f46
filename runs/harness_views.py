"""The harness pages: versions (tree, pass-rate chart, diff), one version, the editor, promotion."""

import json
from collections import Counter

from django.contrib import messages
from django.core.paginator import Paginator
from django.db import IntegrityError, transaction
from django.db.models import Count
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import path, reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django_htmx.http import (HttpResponseClientRedirect, HttpResponseClientRefresh, HttpResponseStopPolling,
                              trigger_client_event)

from loopsite.markdown import render_markdown
from loopsite.models import AuditEvent
from loopsite.roles import APPROVER, ENGINEER, REVIEWER, has_role, role_required

from . import display, promotion
from .handoffs import DraftError, latest_handoff_for, request_draft
from .forms import AgentFilterForm
from .harness_forms import HarnessPairForm, HarnessVersionForm, PromoteForm
from .models import Dataroom, Harness, HarnessDraft, HarnessFrozenError, HarnessStateError, Question, Run
from .promotion import PromotionRefused
from .versions import harness_diff as diff_fields
from .versions import pass_rate_chart, version_tree
from .work import start_batch

RUNS_PER_PAGE = 25

reader_required = role_required(REVIEWER, APPROVER, ENGINEER)


# ---------------------------------------------------------------- versions


@reader_required
@require_GET
def harness_list(request):
    """Every version (or one agent's: ?agent=slug), as a tree, with the pass rate of each on its agent's suite."""
    agent_filter = AgentFilterForm(request.GET or None)
    # Meta.ordering does not apply to GROUP BY queries: order explicitly.
    harnesses = list(
        agent_filter.filter(Harness.objects.select_related("parent", "author", "agent"), "agent")
        .annotate(run_count=Count("runs")).defer("system_prompt", "parent__system_prompt").order_by("-created_at", "-id")
    )
    # One point per version (of the chosen agent), on its agent's current suite.
    history = promotion.pass_rate_history(agent=agent_filter.chosen)
    latest_rate = {point.version: point for point in history}
    rows = version_tree(harnesses)
    for row in rows:
        row.gate = latest_rate.get(row.harness.version)
    # One line is one agent's: with points of several agents and no agent chosen, the chart waits for a choice.
    agent_of = {h.version: h.agent_id for h in harnesses}
    chart_agents = {agent_of.get(point.version) for point in history}
    newest = harnesses[0] if harnesses else None
    context = {
        "harnesses": harnesses,
        "tree": rows,
        "agent_filter": agent_filter,
        "chart": pass_rate_chart(history) if len(chart_agents) <= 1 else None,
        "chart_agents": len(chart_agents),
        "promoted_versions": [h for h in harnesses if h.status == Harness.Status.PROMOTED],  # one per agent
        "diff_a": (newest.parent.version if newest and newest.parent else newest.version if newest else ""),
        "diff_b": newest.version if newest else "",
        "is_engineer": has_role(request.user, ENGINEER),
    }
    return render(request, "runs/harness_list.html", context)


@reader_required
@require_GET
def harness_diff(request):
    form = HarnessPairForm(request.GET or None)
    a = b = diffs = None
    if form.is_bound and form.is_valid():
        a, b = form.cleaned_data["a"], form.cleaned_data["b"]
        a, b = Harness.objects.get(pk=a.pk), Harness.objects.get(pk=b.pk)  # the form loaded only the labels
        diffs = diff_fields(a, b)
    context = {"form": form, "a": a, "b": b, "diffs": diffs}
    if request.htmx:
        return render(request, "runs/harness_diff.html#diff-result", context)
    return render(request, "runs/harness_diff.html", context)


@role_required(ENGINEER)
@require_POST
def harness_start_cycle(request):
    """One click: the default questions on the promoted version and the first dataroom, as a new cycle."""
    harness = Harness.objects.filter(status=Harness.Status.PROMOTED).first()
    dataroom = Dataroom.objects.first()
    questions = list(Question.objects.filter(is_default=True))
    wanted = request.POST.get("harness", "")
    problem = ""
    if harness is None:
        problem = "No harness version is promoted: promote one first."
    elif wanted and wanted != harness.version:
        problem = f"{wanted} is no longer the promoted version ({harness.version} is); nothing was started."
    elif dataroom is None:
        problem = "There is no dataroom to run on: upload one first."
    elif not questions:
        problem = "No question is marked as a default: mark some in the question bank first."
    if problem:
        messages.error(request, problem)
        return redirect("runs:harness-list")
    with transaction.atomic():
        batch = start_batch(harness=harness, dataroom=dataroom, questions=questions, user=request.user)
        AuditEvent.record(
            actor=request.user, action="batch.start", obj=batch,
            summary=f"Started a new cycle: {len(questions)} default question(s) on promoted {harness.version}",
            after={"harness": harness.version, "dataroom": dataroom.name, "questions": [q.pk for q in questions]},
        )
    cycle = batch.cycles.order_by("-pk").first()
    messages.success(request, f"Started {len(questions)} run(s) of {harness.version} on {dataroom.name}.")
    return redirect(cycle) if cycle is not None else redirect(reverse("runs:list") + f"?batch={batch.pk}")


# ---------------------------------------------------------------- one version


def _promotion_context(request, harness: Harness, form: PromoteForm | None = None) -> dict:
    can_promote = has_role(request.user, APPROVER) and harness.status != Harness.Status.PROMOTED
    comparison = promotion.comparison_for(harness) if can_promote else None
    return {
        "harness": harness,
        "can_promote": can_promote,
        "comparison": comparison,
        "needs_reason": comparison is None or comparison.override_needed,
        "promote_form": form or PromoteForm(),
    }


@reader_required
@require_GET
def harness_detail(request, version):
    harness = get_object_or_404(Harness.objects.select_related("parent", "author"), version=version)
    return _render_detail(request, harness)


def _render_detail(request, harness: Harness, *, promote_form: PromoteForm | None = None):
    runs = harness.runs.select_related("dataroom", "question").defer("final_answer", "last_error")
    page = Paginator(runs, RUNS_PER_PAGE).get_page(request.GET.get("page"))
    status_counts = Counter(dict(harness.runs.values_list("status").annotate(n=Count("id")).order_by()))
    run_total = sum(status_counts.values())
    context = {
        **_promotion_context(request, harness, promote_form),
        "page": page,
        "runs": page.object_list,
        "status_counts": [(label, status_counts.get(value, 0)) for value, label in Run.Status.choices],
        "children": harness.children.only("id", "version", "status"),
        "model_settings": display.pretty_json(harness.model_settings),
        "tool_policy": display.pretty_json(harness.tool_policy),
        "eval_metadata": display.pretty_json(harness.eval_metadata),
        "is_engineer": has_role(request.user, ENGINEER),
        "editable": harness.status == Harness.Status.DRAFT and run_total == 0,
    }
    return render(request, "runs/harness_detail.html", context)


@role_required(APPROVER)
@require_POST
def harness_promote(request, version):
    harness = get_object_or_404(Harness.objects.select_related("parent", "author"), version=version)
    form = PromoteForm(request.POST)
    if form.is_valid():
        try:
            harness.promote(by=request.user, comparison=promotion.comparison_for(harness),
                            override_reason=form.cleaned_data["override_reason"])
        except PromotionRefused as exc:
            form.add_error(None, str(exc))
        else:
            messages.success(request, f"Promoted {harness.version}." + (
                " The override reason is in the audit log." if form.cleaned_data["override_reason"].strip() else ""))
            if request.htmx:
                return HttpResponseClientRedirect(harness.get_absolute_url())
            return redirect(harness)
    if request.htmx:
        return render(request, "runs/harness_detail.html#promote-panel", _promotion_context(request, harness, form))
    return _render_detail(request, harness, promote_form=form)


# ---------------------------------------------------------------- the editor


def _editor_response(request, context: dict):
    if request.htmx:
        return render(request, "runs/harness_new.html#editor", context)
    return render(request, "runs/harness_new.html", context)


def _editor_context(*, form: HarnessVersionForm, before: Harness, default_version: str, editing: Harness | None,
                    stored_handoff: str | None, show_diff: bool, **extra) -> dict:
    candidate = form.candidate(default_version=default_version) if show_diff and form.is_bound else None
    return {
        "form": form, "parent": before, "editing": editing, "default_version": default_version,
        "stored_handoff": stored_handoff,
        "stored_handoff_html": render_markdown(stored_handoff) if stored_handoff else "",
        "diffs": diff_fields(before, candidate) if candidate is not None else None,
        "show_diff": show_diff,
        "draft": None, "draft_error": "", "draft_raw": "", "pending": None, "offered": None,
        **extra,
    }


def _draft(request, *, form: HarnessVersionForm, before: Harness, base: Harness, editing: Harness | None,
           default_version: str, stored_handoff: str | None):
    """Queue "Draft from handoff" for the worker (no model call here) and answer with the editor as the
    engineer left it, plus the draft's progress panel, which polls until the proposal is there."""
    form.is_valid()
    blocking = [name for name in ("system_prompt", "tool_policy") if name in form.errors]
    context = {"form": form, "before": before, "default_version": default_version, "editing": editing,
               "stored_handoff": stored_handoff}
    if blocking:
        return _editor_response(request, _editor_context(
            **context, show_diff=False,
            draft_error="Fix the errors in the system prompt and tool policy first: the draft starts from them."))
    data = form.cleaned_data
    try:
        job = request_draft(base=before, version=data.get("version") or default_version,
                            system_prompt=data["system_prompt"], tool_policy=data["tool_policy"],
                            handoff=data.get("handoff_markdown") or "", user=request.user)
    except DraftError as exc:
        return _editor_response(request, _editor_context(**context, show_diff=True, draft_error=str(exc)))
    bound = request.POST.copy()
    bound["draft_job"] = str(job.pk)
    context["form"] = HarnessVersionForm(bound, base=base, editing=editing)
    context["form"].is_valid()
    return _editor_response(request, _editor_context(**context, show_diff=True, pending=job))


def _apply_draft(request, *, form: HarnessVersionForm, before: Harness, base: Harness, editing: Harness | None,
                 default_version: str, stored_handoff: str | None, replace: bool):
    """The queued draft has finished (or a browser without JavaScript asks): put its proposal in the editor.
    The proposal replaces the prompt and policy only while the editor still holds what the draft started
    from (or the engineer asks for it with `replace`); otherwise their edits stay and the proposal is offered."""
    form.is_valid()
    context = {"form": form, "before": before, "default_version": default_version, "editing": editing,
               "stored_handoff": stored_handoff}
    pk = form.cleaned_data.get("draft_job")
    job = get_object_or_404(HarnessDraft, pk=pk, base=before) if pk else None
    if job is None:
        return _editor_response(request, _editor_context(**context, show_diff=True,
                                                         draft_error="No draft was asked for: click “Draft from handoff”."))
    if job.is_active:
        return _editor_response(request, _editor_context(**context, show_diff=True, pending=job))
    if job.status == HarnessDraft.Status.FAILED:
        return _editor_response(request, _editor_context(**context, show_diff=True, draft_error=job.last_error,
                                                         draft_raw=job.raw_output))
    data = form.cleaned_data
    unchanged = ("system_prompt" in data and "tool_policy" in data
                 and job.started_from(system_prompt=data["system_prompt"], tool_policy=data["tool_policy"]))
    if not (unchanged or replace):
        return _editor_response(request, _editor_context(**context, show_diff=True, offered=job))
    filled = request.POST.copy()
    filled["system_prompt"] = job.proposed_prompt
    filled["tool_policy"] = json.dumps(job.proposed_policy, indent=2, ensure_ascii=False)
    filled["drafted"] = json.dumps(job.provenance(), ensure_ascii=False)
    filled["draft_job"] = ""
    form = HarnessVersionForm(filled, base=base, editing=editing)
    form.is_valid()
    context["form"] = form
    return _editor_response(request, _editor_context(**context, show_diff=True, draft=job))


def _draft_action(request, action: str, **kwargs):
    """The editor's draft buttons: ask for a draft, take a finished one in, or replace edits with it."""
    if action == "draft":
        return _draft(request, **kwargs)
    return _apply_draft(request, replace=action == "use-draft", **kwargs)


DRAFT_ACTIONS = ("draft", "apply-draft", "use-draft")


@role_required(ENGINEER)
@require_GET
def harness_draft_status(request, version, pk):
    """A queued "Draft from handoff": for HTMX the polled progress panel (it stops polling once the draft has
    finished and tells the editor, which then takes the proposal in); otherwise a page with its outcome.
    The page polls too (`?on=page`): once the draft has finished it reloads itself to show the proposal."""
    job = get_object_or_404(HarnessDraft.objects.select_related("base", "requested_by"), pk=pk, base__version=version)
    on_page = request.GET.get("on") == "page"
    context = {"job": job, "in_editor": bool(request.htmx) and not on_page}
    if request.htmx and on_page and not job.is_active:
        return HttpResponseClientRefresh()
    if request.htmx:
        response = render(request, "runs/_harness_draft_status.html", context)
        if not job.is_active:
            response.status_code = HttpResponseStopPolling.status_code
            trigger_client_event(response, "harnessDraftFinished", {"draft": job.pk, "status": job.status})
        return response
    return render(request, "runs/harness_draft.html", context)


@role_required(ENGINEER)
@require_http_methods(["GET", "POST"])
def harness_new(request, version):
    """vN+1 from vN: edit prompt, policy and model settings beside the handoff; preview the diff; save a draft."""
    parent = get_object_or_404(Harness.objects.select_related("parent"), version=version)
    default_version = parent.next_version_label()
    stored_handoff = latest_handoff_for(parent)
    common = {"before": parent, "default_version": default_version, "editing": None, "stored_handoff": stored_handoff}
    if request.method == "GET":
        form = HarnessVersionForm(base=parent, initial=HarnessVersionForm.initial_for(
            parent, version=default_version, handoff=stored_handoff))
        return _editor_response(request, _editor_context(form=form, **common, show_diff=False))

    form = HarnessVersionForm(request.POST, base=parent)
    action = request.POST.get("action", "save")
    if action in DRAFT_ACTIONS:
        return _draft_action(request, action, form=form, base=parent, **common)
    if action == "save" and form.is_valid():
        data = form.cleaned_data
        try:
            child = parent.create_child(
                by=request.user, version=data["version"], system_prompt=data["system_prompt"],
                tool_policy=data["tool_policy"], model_settings=form.model_settings(), note=data["note"],
                drafted=data["drafted"],
            )
        except IntegrityError:
            form.add_error("version", f"Version {data['version']} already exists; labels are unique.")
        else:
            messages.success(request, f"Saved {child.version} as a draft derived from {parent.version}.")
            if request.htmx:
                return HttpResponseClientRedirect(child.get_absolute_url())
            return redirect(child)
    form.is_valid()
    return _editor_response(request, _editor_context(form=form, **common, show_diff=True))


@role_required(ENGINEER)
@require_http_methods(["GET", "POST"])
def harness_edit(request, version):
    """Change a draft that has no runs yet; a version with runs is refused (create a child instead)."""
    harness = get_object_or_404(Harness.objects.select_related("parent"), version=version)
    if harness.status != Harness.Status.DRAFT or harness.has_runs:
        reason = "already has runs" if harness.has_runs else f"is {harness.get_status_display().lower()}"
        messages.error(request, f"Harness {harness.version} {reason}, so it cannot be edited. "
                                f"Create a new version from it instead.")
        return redirect("runs:harness-new", version=harness.version)
    stored_handoff = latest_handoff_for(harness.parent) if harness.parent else None
    common = {"before": harness, "default_version": harness.version, "editing": harness, "stored_handoff": stored_handoff}
    if request.method == "GET":
        form = HarnessVersionForm(base=harness, editing=harness, initial=HarnessVersionForm.initial_for(
            harness, version=harness.version, handoff=stored_handoff))
        return _editor_response(request, _editor_context(form=form, **common, show_diff=False))

    form = HarnessVersionForm(request.POST, base=harness, editing=harness)
    action = request.POST.get("action", "save")
    if action in DRAFT_ACTIONS:
        return _draft_action(request, action, form=form, base=harness, **common)
    if action == "save" and form.is_valid():
        try:
            changed = harness.edit_config(by=request.user, system_prompt=form.cleaned_data["system_prompt"],
                                          tool_policy=form.cleaned_data["tool_policy"],
                                          model_settings=form.model_settings())
        except (HarnessFrozenError, HarnessStateError) as exc:
            messages.error(request, str(exc))
            return redirect(harness)
        messages.success(request, f"Saved {', '.join(c.replace('_', ' ') for c in changed)} of {harness.version}."
                         if changed else "Nothing changed.")
        if request.htmx:
            return HttpResponseClientRedirect(harness.get_absolute_url())
        return redirect(harness)
    form.is_valid()
    return _editor_response(request, _editor_context(form=form, **common, show_diff=True))


# ---------------------------------------------------------------- URLs (included by runs/urls.py)

urlpatterns = [
    path("harnesses/", harness_list, name="harness-list"),
    path("harnesses/diff/", harness_diff, name="harness-diff"),
    path("harnesses/cycle/", harness_start_cycle, name="harness-start-cycle"),
    path("harnesses/<str:version>/", harness_detail, name="harness-detail"),
    path("harnesses/<str:version>/new/", harness_new, name="harness-new"),
    path("harnesses/<str:version>/edit/", harness_edit, name="harness-edit"),
    path("harnesses/<str:version>/promote/", harness_promote, name="harness-promote"),
    path("harnesses/<str:version>/drafts/<int:pk>/", harness_draft_status, name="harness-draft"),
]
