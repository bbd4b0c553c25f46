"""Turning stored runs into things a template can show: span trees, artifacts, validators.

Plain functions so that the run page and the review page render the same way.
Nothing here marks text safe except Markdown that went through `render_markdown`.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from django.db.models import QuerySet
from django.db.models.fields.json import KT
from django.db.models.functions import Substr
from django.urls import reverse
from django.utils.safestring import SafeString

from loopsite.markdown import render_markdown

from .models import REQUIRED_ARTIFACTS, Artifact, Run, Span

# Longest attribute value shown inline; the full value is in the trace download.
MAX_VALUE_CHARS = 100_000
# Rows of a CSV artifact shown as a table.
MAX_CSV_ROWS = 500

_SPAN_SUMMARY_FIELDS = (
    "id", "run_id", "position", "span_id", "parent_span_id", "name",
    "observation_kind", "start_time", "end_time", "is_error",
)


# ---------------------------------------------------------------- span tree


@dataclass
class SpanRow:
    """One span in the flattened tree: the template opens a <details> per row and
    closes `closes` of them after it (itself when a leaf, plus finished ancestors)."""

    span: Span
    depth: int
    child_count: int = 0
    closes: int = 0
    url: str = ""  # runs:span-detail for this span

    @property
    def closers(self) -> range:
        return range(self.closes)

    @property
    def kind(self) -> str:
        return (self.span.observation_kind or "SPAN").upper()

    @property
    def tokens(self) -> int | None:
        return as_int(getattr(self.span, "tokens_total", None))

    @property
    def tool_name(self) -> str:
        return getattr(self.span, "tool_name", None) or ""

    @property
    def preview(self) -> str:
        text = getattr(self.span, "input_preview", None) or ""
        text = " ".join(str(text).split())
        return text[:100] + ("…" if len(text) > 100 else "")

    @property
    def model(self) -> str:
        return getattr(self.span, "model_name", None) or ""

    @property
    def error_message(self) -> str:
        return getattr(self.span, "status_message", None) or ""


@dataclass
class SpanTree:
    rows: list[SpanRow]

    @property
    def count(self) -> int:
        return len(self.rows)

    @property
    def error_count(self) -> int:
        return sum(1 for row in self.rows if row.span.is_error)

    @property
    def kind_counts(self) -> list[tuple[str, int]]:
        counts: dict[str, int] = {}
        for row in self.rows:
            counts[row.kind] = counts.get(row.kind, 0) + 1
        return sorted(counts.items())


def span_summaries(run: Run) -> QuerySet[Span]:
    """The run's spans in position order with the few attributes a summary needs,
    extracted by the database so the large `data` column never leaves it."""
    return (
        Span.objects.filter(run_id=run.pk)
        .order_by("position")
        .only(*_SPAN_SUMMARY_FIELDS)
        .annotate(
            tokens_total=KT("data__attributes__llm.token_count.total"),
            tool_name=KT("data__attributes__tool.name"),
            model_name=KT("data__attributes__llm.model_name"),
            input_preview=Substr(KT("data__attributes__input.value"), 1, 160),
            status_message=Substr(KT("data__status__message"), 1, 300),
        )
    )


def build_span_tree(spans) -> SpanTree:
    """Nest spans by parent_span_id, children in position order. Spans whose parent is
    missing (or that sit in a cycle) become roots so that every span is shown once."""
    spans = list(spans)
    by_id: dict[str, Span] = {}
    for span in spans:
        by_id.setdefault(span.span_id, span)
    children: dict[str, list[Span]] = {}
    roots: list[Span] = []
    for span in spans:
        parent = span.parent_span_id
        if parent and parent in by_id and parent != span.span_id:
            children.setdefault(parent, []).append(span)
        else:
            roots.append(span)

    rows: list[SpanRow] = []
    seen: set[int] = set()
    # One reverse() for the tree instead of one per span (it shows in the page time).
    url_template = reverse("runs:span-detail", args=[spans[0].run_id, "0"])[:-2] if spans else ""

    def walk(root: Span) -> None:
        # Iterative depth-first walk; `stack` holds (span, depth, open-rows-to-close).
        stack: list[tuple[Span, int]] = [(root, 0)]
        open_rows: list[SpanRow] = []
        while stack:
            span, depth = stack.pop()
            if span.pk in seen:
                continue
            seen.add(span.pk)
            # Close the rows whose subtree ended before this span.
            while open_rows and open_rows[-1].depth >= depth:
                open_rows.pop()
                rows[-1].closes += 1
            kids = [kid for kid in children.get(span.span_id, []) if kid.pk not in seen]
            row = SpanRow(span=span, depth=depth, child_count=len(kids),
                          url=f"{url_template}{quote(span.span_id, safe='')}/")
            rows.append(row)
            open_rows.append(row)
            for kid in reversed(kids):
                stack.append((kid, depth + 1))
        while open_rows:
            open_rows.pop()
            rows[-1].closes += 1

    for root in roots:
        walk(root)
    # Spans in a parent cycle are never reached from a root: show them as roots.
    for span in spans:
        if span.pk not in seen:
            walk(span)
    return SpanTree(rows=rows)


def span_tree(run: Run) -> SpanTree:
    return build_span_tree(span_summaries(run))


# ---------------------------------------------------------------- span detail


@dataclass
class Message:
    role: str
    content: str
    name: str = ""
    tool_calls: list[dict[str, str]] = field(default_factory=list)


@dataclass
class SpanDetail:
    span: Span
    kind: str
    status_code: str
    status_message: str
    tokens: list[tuple[str, int]]
    model: str
    input_messages: list[Message]
    output_messages: list[Message]
    tool_name: str
    tool_input: str
    tool_output: str
    attributes: list[tuple[str, str]]
    resource: list[tuple[str, str]]


_TOKEN_KEYS = (
    ("Prompt", "llm.token_count.prompt"),
    ("Completion", "llm.token_count.completion"),
    ("Total", "llm.token_count.total"),
)
_SHOWN_KEYS = {
    "llm.input_messages", "llm.output_messages", "llm.model_name", "tool.name",
    "input.value", "output.value", *(key for _, key in _TOKEN_KEYS),
}


def span_detail(span: Span) -> SpanDetail:
    data = span.data if isinstance(span.data, dict) else {}
    attrs = data.get("attributes") if isinstance(data.get("attributes"), dict) else {}
    status = data.get("status") if isinstance(data.get("status"), dict) else {}
    kind = (span.observation_kind or attrs.get("inference.observation_kind") or "SPAN").upper()

    tokens = []
    for label, key in _TOKEN_KEYS:
        value = as_int(attrs.get(key))
        if value is not None:
            tokens.append((label, value))

    shown = set(_SHOWN_KEYS)
    input_messages = _messages(attrs.get("llm.input_messages"))
    output_messages = _messages(attrs.get("llm.output_messages"))
    if input_messages or output_messages:
        # The expanded `llm.input_messages.0.message.content` keys repeat the lists.
        shown |= {key for key in attrs if key.startswith(("llm.input_messages.", "llm.output_messages."))}

    resource_attrs = (data.get("resource") or {}).get("attributes") if isinstance(data.get("resource"), dict) else {}
    return SpanDetail(
        span=span,
        kind=kind,
        status_code=str(status.get("code") or ""),
        status_message=_clip(str(status.get("message") or "")),
        tokens=tokens,
        model=str(attrs.get("llm.model_name") or attrs.get("inference.llm.model_name") or ""),
        input_messages=input_messages,
        output_messages=output_messages,
        tool_name=str(attrs.get("tool.name") or ""),
        tool_input=pretty_value(attrs.get("input.value")) if "input.value" in attrs else "",
        tool_output=pretty_value(attrs.get("output.value")) if "output.value" in attrs else "",
        attributes=[(key, pretty_value(attrs[key])) for key in sorted(attrs) if key not in shown],
        resource=[(key, pretty_value(value)) for key, value in sorted((resource_attrs or {}).items())],
    )


def _messages(raw: Any) -> list[Message]:
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            return [Message(role="(unparsed)", content=_clip(raw))]
    if not isinstance(raw, list):
        return []
    messages = []
    for item in raw:
        if not isinstance(item, dict):
            messages.append(Message(role="", content=pretty_value(item)))
            continue
        role = str(item.get("role") or item.get("type") or "")
        content = item.get("content")
        if content is None:
            content = item.get("output", item.get("arguments"))
        tool_calls = []
        for call in item.get("tool_calls") or []:
            function = (call or {}).get("function") or {} if isinstance(call, dict) else {}
            tool_calls.append({
                "name": str(function.get("name") or ""),
                "arguments": pretty_value(function.get("arguments")),
            })
        messages.append(Message(
            role=role,
            content=_message_text(content),
            name=str(item.get("name") or item.get("tool_call_id") or item.get("call_id") or ""),
            tool_calls=tool_calls,
        ))
    return messages


def _message_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return _clip(content)
    if isinstance(content, list) and all(isinstance(part, dict) and isinstance(part.get("text"), str) for part in content):
        return _clip("\n\n".join(part["text"] for part in content))
    return pretty_value(content)


def pretty_value(value: Any) -> str:
    """A value as readable text: JSON (also JSON inside a string) indented, the rest as is."""
    if value is None:
        return ""
    if isinstance(value, str):
        stripped = value.strip()
        if stripped[:1] in "[{" and stripped[-1:] in "]}":
            try:
                value = json.loads(stripped)
            except ValueError:
                return _clip(value)
        else:
            return _clip(value)
    if isinstance(value, (dict, list)):
        return _clip(json.dumps(value, indent=2, ensure_ascii=False, default=str))
    return _clip(str(value))


def _clip(text: str) -> str:
    if len(text) <= MAX_VALUE_CHARS:
        return text
    return text[:MAX_VALUE_CHARS] + f"\n… {len(text) - MAX_VALUE_CHARS:,} more characters (download the trace for all of it)"


def as_int(value: Any) -> int | None:
    """A count as int, also from "12" or "12.0"; None when missing or unreadable."""
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        try:
            return int(float(value))
        except (TypeError, ValueError):
            return None


# ---------------------------------------------------------------- artifacts


@dataclass
class ArtifactView:
    name: str
    kind: str  # markdown | json | csv | text
    missing: bool = False
    size: int = 0
    html: SafeString | None = None
    text: str = ""
    header: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    more_rows: int = 0
    problem: str = ""
    source: str = ""  # the artifact as stored (clipped): what a citation's line number counts in

    @property
    def slug(self) -> str:
        return "".join(ch if ch.isalnum() else "-" for ch in self.name).strip("-").lower()

    @property
    def lines(self) -> list[str]:
        """The stored text's lines, numbered from 1 on the page (`artifact-<slug>-L<n>`), as citations count them."""
        lines = self.source.split("\n")  # "\n" only: the numbering citations and the claim check use
        return lines[:-1] if lines and lines[-1] == "" else lines


