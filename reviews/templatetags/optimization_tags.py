"""The cycle dashboard inside the cycle page, added there with one line:

    {% include "reviews/_dashboard_slot.html" %}   ->   {% load optimization_tags %}{% cycle_dashboard cycle %}
"""

from django import template

register = template.Library()


@register.inclusion_tag("reviews/_dashboard.html", takes_context=True)
def cycle_dashboard(context, cycle):
    from reviews.optimization_views import dashboard_context

    request = context["request"]
    return {**dashboard_context(request, cycle), "request": request, "user": request.user,
            "csrf_token": context.get("csrf_token")}
