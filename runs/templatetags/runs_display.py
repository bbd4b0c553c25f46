"""Template access to runs.display, so the run partials render with only `run` in context."""

from django import template
from django.template.defaultfilters import floatformat
from django.utils.html import conditional_escape as esc
from django.utils.safestring import mark_safe
from django.utils.text import Truncator

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


# The two loops of the run's evidence that run to hundreds of items (a long artifact's lines, a long trace's
# spans) are written here instead of in template loops: the same HTML, about ten times faster to render.
# Every value is escaped with `esc`, as the template would.


@register.simple_tag
def numbered_lines(artifact):
    """An artifact's stored lines, each anchored (`artifact-<slug>-L<n>`) for a citation to open and mark."""
    slug = esc(artifact.slug)
    lines = "".join(f'<span class="line" id="artifact-{slug}-L{n}"><span class="ln" aria-hidden="true">{n}</span>'
                    f"{esc(line)}\n</span>" for n, line in enumerate(artifact.lines, 1))
    return mark_safe(f'<pre class="numbered-lines">{lines}</pre>')  # noqa: S308 - every value escaped above


def _span_row(row) -> str:
    span, kind = row.span, esc(row.kind.lower())
    meta = esc(duration_ms(span.duration_ms))
    if row.tokens is not None:
        meta += f" · {esc(floatformat(row.tokens, 'g'))} tok"
    if row.child_count:
        meta += f" · {esc(row.child_count)} child{'ren' if row.child_count != 1 else ''}"
    tool = f'<code class="tool">{esc(row.tool_name)}</code>' if row.tool_name else ""
    preview = f'<span class="preview mono">{esc(row.preview)}</span>' if row.preview else ""
    error = (f'<span class="span-errmsg">{esc(Truncator(row.error_message or "error").chars(140))}</span>'
             if span.is_error else "")
    return (
        f'<details class="span kind-{kind}{" span-error" if span.is_error else ""}" id="span-{esc(span.span_id)}" '
        f'hx-get="{esc(row.url)}" hx-trigger="toggle once" hx-target="find .span-detail" hx-swap="innerHTML">\n'
        f'    <summary><span class="span-name" data-span-id="{esc(span.span_id)}">{esc(span.name)}</span>\n'
        f'      <span class="kind-tag kind-tag-{kind}">{esc(row.kind)}</span>\n'
        f"      {tool}\n      {preview}\n"
        f'      <span class="span-meta">{meta}</span>\n'
        f"      {error}\n    </summary>\n"
        f'    <div class="span-detail"><a href="{esc(row.url)}">Open span details</a></div>\n'
        f"  {'</details>' * len(row.closers)}"
    )


@register.simple_tag
def span_rows(rows):
    """The span tree's rows: nested `<details>`, each loading its detail by htmx when first opened."""
    return mark_safe("".join(_span_row(row) for row in rows))  # noqa: S308 - every value escaped in _span_row