def artifact_kind(name: str) -> str:
    ext = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    return {"md": "markdown", "markdown": "markdown", "json": "json", "csv": "csv"}.get(ext, "text")


def render_artifact(artifact: Artifact) -> ArtifactView:
    return render_content(artifact.name, artifact.content or "", size=artifact.size)


def render_content(name: str, content: str, *, size: int = 0) -> ArtifactView:
    """Markdown rendered and sanitised, JSON indented, CSV as header + rows, the rest as text."""
    view = ArtifactView(name=name, kind=artifact_kind(name), size=size or len(content.encode("utf-8")),
                        source=_clip(content))
    if view.kind == "markdown":
        view.html = render_markdown(content)
    elif view.kind == "json":
        try:
            data = json.loads(content)
            view.text = _clip(json.dumps(data, indent=2, ensure_ascii=False))
            header, body = json_table(data)
            view.header, view.rows = header, body[:MAX_CSV_ROWS]
            view.more_rows = max(0, len(body) - MAX_CSV_ROWS)
        except ValueError as exc:
            view.problem = f"Not valid JSON ({exc}); shown as stored."
            view.text = _clip(content)
    elif view.kind == "csv":
        try:
            table = list(csv.reader(io.StringIO(content)))
        except csv.Error as exc:
            view.problem = f"Could not read as CSV ({exc}); shown as stored."
            view.kind = "text"
            view.text = _clip(content)
        else:
            if table:
                view.header = table[0]
                body = table[1:]
                view.rows = body[:MAX_CSV_ROWS]
                view.more_rows = max(0, len(body) - MAX_CSV_ROWS)
    else:
        view.text = _clip(content)
    if not content.strip():
        view.problem = view.problem or "The artifact is empty."
    return view


