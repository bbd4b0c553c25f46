"""The inbox (the page a user lands on after login) and the "next item" links every action ends with."""

from django.contrib import messages
from django.shortcuts import redirect, render
from django.urls import path
from django.views.decorators.http import require_GET

from loopsite.roles import APPROVER, ENGINEER, REVIEWER, has_role, require_role

from . import inbox


def _int(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _after(request) -> tuple[int, int] | None:
    cycle, run = _int(request.GET.get("cycle")), _int(request.GET.get("run"))
    return (cycle, run) if cycle is not None and run is not None else None


@require_GET
def inbox_page(request):
    user = request.user
    context = {"is_reviewer": has_role(user, REVIEWER), "is_approver": has_role(user, APPROVER),
               "is_engineer": has_role(user, ENGINEER)}
    if context["is_reviewer"]:
        items = inbox.review_items(user)
        context["review_due"] = [item for item in items if item.is_due]
        context["review_done"] = [item for item in items if not item.is_due]
    if context["is_approver"]:
        context["approvals"] = inbox.approval_items(user)
        context["proposals"] = inbox.proposal_items()
    if context["is_engineer"]:
        context["problems"] = inbox.work_problems()
        context["candidates"] = inbox.promotable_candidates()
    return render(request, "reviews/inbox.html", context)


@require_GET
def next_review(request):
    require_role(request.user, REVIEWER)
    item = inbox.next_review(request.user, after=_after(request))
    if item is None:
        messages.info(request, "Nothing left to review: every run assigned to you has your submitted feedback.")
        return redirect("reviews:inbox")
    return redirect(item.url)


@require_GET
def next_approval(request):
    require_role(request.user, APPROVER)
    item = inbox.next_approval(request.user, after=_after(request))
    if item is None:
        messages.info(request, "Nothing left to approve: no submitted feedback is waiting for you.")
        return redirect("reviews:inbox")
    return redirect(item.url)


@require_GET
def next_proposal(request):
    require_role(request.user, APPROVER)
    case = inbox.next_proposal(after=_int(request.GET.get("after")))
    if case is None:
        messages.info(request, "No eval proposals are waiting for a decision.")
        return redirect("reviews:inbox")
    return redirect(case)


urlpatterns = [
    path("inbox/", inbox_page, name="inbox"),
    path("inbox/next/review/", next_review, name="next-review"),
    path("inbox/next/approval/", next_approval, name="next-approval"),
    path("inbox/next/proposal/", next_proposal, name="next-proposal"),
]
