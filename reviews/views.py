from dataclasses import dataclass, field

from django.contrib import messages
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import Exists, OuterRef, Prefetch, Q
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST
from django_htmx.http import trigger_client_event

from loopsite.roles import APPROVER, ENGINEER, REVIEWER, has_role, require_role
from runs.forms import AgentFilterForm
from runs.models import Run

from .forms import AssignForm, FeedbackDraft, NewCycleForm, SendBackForm, TraceCycleForm, merged_content
from .models import (
    Cycle,
    Feedback,
    FeedbackItem,
    FeedbackStateError,
    ReviewAssignment,
    StaleFeedbackError,
    approve_run,
    can_see_others_feedback,
    get_or_create_feedback,
)
from .approval import disagreement, pending_reviewers
from .inbox import review_neighbours, your_work_by_cycle
from .stage import stage_of, with_stage
from .trace import evidence_html, find_claim

ANY_ROLE = (REVIEWER, APPROVER, ENGINEER)


def _get_cycle(request, pk: int) -> Cycle:
    require_role(request.user, *ANY_ROLE)
    return get_object_or_404(Cycle.objects.select_related("harness"), pk=pk)


def _get_cycle_run(request, pk: int, run_pk: int) -> tuple[Cycle, Run]:
    cycle = _get_cycle(request, pk)
    run = get_object_or_404(cycle.runs.select_related("harness", "question", "dataroom"), pk=run_pk)
    return cycle, run


def _int(value, default: int = 0) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _with_items():
    return Prefetch("items", queryset=FeedbackItem.objects.order_by("position", "id"))


# --- cycles -----------------------------------------------------------------------------------


def cycle_list(request, form: NewCycleForm | None = None, trace_form: TraceCycleForm | None = None):
    require_role(request.user, *ANY_ROLE)
    agent_filter = AgentFilterForm(request.GET or None)
    cycles = list(with_stage(agent_filter.filter(Cycle.objects.select_related("harness__agent", "created_by"),
                                                 "harness__agent"))[:100])
    can_create = has_role(request.user, ENGINEER, APPROVER)
    work = your_work_by_cycle(request.user)
    rows = []
    progress_of = Cycle.progress_of(cycle.pk for cycle in cycles)
    for cycle in cycles:
        progress = progress_of[cycle.pk]
        rows.append((cycle, progress, stage_of(cycle, progress=progress), work.get(cycle.pk, "")))
    return render(request, "reviews/cycle_list.html", {
        "rows": rows,
        "form": (form or NewCycleForm(agent=agent_filter.chosen)) if can_create else None,
        "trace_form": (trace_form or TraceCycleForm()) if can_create else None,
        "agent_filter": agent_filter,
    })


@require_POST
def cycle_create(request):
    require_role(request.user, ENGINEER, APPROVER)
    form = NewCycleForm(request.POST)
    if not form.is_valid():
        return cycle_list(request, form=form)
    cycle = Cycle.objects.create_from_runs(runs=form.cleaned_data["runs"], name=form.cleaned_data["name"], user=request.user)
    messages.success(request, f"Cycle “{cycle.name}” created.")
    return redirect(cycle)


@require_POST
def cycle_create_from_traces(request):
    """A cycle from an external agent's imported runs of one version (optionally a time range)."""
    require_role(request.user, ENGINEER, APPROVER)
    form = TraceCycleForm(request.POST)
    if not form.is_valid():
        return cycle_list(request, trace_form=form)
    harness = form.cleaned_data["harness"]
    name = form.cleaned_data["name"] or f"{harness.agent.name} {harness.agent_version} · {timezone.localdate():%Y-%m-%d}"
    cycle = Cycle.objects.create_from_runs(runs=form.runs(), name=name[:200], user=request.user)
    messages.success(request, f"Cycle “{cycle.name}” created from {cycle.runs.count()} imported runs.")
    return redirect(cycle)