def json_table(data: Any) -> tuple[list[str], list[list[str]]]:
    """A list of objects (or an object holding exactly one such list, e.g. {"risks": [...]}) as a table:
    the keys in order of first appearance, lists of plain values joined by "; ", anything deeper as JSON.
    ([], []) when the data is not shaped like a table."""
    if isinstance(data, dict) and len(data) == 1:
        data = next(iter(data.values()))
    if not isinstance(data, list) or not data or not all(isinstance(item, dict) for item in data):
        return [], []
    header: list[str] = []
    for item in data:
        header += [str(key) for key in item if str(key) not in header]

    def cell(value: Any) -> str:
        if value is None:
            return ""
        if isinstance(value, list) and all(not isinstance(v, (dict, list)) for v in value):
            return "; ".join(str(v) for v in value)
        if isinstance(value, (dict, list)):
            return json.dumps(value, ensure_ascii=False)
        return str(value)

    rows = [[cell({str(k): v for k, v in item.items()}.get(key)) for key in header] for item in data]
    return header, rows


def artifact_views(run: Run) -> list[ArtifactView]:
    """The harness's required artifacts in their order (missing ones marked), then any others."""
    stored = {artifact.name: artifact for artifact in run.artifacts.all()}
    required = run.harness.required_artifacts if run.harness_id else list(REQUIRED_ARTIFACTS)
    views = []
    for name in required:
        if name in stored:
            views.append(render_artifact(stored.pop(name)))
        else:
            views.append(ArtifactView(name=name, kind=artifact_kind(name), missing=True))
    views.extend(render_artifact(artifact) for artifact in sorted(stored.values(), key=lambda a: a.name))
    return views


