"""Part 2 of the reviews pages: the generation chain's status, eval proposals, and the regression suite.

Included from reviews/urls.py, so every name here is in the `reviews:` namespace.
"""

import difflib
import json
from dataclasses import dataclass, field

from django.contrib import messages
from django.db.models import Count, Prefetch, Q
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import path
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_POST
from django_htmx.http import HttpResponseStopPolling, trigger_client_event

from loopsite.roles import APPROVER, ENGINEER, REVIEWER, has_role, require_role
from runs.forms import AgentFilterForm

from .backtest import backtest_states, rerun_backtest
from .eval_forms import ApproveForm, EvalCaseForm, RejectForm
from .generation import GenerationError, latest_chain, latest_insights, request_generation, retry_job
from .models import (
    ApprovalReasonRequired,
    Cycle,
    EvalCase,
    EvalCaseStateError,
    Feedback,
    FeedbackItem,
    GenerationJob,
    StaleEvalCaseError,
)
from .suite import promptfoo_yaml, suite_cases

ANY_ROLE = (REVIEWER, APPROVER, ENGINEER)


# --- the generation panel on the cycle page ------------------------------------------------------------


@dataclass
class Step:
    label: str
    job: GenerationJob | None
    waiting: bool = False  # the previous step has not finished yet

    @property
    def elapsed_seconds(self) -> float | None:
        if self.job is None or self.job.started_at is None:
            return None
        end = self.job.finished_at or timezone.now()
        return (end - self.job.started_at).total_seconds()


@dataclass
class InsightRow:
    run: object
    feedback: Feedback | None
    insights: list = field(default_factory=list)


def _approved_feedback_by_run(cycle: Cycle) -> dict[int, Feedback]:
    return {
        fb.run_id: fb
        for fb in Feedback.objects.filter(cycle=cycle, is_merged=True, status=Feedback.Status.APPROVED)
        .select_related("approved_by")
        .prefetch_related(Prefetch("items", queryset=FeedbackItem.objects.order_by("position", "id")))
    }


def generation_panel_context(cycle: Cycle, user) -> dict:
    chain = latest_chain(cycle)
    insights_job = chain[0] if chain else None
    evals_job = chain[-1] if len(chain) > 1 else None
    steps = [
        Step("LLM insights over the cycle's runs", insights_job),
        Step("Eval proposals from approved feedback", evals_job,
             waiting=evals_job is None and insights_job is not None and insights_job.is_active),
    ]
    active = any(job.is_active for job in chain)
    feedback = _approved_feedback_by_run(cycle)
    rows: dict[int, InsightRow] = {}
    for insight in latest_insights(cycle):
        rows.setdefault(insight.run_id, InsightRow(run=insight.run, feedback=feedback.get(insight.run_id)))
        rows[insight.run_id].insights.append(insight)
    counts = dict(cycle.eval_cases.values_list("status").annotate(n=Count("pk")).values_list("status", "n"))
    return {
        "cycle": cycle,
        "steps": steps if chain else [],
        "active": active,
        "approved_runs": len(feedback),
        "can_generate": has_role(user, APPROVER) and bool(feedback) and not active,
        "can_retry": has_role(user, APPROVER, ENGINEER),
        "insight_rows": list(rows.values()),
        "case_counts": counts,
        "case_total": sum(counts.values()),
    }


def _get_cycle(request, pk: int) -> Cycle:
    require_role(request.user, *ANY_ROLE)
    return get_object_or_404(Cycle.objects.select_related("harness"), pk=pk)


def generation(request, pk: int):
    """GET: the chain's status (the polled partial for HTMX, a page otherwise). POST: start the chain."""
    cycle = _get_cycle(request, pk)
    error = ""
    if request.method == "POST":
        require_role(request.user, APPROVER)
        try:
            request_generation(cycle=cycle, user=request.user)
        except GenerationError as exc:
            error = str(exc)
        if not request.htmx:
            if error:
                messages.error(request, error)
            return redirect(cycle)
    context = {**generation_panel_context(cycle, request.user), "error": error}
    if request.htmx:
        response = render(request, "reviews/_generation.html", context)
        if request.method == "GET" and not context["active"]:
            response.status_code = HttpResponseStopPolling.status_code
        return response
    return render(request, "reviews/generation_page.html", context)


