"""Part 2's pieces inside part 1's pages, each added there with one line.

    {% load generation_tags %}{% generation_panel cycle %}      the cycle page: chain status + insights
    {% load generation_tags %}{% run_insights cycle run %}      the approval page: this run's insights
"""

from django import template

register = template.Library()


@register.inclusion_tag("reviews/_generation.html", takes_context=True)
def generation_panel(context, cycle):
    from reviews.eval_views import generation_panel_context

    request = context["request"]
    return {**generation_panel_context(cycle, request.user), "request": request, "user": request.user,
            "csrf_token": context.get("csrf_token")}


@register.inclusion_tag("reviews/_generation_insights.html")
def run_insights(cycle, run):
    from reviews.generation import latest_insights

    return {"insights": [insight for insight in latest_insights(cycle) if insight.run_id == run.pk], "run": run}
