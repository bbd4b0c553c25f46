"""Reviews going back out: a run's trace download carries its approved review as OpenInference
annotation attributes on the root span, so other tools (Phoenix, Arize) can read them.

Reviews live in reviews/, which runs/ never imports: reviews/apps.py hands over how to find a run's
annotations (`annotations_for.provide(...)`) when it loads. Each annotation is a dict with the keys of an
OpenInference / Phoenix span annotation: name, annotator_kind, label, score, explanation, metadata.
Annotation i of the root span becomes `annotations.<i>.name`, `annotations.<i>.annotator_kind`,
`annotations.<i>.result.label`, `annotations.<i>.result.score`, `annotations.<i>.result.explanation`
and `annotations.<i>.metadata` (a JSON string).
"""

import json
from collections.abc import Iterable, Iterator
from typing import Any

from loopsite.hooks import Hook

# The run's approved reviews as annotations, newest first; [] without a reviews app.
annotations_for = Hook(default=lambda run: [])


def attributes(annotations: list[dict[str, Any]]) -> dict[str, Any]:
    """The flat `annotations.*` attributes of these annotations."""
    out: dict[str, Any] = {}
    for index, annotation in enumerate(annotations):
        prefix = f"annotations.{index}"
        out[f"{prefix}.name"] = annotation["name"]
        out[f"{prefix}.annotator_kind"] = annotation.get("annotator_kind", "HUMAN")
        for key in ("label", "score", "explanation"):
            if annotation.get(key) not in (None, ""):
                out[f"{prefix}.result.{key}"] = annotation[key]
        if annotation.get("metadata"):
            out[f"{prefix}.metadata"] = json.dumps(annotation["metadata"], ensure_ascii=False, sort_keys=True)
    return out


def annotated_lines(lines: Iterable[dict[str, Any]], annotations: list[dict[str, Any]], *,
                    root_span_id: str) -> Iterator[dict[str, Any]]:
    """The trace's lines, the span `root_span_id` carrying the annotations (attributes of the same name
    are replaced); unchanged when there are none."""
    extra = attributes(annotations)
    for line in lines:
        if extra and line.get("span_id") == root_span_id:
            line = {**line, "attributes": {**(line.get("attributes") or {}), **extra}}
            extra = {}
        yield line


def root_span_id(run) -> str:  # noqa: ANN001
    """The run's root span: the first without a parent, else its first span ("" without spans)."""
    spans = run.spans.order_by("position").values_list("span_id", flat=True)
    return spans.filter(parent_span_id="").first() or spans.first() or ""