@require_POST
def generation_retry(request, pk: int):
    job = get_object_or_404(GenerationJob.objects.select_related("cycle"), pk=pk)
    require_role(request.user, APPROVER, ENGINEER)
    retried = retry_job(job=job, user=request.user)
    if not request.htmx:
        if retried:
            messages.success(request, f"{job.get_kind_display()} queued again.")
        else:
            messages.error(request, "Only a failed step can be retried.")
        return redirect(job.cycle)
    context = {**generation_panel_context(job.cycle, request.user),
               "error": "" if retried else "Only a failed step can be retried."}
    return render(request, "reviews/_generation.html", context)


# --- eval proposals ---------------------------------------------------------------------------------------


def _cases():
    return EvalCase.objects.select_related(
        "cycle", "source_run__question", "approved_by", "job"
    ).prefetch_related(
        Prefetch("source_feedback", queryset=Feedback.objects.select_related("approved_by").prefetch_related(
            Prefetch("items", queryset=FeedbackItem.objects.order_by("position", "id")),
            Prefetch("merged_from", queryset=Feedback.objects.select_related("reviewer")),
        )),
        "source_insights",
    ).annotate(edits=Count("revisions", distinct=True))


STATUS_FILTERS = [("", "All"), *EvalCase.Status.choices]


def eval_list(request, pk: int):
    cycle = _get_cycle(request, pk)
    status = request.GET.get("status", "")
    cases = _cases().filter(cycle=cycle).order_by("eval_id")
    if status in EvalCase.Status.values:
        cases = cases.filter(status=status)
    cases = list(cases)
    states = backtest_states(cases)
    for case in cases:
        case.bt = states[case.pk]
    counts = dict(cycle.eval_cases.values_list("status").annotate(n=Count("pk")).values_list("status", "n"))
    return render(request, "reviews/evals_list.html", {
        "cycle": cycle, "cases": cases, "status": status, "counts": counts,
        "filters": [(value, label, counts.get(value, 0) if value else sum(counts.values()))
                    for value, label in STATUS_FILTERS],
        "is_approver": has_role(request.user, APPROVER), "reject_form": RejectForm(),
    })


def _get_case(request, pk: int) -> EvalCase:
    require_role(request.user, *ANY_ROLE)
    return get_object_or_404(_cases(), pk=pk)


def _diff_lines(before, after) -> list[tuple[str, str]]:
    def text(value) -> list[str]:
        if isinstance(value, str):
            return value.splitlines()
        return json.dumps(value, indent=2, ensure_ascii=False).splitlines()

    lines = []
    for line in difflib.unified_diff(text(before), text(after), lineterm="", n=2):
        if line.startswith(("---", "+++")):
            continue
        kind = {"+": "add", "-": "del", "@": "hunk"}.get(line[:1], "same")
        lines.append((kind, line))
    return lines


def _history(case: EvalCase) -> list[dict]:
    entries = []
    for revision in case.revisions.select_related("edited_by"):
        fields = [name for name in EvalCase.EDITABLE_FIELDS if revision.before.get(name) != revision.after.get(name)]
        entries.append({
            "revision": revision, "by": revision.edited_by.get_username() if revision.edited_by_id else
            (revision.note or "the generator"),
            "diffs": [(name.replace("_", " "), _diff_lines(revision.before.get(name, ""), revision.after.get(name, "")))
                      for name in fields],
        })
    return entries


def _case_context(request, case: EvalCase, *, form: EvalCaseForm | None = None, reject_form: RejectForm | None = None,
                  approve_form: ApproveForm | None = None, error: str = "", note: str = "") -> dict:
    is_approver = has_role(request.user, APPROVER)
    editable = is_approver and case.status in EvalCase.EDITABLE_STATUSES
    return {
        "case": case, "cycle": case.cycle, "is_approver": is_approver, "editable": editable,
        "form": (form or EvalCaseForm.for_case(case)) if editable else None,
        "reject_form": reject_form or RejectForm(), "approve_form": approve_form or ApproveForm(),
        "history": _history(case), "error": error, "note": note, **_backtest_context(request, case),
    }


def _backtest_context(request, case: EvalCase) -> dict:
    return {"case": case, "backtest": case.backtest_state(), "can_rerun": has_role(request.user, APPROVER, ENGINEER)}


