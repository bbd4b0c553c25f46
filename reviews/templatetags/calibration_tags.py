"""The judge's calibration panel inside the suite and gate pages, added there with one line:

    {% load calibration_tags %}{% judge_calibration_panel %}
"""

from django import template

register = template.Library()


@register.inclusion_tag("reviews/_judge_calibration.html", takes_context=True)
def judge_calibration_panel(context):
    from loopsite.roles import APPROVER, ENGINEER, has_role
    from reviews.calibration import page_context

    request = context["request"]
    return {**page_context(), "request": request, "user": request.user, "csrf_token": context.get("csrf_token"),
            "can_refresh": has_role(request.user, APPROVER, ENGINEER), "next": request.get_full_path()}
