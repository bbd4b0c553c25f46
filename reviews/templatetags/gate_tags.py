"""The gate's pieces inside other pages, each added there with one include line.

    {% include "reviews/gate_slot.html" %}           the cycle page: the gate panel ({% gate_panel cycle %})
    {% include "reviews/gate_harness_slot.html" %}   a harness page: "Evaluate candidate" and past evaluations
"""

from django import template

register = template.Library()


@register.inclusion_tag("reviews/gate_panel.html", takes_context=True)
def gate_panel(context, cycle):
    from reviews.gate_views import gate_panel_context

    request = context["request"]
    return {**gate_panel_context(cycle, request.user), "request": request, "user": request.user,
            "csrf_token": context.get("csrf_token")}


@register.inclusion_tag("reviews/gate_evaluate.html", takes_context=True)
def evaluate_candidate_panel(context, harness):
    from reviews.gate_views import evaluate_context

    request = context["request"]
    return {**evaluate_context(request.user, harness), "request": request, "user": request.user,
            "csrf_token": context.get("csrf_token")}