@dataclass
class QueueRow:
    run: Run
    assignees: list = field(default_factory=list)
    feedback: list[Feedback] = field(default_factory=list)
    merged: Feedback | None = None
    mine: Feedback | None = None
    assign_form: AssignForm | None = None

    @property
    def is_reviewed(self) -> bool:
        return any(fb.status in Feedback.REVIEWED_STATUSES for fb in self.feedback)

    @property
    def is_approved(self) -> bool:
        return self.merged is not None and self.merged.status == Feedback.Status.APPROVED

    @property
    def has_submissions(self) -> bool:
        return self.is_reviewed

    STATE_LABELS = {
        "approved": "Approved", "submitted": "Submitted", "sent_back": "Sent back",
        "draft": "In progress", "unreviewed": "Not started",
    }

    @property
    def state_label(self) -> str:
        return self.STATE_LABELS[self.state]

    @property
    def state(self) -> str:
        if self.is_approved:
            return "approved"
        if self.is_reviewed:
            return "submitted"
        if any(fb.status == Feedback.Status.SENT_BACK for fb in self.feedback):
            return "sent_back"
        if self.feedback:
            return "draft"
        return "unreviewed"


def _queue_rows(cycle: Cycle, user, runs) -> list[QueueRow]:
    runs = list(runs)
    run_ids = [run.pk for run in runs]
    rows = {run.pk: QueueRow(run=run) for run in runs}
    for assignment in ReviewAssignment.objects.filter(cycle=cycle, run_id__in=run_ids).select_related("reviewer"):
        rows[assignment.run_id].assignees.append(assignment.reviewer)
    for feedback in Feedback.objects.filter(cycle=cycle, run_id__in=run_ids).select_related("reviewer"):
        row = rows[feedback.run_id]
        if feedback.is_merged:
            row.merged = feedback
        else:
            row.feedback.append(feedback)
            if feedback.reviewer_id == user.pk:
                row.mine = feedback
    if has_role(user, ENGINEER, APPROVER):
        for row in rows.values():
            row.assign_form = AssignForm(exclude_ids=[u.pk for u in row.assignees], auto_id=f"id_%s_{row.run.pk}")
    return [rows[pk] for pk in run_ids]


def _queue_context(request, cycle: Cycle) -> dict:
    user = request.user
    return {
        "cycle": cycle,
        "rows": _queue_rows(cycle, user, cycle.runs_with_state()),
        "progress": cycle.progress(),
        "stage": stage_of(cycle),
        "next_run": cycle.next_run_for(user) if has_role(user, REVIEWER) else None,
        "is_reviewer": has_role(user, REVIEWER),
        "is_approver": has_role(user, APPROVER),
        "can_assign": has_role(user, ENGINEER, APPROVER),
    }


def cycle_detail(request, pk: int):
    """The review queue. HTMX requests (refreshes after changes) get only the queue."""
    cycle = _get_cycle(request, pk)
    context = _queue_context(request, cycle)
    if request.htmx:
        return render(request, "reviews/cycle_detail.html#queue", context)
    return render(request, "reviews/cycle_detail.html", context)


@require_GET
def next_run(request, pk: int):
    cycle = _get_cycle(request, pk)
    require_role(request.user, REVIEWER)
    run = cycle.next_run_for(request.user)
    if run is None:
        messages.info(request, "Nothing left to review in this cycle: every run assigned to you has your submitted feedback.")
        return redirect(cycle)
    return redirect("reviews:feedback-edit", cycle.pk, run.pk)


def _queue_row_response(request, cycle: Cycle, run: Run, *, error: str = ""):
    if not request.htmx:
        if error:
            messages.error(request, error)
        return redirect(cycle)
    row = _queue_rows(cycle, request.user, [run])[0]
    response = render(request, "reviews/cycle_detail.html#queue-row", {
        "cycle": cycle, "row": row, "assign_error": error, "can_assign": True,
        "is_reviewer": has_role(request.user, REVIEWER), "is_approver": has_role(request.user, APPROVER),
    })
    return trigger_client_event(response, "assignmentChanged") if not error else response