# ---------------------------------------------------------------- validators


@dataclass
class ValidatorView:
    key: str
    title: str
    script: str
    ran: bool
    passed: bool | None
    summary: str
    issues: list[dict[str, str]]


def validator_results(run: Run) -> list[ValidatorView]:
    return [_evidence_view(run.evidence_coverage), _contract_view(run.output_contract)]


def _evidence_view(result: Any) -> ValidatorView:
    view = ValidatorView(
        key="evidence-coverage", title="Evidence coverage", script="check_evidence_coverage.py",
        ran=isinstance(result, dict), passed=None, summary="Not run.", issues=[],
    )
    if not isinstance(result, dict):
        return view
    view.passed = bool(result.get("passed"))
    supported = result.get("supported_claims") or []
    unsupported = result.get("unsupported_claims") or []
    missing = result.get("missing_citations") or []
    view.summary = (
        f"{_count(supported)} supported, {_count(unsupported)} unsupported, "
        f"{_count(missing)} without citations."
    )
    for row in [*(unsupported if isinstance(unsupported, list) else []), *(missing if isinstance(missing, list) else [])]:
        if isinstance(row, dict):
            citations = row.get("citations") or []
            view.issues.append({
                "where": str(row.get("claim") or "(no claim text)"),
                "issue": str(row.get("issue") or "unsupported"),
                "detail": ", ".join(str(c) for c in citations) if isinstance(citations, list) else str(citations),
            })
        else:
            view.issues.append({"where": "", "issue": str(row), "detail": ""})
    return view


def _contract_view(result: Any) -> ValidatorView:
    view = ValidatorView(
        key="output-contract", title="Output contract", script="validate_output_contract.py",
        ran=isinstance(result, dict), passed=None, summary="Not run.", issues=[],
    )
    if not isinstance(result, dict):
        return view
    view.passed = bool(result.get("passed"))
    issues = result.get("issues") or []
    issues = issues if isinstance(issues, list) else [issues]
    view.summary = "All required artifacts present and well formed." if not issues else f"{len(issues)} issue(s)."
    for row in issues:
        if isinstance(row, dict):
            where = str(row.get("file") or "")
            for index_key in ("risk_index", "citation_index"):
                if index_key in row:
                    where += f" [{index_key.split('_')[0]} {row[index_key]}]"
            view.issues.append({"where": where, "issue": str(row.get("issue") or ""), "detail": ""})
        else:
            view.issues.append({"where": "", "issue": str(row), "detail": ""})
    return view


def _count(value: Any) -> int:
    return len(value) if isinstance(value, list) else 0


# ---------------------------------------------------------------- small formatting


def pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False, default=str)
