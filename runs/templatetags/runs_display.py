"""Template access to runs.display, so the run partials render with only `run` in context."""

from django import template

from runs import display

register = template.Library()


@register.simple_tag
def artifact_views(run):
    return display.artifact_views(run)


@register.simple_tag
def validator_results(run):
    return display.validator_results(run)


@register.simple_tag
def span_tree_for(run):
    return display.span_tree(run)


@register.filter
def duration_ms(value):
    """Milliseconds as a short human duration: 850 ms, 12.3 s, 4 min 05 s."""
    if value is None:
        return "—"
    value = float(value)
    if value < 1000:
        return f"{value:.0f} ms"
    seconds = value / 1000
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, seconds = divmod(int(round(seconds)), 60)
    return f"{minutes} min {seconds:02d} s"


@register.filter
def seconds(value):
    return "—" if value is None else duration_ms(float(value) * 1000)