@require_POST
def assign(request, pk: int, run_pk: int):
    cycle, run = _get_cycle_run(request, pk, run_pk)
    require_role(request.user, ENGINEER, APPROVER)
    taken = ReviewAssignment.objects.filter(cycle=cycle, run=run).values_list("reviewer_id", flat=True)
    form = AssignForm(request.POST, exclude_ids=list(taken))
    if not form.is_valid():
        return _queue_row_response(request, cycle, run, error="Choose a reviewer who is not assigned yet.")
    cycle.assign(run=run, reviewer=form.cleaned_data["reviewer"], by=request.user)
    return _queue_row_response(request, cycle, run)


@require_POST
def unassign(request, pk: int, run_pk: int, user_pk: int):
    cycle, run = _get_cycle_run(request, pk, run_pk)
    require_role(request.user, ENGINEER, APPROVER)
    reviewer = get_object_or_404(get_user_model(), pk=user_pk)
    cycle.unassign(run=run, reviewer=reviewer, by=request.user)
    return _queue_row_response(request, cycle, run)


# --- the feedback editor (a reviewer's own feedback, or the approver's merged feedback) ----------


@dataclass
class Outcome:
    """What happened to one POST of the editor."""

    saved: bool = False
    note: str = ""
    conflict: Feedback | None = None
    # The feedback the form was loaded for no longer exists: the form's version goes back to 0.
    version_reset: bool = False


def _editor_context(request, *, cycle: Cycle, run: Run, mode: str, feedback: Feedback | None,
                    draft: FeedbackDraft, outcome: Outcome | None = None, status_only: bool = False) -> dict:
    """`status_only`: for the autosave's answer (the status line and the marked fields), which shows no
    other reviewer's feedback and no theme suggestions: their queries are left out."""
    merged = mode == "merged"
    if merged:
        post_url = reverse("reviews:run-approve", args=[cycle.pk, run.pk])
        editable = has_role(request.user, APPROVER)
    else:
        post_url = reverse("reviews:feedback-edit", args=[cycle.pk, run.pk])
        editable = feedback is None or feedback.is_editable
    if not editable and feedback is not None:
        draft = FeedbackDraft.from_feedback(feedback, run=run)
    outcome = outcome or Outcome()
    context = {
        "cycle": cycle, "run": run, "mode": mode, "feedback": feedback, "draft": draft,
        "editable": editable, "post_url": post_url, "outcome": outcome,
        "version": feedback.version if feedback is not None else 0,
    }
    if status_only:
        return context
    others = []
    sees_others = not merged and can_see_others_feedback(request.user, cycle=cycle, run=run)
    if sees_others:
        others = list(
            Feedback.objects.filter(cycle=cycle, run=run, status__in=Feedback.REVIEWED_STATUSES)
            .exclude(reviewer=request.user, is_merged=False)
            .select_related("reviewer", "approved_by").prefetch_related(_with_items())
        )
    return {
        **context,
        "claim_check_url": reverse("reviews:claim-check", args=[cycle.pk, run.pk]),
        "others": others, "blind": not merged and not others and not sees_others,
        "themes": theme_suggestions(request.user),
        "own_review": merged and Feedback.objects.filter(
            cycle=cycle, run=run, reviewer=request.user, is_merged=False, status__in=Feedback.REVIEWED_STATUSES
        ).exists(),
    }


def theme_suggestions(user) -> list[str]:
    """Themes to suggest: the user's own, and approved ones, except on runs where blind review still
    hides the others' feedback from the user (assigned, or a draft of their own, not yet submitted)."""
    pair = {"cycle": OuterRef("cycle_id"), "run": OuterRef("run_id")}
    own = Feedback.objects.filter(reviewer=user, is_merged=False, **pair)
    blind = (Exists(own.filter(submitted_at__isnull=True))
             | Exists(ReviewAssignment.objects.filter(reviewer=user, **pair)) & ~Exists(own.filter(submitted_at__isnull=False)))
    visible = Q(reviewer=user, is_merged=False) | Q(status=Feedback.Status.APPROVED) & ~blind
    return list(Feedback.objects.exclude(theme="").filter(visible).order_by("theme")
                .values_list("theme", flat=True).distinct()[:50])


EMPTY_CONTENT = {"summary": "", "theme": "", "verdict": "", "items": []}