def _case_response(request, case: EvalCase, *, event: str = "", **extra):
    case = _get_case(request, case.pk)  # fresh, with its annotations
    context = _case_context(request, case, **extra)
    if request.htmx:
        response = render(request, "reviews/evals_detail.html#eval-case", context)
        return trigger_client_event(response, event, {"case": case.pk, "status": case.status}) if event else response
    return render(request, "reviews/evals_detail.html", context)


@require_GET
def eval_detail(request, pk: int):
    """The case page; HTMX GETs get the case fragment (refreshes after changes)."""
    case = _get_case(request, pk)
    context = _case_context(request, case)
    if request.htmx:
        return render(request, "reviews/evals_detail.html#eval-case", context)
    return render(request, "reviews/evals_detail.html", context)


@require_POST
def eval_edit(request, pk: int):
    case = _get_case(request, pk)
    require_role(request.user, APPROVER)
    form = EvalCaseForm(request.POST, auto_id="case-%s")
    if not form.is_valid():
        return _case_response(request, case, form=form, error="Not saved: fix the marked fields.")
    try:
        changed = case.edit(by=request.user, content=form.content(), edits_seen=form.cleaned_data["edits_seen"])
    except StaleEvalCaseError:
        return _case_response(request, case, form=form,
                              error="Not saved: someone else edited this case since you opened it. "
                                    "Your text is kept below; the history shows their change.")
    except EvalCaseStateError as exc:
        return _case_response(request, case, error=f"Not saved: {exc}")
    if not request.htmx:
        messages.success(request, "Saved." if changed else "No changes to save.")
        return redirect(case)
    return _case_response(request, case, event="evalCaseChanged" if changed else "",
                          note="Saved." if changed else "No changes to save.")


def _after_decision(request, case: EvalCase, *, note: str, error: str = "", reject_form=None, approve_form=None):
    """Answer a decision from the list (its card) or from the case page (the case fragment)."""
    next_url = request.POST.get("next", "")
    if not request.htmx:
        (messages.error if error else messages.success)(request, error or note)
        if next_url.startswith("/") and url_has_allowed_host_and_scheme(next_url, allowed_hosts={request.get_host()}):
            return redirect(next_url)
        return redirect(case)
    if request.POST.get("from") == "list":
        fresh = _get_case(request, case.pk)
        fresh.bt = fresh.backtest_state()
        response = render(request, "reviews/evals_list.html#case-card", {
            "case": fresh, "cycle": fresh.cycle, "is_approver": True, "card_error": error, "card_note": note,
            "reject_form": reject_form or RejectForm(), "approve_form": approve_form,
        })
    else:
        return _case_response(request, case, event="" if error else "evalCaseChanged", note="" if error else note,
                              error=error, reject_form=reject_form, approve_form=approve_form)
    return response if error else trigger_client_event(response, "evalCaseChanged", {"case": case.pk})


def _decide(request, pk: int, action: str):
    case = _get_case(request, pk)
    require_role(request.user, APPROVER)
    reject_form = approve_form = None
    try:
        if action == "approve":
            approve_form = ApproveForm(request.POST)
            if not approve_form.is_valid():
                return _after_decision(request, case, note="", error="Not approved: the reason is too long.",
                                       approve_form=approve_form)
            case.approve(by=request.user, reason=approve_form.cleaned_data["reason"])
        elif action == "reject":
            reject_form = RejectForm(request.POST)
            if not reject_form.is_valid():
                return _after_decision(request, case, note="", error="Say why this case is rejected.",
                                       reject_form=reject_form)
            case.reject(by=request.user, reason=reject_form.cleaned_data["reason"])
        else:
            getattr(case, action)(by=request.user)
    except ApprovalReasonRequired as exc:
        if approve_form is not None:
            approve_form.add_error("reason", "Write why you approve it anyway.")
        return _after_decision(request, case, note="", approve_form=approve_form, error=(
            f"Not approved: {exc.concern} Approving it anyway needs a written reason: fill in "
            f"“Reason for approving anyway”."))
    except EvalCaseStateError as exc:
        return _after_decision(request, case, note="", error=str(exc), reject_form=reject_form,
                               approve_form=approve_form)
    notes = {"approve": "Approved: the case is in the regression suite.", "reject": "Rejected.",
             "retire": "Retired from the suite.", "restore": "Restored to the suite."}
    return _after_decision(request, case, note=notes[action])