def _editor_post(request, *, cycle: Cycle, run: Run, mode: str, feedback: Feedback | None):
    """Apply one editor action: save (autosave), add/remove/up/down a row, submit or approve, overwrite."""
    op = request.POST.get("op") or "save"
    if request.htmx and request.htmx.target == "save-status":
        # The form's autosave only ever saves: htmx adds the last focused submit button's name/value to
        # the form's values, so without this an autosave fired while "+ Add", "✕" or "Submit" had focus
        # would add, remove or submit (and swap the whole panel into the status line).
        op = "save"
    action, _, arg = op.partition(":")
    draft = FeedbackDraft.from_post(request.POST, run=run)
    version = _int(request.POST.get("version"))
    if action == "overwrite":
        version = _int(arg, -1)
    if action == "add":
        draft.add(arg)
    elif action == "remove":
        draft.remove(_int(arg, -1))
    elif action in ("up", "down"):
        draft.move(_int(arg, -1), -1 if action == "up" else 1)
    finishing = action in ("submit", "approve")
    outcome = Outcome()

    savable = draft.is_valid()
    # Submit or approve with fields missing: the draft is still saved, only the submission is refused.
    # (The content is taken first: the completeness check's errors remove fields from cleaned_data.)
    content = draft.content() if savable else None
    incomplete = savable and finishing and not draft.is_valid(complete=True)
    if not savable:
        outcome.note = "Not saved: fix the marked fields."
    else:
        try:
            feedback, outcome = _persist(request, cycle=cycle, run=run, mode=mode, feedback=feedback,
                                         draft=draft, action="save" if incomplete else action, version=version,
                                         content=content)
            if incomplete:
                refused = "Not approved" if action == "approve" else "Not submitted"
                kept = " The draft is saved." if feedback is not None else ""
                outcome = Outcome(note=f"{refused}: fix the marked fields.{kept}")
        except StaleFeedbackError as exc:
            # On a first save the row that raised was created in the rolled-back transaction: it is gone.
            outcome.conflict = Feedback.objects.prefetch_related(_with_items()).filter(pk=exc.feedback.pk).first()
            outcome.note = "Not saved: a newer version of this feedback was saved elsewhere."
            if outcome.conflict is None:
                feedback, outcome.version_reset = None, True
                outcome.note = (f"Not saved: this form was loaded for version {version} of the feedback, which no "
                                "longer exists. Your text is still here: save again to keep it as a new draft.")
        except (FeedbackStateError, Feedback.DoesNotExist) as exc:
            current = Feedback.objects.filter(pk=feedback.pk).first() if feedback is not None else None
            if isinstance(exc, Feedback.DoesNotExist) or (feedback is not None and current is None):
                outcome.version_reset = True
                outcome.note = ("Not saved: this feedback was deleted while you edited it. Your text is still "
                                "here: save again to keep it as a new draft.")
            else:
                outcome.note = f"Not saved: {exc}"
            feedback = outcome.conflict = current

    if not request.htmx:
        if outcome.saved and action != "save" and action not in ("add", "remove", "up", "down", "overwrite"):
            messages.success(request, outcome.note)
            # Back to the page just acted on: it now says approved (or submitted) and links the next run.
            return redirect(reverse("reviews:run-approve" if mode == "merged" else "reviews:feedback-edit",
                                    args=[cycle.pk, run.pk]))
        if outcome.saved and action in ("save", "overwrite"):
            return redirect(request.path)
        return _editor_page(request, cycle=cycle, run=run, mode=mode, feedback=feedback, draft=draft, outcome=outcome)

    if action == "save":
        context = _editor_context(request, cycle=cycle, run=run, mode=mode, feedback=feedback, draft=draft,
                                  outcome=outcome, status_only=True)
        response = render(request, "reviews/_feedback_form.html#save-result", context)
    else:
        if outcome.saved and finishing:
            feedback = Feedback.objects.prefetch_related(_with_items()).get(pk=feedback.pk)
            draft = FeedbackDraft.from_feedback(feedback, run=run)
        context = _editor_context(request, cycle=cycle, run=run, mode=mode, feedback=feedback, draft=draft, outcome=outcome)
        response = render(request, "reviews/_feedback_form.html", context)
    if outcome.saved and feedback is not None:
        event = {"submit": "feedbackSubmitted", "approve": "feedbackApproved"}.get(action, "feedbackSaved")
        response = trigger_client_event(response, event, {"feedback": feedback.pk, "version": feedback.version})
    return response


def _persist(request, *, cycle, run, mode, feedback, draft, action, version,
             content: dict | None = None) -> tuple[Feedback | None, Outcome]:
    user = request.user
    content = content if content is not None else draft.content()
    outcome = Outcome(saved=True)
    if mode == "merged" and action == "approve":
        feedback = approve_run(cycle=cycle, run=run, by=user, content=content, version=version)
        outcome.note = f"Feedback on {run.label or run} approved."
        return feedback, outcome
    if feedback is None and content == EMPTY_CONTENT and not draft.rows:
        outcome.note = "Nothing to save yet."
        return None, outcome
    with transaction.atomic():
        if feedback is None:
            feedback = get_or_create_feedback(cycle=cycle, run=run, user=user, merged=mode == "merged")
        changed = feedback.save_content(by=user, content=content, version=version)
        outcome.note = "Saved." if changed else "Saved (no changes)."
        if action == "submit":
            if feedback.status in Feedback.REVIEWED_STATUSES:
                outcome.note = "Already submitted."
            else:
                feedback.submit(by=user)
                outcome.note = "Submitted for approval."
    return feedback, outcome


def _editor_page(request, *, cycle, run, mode, feedback, draft, outcome=None):
    context = _editor_context(request, cycle=cycle, run=run, mode=mode, feedback=feedback, draft=draft, outcome=outcome)
    context["evidence_html"] = evidence_html(run, request=request)
    if mode == "merged":
        context["submissions"] = _submissions(cycle, run)
        context["pending"] = pending_reviewers(cycle=cycle, run=run)
        context["disagreement"] = disagreement(context["submissions"])
        context["send_back_form"] = SendBackForm()
        return render(request, "reviews/run_approve.html", context)
    context["previous_run"], context["next_run"] = review_neighbours(request.user, cycle=cycle, run=run)
    return render(request, "reviews/feedback_edit.html", context)


def feedback_edit(request, pk: int, run_pk: int):
    """The current reviewer's feedback on a run: GET the page, POST editor actions."""
    cycle, run = _get_cycle_run(request, pk, run_pk)
    require_role(request.user, REVIEWER)
    feedback = (
        Feedback.objects.filter(cycle=cycle, run=run, reviewer=request.user, is_merged=False)
        .prefetch_related(_with_items()).first()
    )
    if request.method == "POST":
        return _editor_post(request, cycle=cycle, run=run, mode="review", feedback=feedback)
    draft = FeedbackDraft.from_feedback(feedback, run=run)
    return _editor_page(request, cycle=cycle, run=run, mode="review", feedback=feedback, draft=draft)


@require_GET
def claim_check(request, pk: int, run_pk: int):
    """Whether the run's answer or artifacts already contain a prohibited claim as typed."""
    cycle, run = _get_cycle_run(request, pk, run_pk)
    require_role(request.user, REVIEWER, APPROVER)
    text = " ".join(request.GET.get("item_text", "").split())
    hits = find_claim(run, text) if len(text) >= 3 else None
    return render(request, "reviews/_feedback_form.html#claim-check", {"hits": hits, "text": text, "run": run})


# --- approval -----------------------------------------------------------------------------------


def _submissions(cycle: Cycle, run: Run) -> list[Feedback]:
    """Every reviewer's feedback that has left draft (drafts stay private)."""
    return list(
        Feedback.objects.filter(cycle=cycle, run=run, is_merged=False, submitted_at__isnull=False)
        .select_related("reviewer", "approved_by").prefetch_related(_with_items())
        .order_by("submitted_at", "pk")
    )