@require_POST
def eval_approve(request, pk: int):
    return _decide(request, pk, "approve")


@require_POST
def eval_reject(request, pk: int):
    return _decide(request, pk, "reject")


@require_POST
def eval_retire(request, pk: int):
    return _decide(request, pk, "retire")


@require_POST
def eval_restore(request, pk: int):
    return _decide(request, pk, "restore")


@require_GET
def eval_backtest(request, pk: int):
    """The back-test panel: for HTMX the polled partial (polling stops once nothing is queued or running),
    otherwise the case page, where the panel is at the top."""
    case = _get_case(request, pk)
    if not request.htmx:
        return redirect(case)
    context = _backtest_context(request, case)
    response = render(request, "reviews/evals_detail.html#backtest", context)
    if not context["backtest"].active:  # finished: stop polling, and refresh the case (approval may need a reason now)
        response.status_code = HttpResponseStopPolling.status_code
        trigger_client_event(response, "backtestFinished", {"case": case.pk})
    return response


@require_POST
def eval_backtest_rerun(request, pk: int):
    """"Re-run back-test": queue it for the worker (no model call here) and answer with the polling panel."""
    case = _get_case(request, pk)
    require_role(request.user, APPROVER, ENGINEER)
    rerun_backtest(case=case, user=request.user)
    if not request.htmx:
        messages.success(request, "Back-test queued: the worker runs it through promptfoo.")
        return redirect(case)
    return render(request, "reviews/evals_detail.html#backtest", _backtest_context(request, case))


# --- the regression suite ------------------------------------------------------------------------------------


@require_GET
def suite(request):
    require_role(request.user, *ANY_ROLE)
    show = request.GET.get("show", "active")
    statuses = {"active": [EvalCase.Status.APPROVED], "retired": [EvalCase.Status.RETIRED]}.get(
        show, [EvalCase.Status.APPROVED, EvalCase.Status.RETIRED])
    agent_filter = AgentFilterForm(request.GET or None)
    cases = (
        agent_filter.filter(_cases(), "cycle__harness__agent").filter(status__in=statuses)
        .order_by("status", "-cycle__created_at", "cycle_id", "eval_id")
    )
    cases = list(cases)
    states = backtest_states(cases)
    for case in cases:
        case.bt = states[case.pk]
    totals = agent_filter.filter(EvalCase.objects, "cycle__harness__agent").aggregate(
        active=Count("pk", filter=Q(status=EvalCase.Status.APPROVED)),
        retired=Count("pk", filter=Q(status=EvalCase.Status.RETIRED)),
    )
    return render(request, "reviews/suite.html", {
        "cases": cases, "show": show, "totals": totals, "is_approver": has_role(request.user, APPROVER),
        "agent_filter": agent_filter, "agent": agent_filter.chosen,
    })


@require_GET
def suite_download(request):
    require_role(request.user, *ANY_ROLE)
    cases = AgentFilterForm(request.GET or None).filter(suite_cases(), "cycle__harness__agent")
    response = HttpResponse(promptfoo_yaml(cases=cases), content_type="application/yaml; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="loopsite-suite-{timezone.now():%Y%m%d-%H%M}.yaml"'
    return response


urlpatterns = [
    path("cycles/<int:pk>/generation/", generation, name="generation"),
    path("generation/<int:pk>/retry/", generation_retry, name="generation-retry"),
    path("cycles/<int:pk>/evals/", eval_list, name="evals"),
    path("evals/<int:pk>/", eval_detail, name="eval-detail"),
    path("evals/<int:pk>/edit/", eval_edit, name="eval-edit"),
    path("evals/<int:pk>/approve/", eval_approve, name="eval-approve"),
    path("evals/<int:pk>/reject/", eval_reject, name="eval-reject"),
    path("evals/<int:pk>/retire/", eval_retire, name="eval-retire"),
    path("evals/<int:pk>/restore/", eval_restore, name="eval-restore"),
    path("evals/<int:pk>/backtest/", eval_backtest, name="eval-backtest"),
    path("evals/<int:pk>/backtest/run/", eval_backtest_rerun, name="eval-backtest-rerun"),
    path("suite/", suite, name="suite"),
    path("suite/promptfoo.yaml", suite_download, name="suite-download"),
]