def run_approve(request, pk: int, run_pk: int):
    """All reviewers' feedback on a run side by side, and the merged feedback the approver approves."""
    cycle, run = _get_cycle_run(request, pk, run_pk)
    require_role(request.user, APPROVER)
    merged = Feedback.objects.filter(cycle=cycle, run=run, is_merged=True).prefetch_related(_with_items()).first()
    if request.method == "POST":
        if request.POST.get("op") == "rebuild":
            return _rebuilt(request, cycle=cycle, run=run, merged=merged)
        return _editor_post(request, cycle=cycle, run=run, mode="merged", feedback=merged)
    if merged is not None:
        draft = FeedbackDraft.from_feedback(merged, run=run)
    else:
        sources = [fb for fb in _submissions(cycle, run) if fb.status in Feedback.REVIEWED_STATUSES]
        draft = FeedbackDraft.from_content(_merged_start(sources), run=run) if sources else FeedbackDraft.from_feedback(None, run=run)
    return _editor_page(request, cycle=cycle, run=run, mode="merged", feedback=merged, draft=draft)


def _merged_start(sources: list[Feedback]) -> dict:
    """The merged form's first content; when the reviewers' verdicts differ the approver picks one."""
    content = merged_content(sources)
    if len({fb.verdict for fb in sources}) > 1:
        content["verdict"] = ""
    return content


def _rebuilt(request, *, cycle, run, merged):
    """The merged form refilled from the current submissions (saved on the next autosave or approval)."""
    sources = [fb for fb in _submissions(cycle, run) if fb.status in Feedback.REVIEWED_STATUSES]
    draft = (FeedbackDraft.from_content(_merged_start(sources), run=run) if sources
             else FeedbackDraft.from_post(request.POST, run=run))
    outcome = Outcome(note="Refilled from the submitted feedback; not saved yet.")
    if not request.htmx:
        return _editor_page(request, cycle=cycle, run=run, mode="merged", feedback=merged, draft=draft, outcome=outcome)
    context = _editor_context(request, cycle=cycle, run=run, mode="merged", feedback=merged, draft=draft, outcome=outcome)
    return render(request, "reviews/_feedback_form.html", context)


@require_POST
def send_back(request, pk: int):
    feedback = get_object_or_404(
        Feedback.objects.select_related("cycle", "run", "reviewer"), pk=pk, is_merged=False
    )
    require_role(request.user, APPROVER)
    form = SendBackForm(request.POST)
    error = ""
    if form.is_valid():
        try:
            feedback.send_back(by=request.user, comment=form.cleaned_data["comment"])
        except FeedbackStateError as exc:
            error = str(exc)
    cycle, run = feedback.cycle, feedback.run
    if not request.htmx:
        if error or form.errors:
            messages.error(request, error or "Say what needs changing before sending feedback back.")
        else:
            messages.success(request, f"Feedback sent back to {feedback.reviewer.get_username()}.")
        return redirect("reviews:run-approve", cycle.pk, run.pk)
    feedback = Feedback.objects.select_related("reviewer", "approved_by").prefetch_related(_with_items()).get(pk=feedback.pk)
    response = render(request, "reviews/run_approve.html#reviewer-card", {
        "fb": feedback, "cycle": cycle, "run": run, "send_back_form": form if form.errors else SendBackForm(),
        "error": error,
    })
    if not error and form.is_valid():
        response = trigger_client_event(response, "feedbackSentBack", {"feedback": feedback.pk})
    return response


@require_GET
def feedback_history(request, pk: int):
    feedback = get_object_or_404(Feedback.objects.select_related("cycle", "run", "reviewer"), pk=pk)
    require_role(request.user, *ANY_ROLE)
    own = feedback.reviewer_id == request.user.pk and not feedback.is_merged
    shared = feedback.is_merged or feedback.submitted_at is not None
    if not own and not (shared and can_see_others_feedback(request.user, cycle=feedback.cycle, run=feedback.run)):
        raise PermissionDenied("This feedback is not yours, and blind review hides it until you submit your own.")
    revisions = feedback.revisions.select_related("by")
    return render(request, "reviews/feedback_history.html", {"feedback": feedback, "revisions": revisions})
