"""The HALO step: the optimization context, the report prompt, running HALO, reading its report.

Pure pieces, no models of their own:

- `build_context_lines(...)`: the cycle's run spans plus one synthetic span per signal
  (harness config, human feedback, LLM insight, eval definition, gate summary, gate
  row), built as the seed's `write_halo_optimization_context` builds them: same span
  names, observation kinds, attribute keys and trace attachment. `write_context()`
  writes them as the JSONL file HALO reads.
- `input_summary_rows(lines)`: the seed's "HALO input summary" table, counted from
  the lines themselves.
- `render_report_prompt()`: what HALO is asked to write (the seven sections).
- `run_halo(...)`: HALO in its own process (`python -m reviews.halo_child`, which
  resets the Agents SDK's trace processors), with a scrubbed environment; events
  are passed to `on_event` as they arrive. `run_halo_with_retry(...)` re-prompts
  once when sections are missing.
- `check_sections`, `clean_handoff`, `extract_section`, `handoff_summary`,
  `top_priorities`: reading the report.
- `check_evidence(handoff=..., lines=...)`: the report's citations (`[feedback:ID]`,
  `[eval:ID]`, `[gate:ID]`, `[span:ID]`) resolved against the context, each checked to be
  about the recommendation citing it, and its "the harness does not state X" claims checked
  against the harness prompt and tool policy; `evidence_appendix()` lists what failed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

from loopsite.childproc import PREEXEC, kill_group, secretless_env

# As the seed's synthetic spans.
SERVICE_NAME = "financial-diligence-analyst"
PROJECT_ID = "financial_diligence_analyst_optimization_context"
SCOPE = {"name": "halo-optimization-context", "version": "1"}
# Used for the synthetic spans when there are no run spans to take a time from.
HALO_CALL_TIMEOUT_SECONDS = 600.0  # openai's default per-call limit, which HALO's client keeps
FALLBACK_TIMESTAMP = "2026-01-01T00:00:00.000000000Z"
_TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{9}Z$")

SIGNAL_SOURCE = "optimizer.signal_source"

REQUIRED_SECTIONS: tuple[str, ...] = (
    "## Executive summary",
    "## Top 3 changes to implement first",
    "## Ranked recommendation table",
    "## Supporting diagnosis and evidence",
    "## Detailed recommendations",
    "## Insights by feedback source",
    "## Machine-readable summary",
)
DETAILED_SUBHEADINGS: tuple[str, ...] = (
    "### Behavior contract",
    "#### Prompt",
    "#### Skills",
    "### Runtime implementation",
    "#### Tools",
    "#### Control flow",
    "#### Routing",
    "### Output contract",
    "#### Artifact schema",
    "### Observability and evals",
    "#### Observability",
    "#### Evals",
)


# -- the optimization context --------------------------------------------------

def synthetic_trace_id(value: str) -> str:
    """The id of a global trace (harness config, gate summary), as the seed derives it."""
    return hashlib.sha256(f"halo-context-{value}".encode("utf-8")).hexdigest()[:32]


def synthetic_span_id(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()[:16]


HARNESS_TRACE_ID = synthetic_trace_id("current-harness-config")
GATE_SUMMARY_TRACE_ID = synthetic_trace_id("eval-gate-summary")


def synthetic_span(*, trace_id: str, span_id: str, name: str, observation_kind: str,
                   attributes: dict[str, Any], timestamp: str) -> dict[str, Any]:
    return {
        "trace_id": trace_id,
        "span_id": span_id,
        "parent_span_id": "",
        "trace_state": "",
        "name": name,
        "kind": "SPAN_KIND_INTERNAL",
        "start_time": timestamp,
        "end_time": timestamp,
        "status": {"code": "STATUS_CODE_OK", "message": ""},
        "resource": {"attributes": {"service.name": SERVICE_NAME}},
        "scope": dict(SCOPE),
        "attributes": {
            "openinference.span.kind": observation_kind,
            "inference.export.schema_version": 1,
            "inference.project_id": PROJECT_ID,
            "inference.observation_kind": observation_kind,
            **attributes,
        },
    }


def build_context_lines(
    *,
    run_span_lines: list[dict],
    harness_config: dict,
    human_feedback: list[dict],
    llm_insights: list[dict],
    eval_definitions: list[dict],
    gate_rows: list[dict],
    gate_summary: dict,
) -> list[dict]:
    """Every line of the optimization context, in the seed's order.

    The run spans come first, unchanged; then the harness config (its own global
    trace), each human feedback item, each insight and each eval definition (on the
    trace of the run they are about), the gate summary (its own global trace) and
    each gate row (on its run's trace). Synthetic spans carry one fixed timestamp:
    the latest end time among the run spans, so the file is the same every time
    it is built from the same inputs. Raises ValueError naming the first line
    HALO's loader would reject.
    """
    timestamp = _context_timestamp(run_span_lines)
    lines: list[dict] = [dict(line) for line in run_span_lines]
    lines.append(synthetic_span(
        trace_id=HARNESS_TRACE_ID,
        span_id=synthetic_span_id("current-harness-config"),
        name="harness.config",
        observation_kind="HARNESS_CONFIG",
        timestamp=timestamp,
        attributes={
            "harness.version": harness_config.get("version") or "",
            "harness.system_prompt": harness_config.get("system_prompt") or "",
            "harness.model_settings": _json(harness_config.get("model_settings") or {}),
            "harness.tool_policy": _json(harness_config.get("tool_policy") or {}),
            "harness.eval_metadata": _json(harness_config.get("eval_metadata") or {}),
            SIGNAL_SOURCE: "harness_config",
        },
    ))
    for index, item in enumerate(human_feedback):
        lines.append(synthetic_span(
            trace_id=item["trace_id"],
            span_id=synthetic_span_id(f"human-feedback-{index}"),
            name="human_feedback.comment",
            observation_kind="HUMAN_FEEDBACK",
            timestamp=timestamp,
            attributes={
                "feedback.id": item["feedback_id"],
                "feedback.trace_id": item["trace_id"],
                "feedback.trace_label": item.get("trace_label") or "",
                "feedback.question": item.get("question") or "",
                "feedback.summary": item.get("summary") or "",
                "feedback.required_observations": _json(list(item.get("required_observations") or [])),
                "feedback.prohibited_claims": _json(list(item.get("prohibited_claims") or [])),
                SIGNAL_SOURCE: "human_feedback",
            },
        ))
    for index, item in enumerate(llm_insights):
        lines.append(synthetic_span(
            trace_id=item["trace_id"],
            span_id=synthetic_span_id(f"llm-insight-{index}"),
            name="llm_feedback.insight",
            observation_kind="LLM_FEEDBACK",
            timestamp=timestamp,
            attributes={
                "llm_feedback.id": item["insight_id"],
                "llm_feedback.trace_id": item["trace_id"],
                "llm_feedback.trace_label": item.get("trace_label") or "",
                "llm_feedback.question": item.get("question") or "",
                "llm_feedback.observations": _json(list(item.get("observations") or [])),
                SIGNAL_SOURCE: "llm_feedback",
            },
        ))
    for index, item in enumerate(eval_definitions):
        lines.append(synthetic_span(
            trace_id=item["source_trace_id"],
            span_id=synthetic_span_id(f"generated-eval-{index}"),
            name="generated_eval.definition",
            observation_kind="EVAL",
            timestamp=timestamp,
            attributes={
                "eval.id": item["eval_id"],
                "eval.trace_id": item["source_trace_id"],
                "eval.trace_label": item.get("source_trace_label") or "",
                "eval.title": item.get("title") or "",
                "eval.method": item.get("scoring_method") or "",
                "eval.expected_behavior": item.get("expected_behavior") or "",
                "eval.pass_example": item.get("suggested_pass_example") or "",
                "eval.fail_example": item.get("suggested_fail_example") or "",
                SIGNAL_SOURCE: "generated_eval",
            },
        ))
    lines.append(synthetic_span(
        trace_id=GATE_SUMMARY_TRACE_ID,
        span_id=synthetic_span_id("eval-gate-summary"),
        name="eval_gate.summary",
        observation_kind="EVAL_RESULT",
        timestamp=timestamp,
        attributes={
            "eval_gate.total": int(gate_summary.get("total") or 0),
            "eval_gate.passed": int(gate_summary.get("passed") or 0),
            "eval_gate.failed": int(gate_summary.get("failed") or 0),
            SIGNAL_SOURCE: "eval_gate",
        },
    ))
    for index, item in enumerate(gate_rows):
        lines.append(synthetic_span(
            trace_id=item["trace_id"],
            span_id=synthetic_span_id(f"eval-gate-row-{index}"),
            name="eval_gate.result",
            observation_kind="EVAL_RESULT",
            timestamp=timestamp,
            attributes={
                "eval.id": item["eval_id"],
                "eval.title": item.get("title") or "",
                "eval.trace_id": item["trace_id"],
                "eval.trace_label": item.get("trace_label") or "",
                "eval.passed": bool(item.get("passed")),
                "eval.explanation": item.get("explanation") or "",
                SIGNAL_SOURCE: "eval_gate",
            },
        ))
    _with_project_ids(lines, run_count=len(run_span_lines))
    for number, line in enumerate(lines, start=1):
        problem = line_problem(line)
        if problem:
            raise ValueError(f"Optimization context line {number} ({line.get('name') or 'unnamed'}): {problem}")
    return lines


def _with_project_ids(lines: list[dict], *, run_count: int) -> None:
    """HALO indexes a trace under its first span's `inference.project_id` (and filters on it): a run span
    without one (an import that named none) gets the context's, so no trace is left out."""
    for index, line in enumerate(lines[:run_count]):
        attributes = line.get("attributes") if isinstance(line.get("attributes"), dict) else None
        if attributes is not None and not attributes.get("inference.project_id"):
            lines[index] = {**line, "attributes": {**attributes, "inference.project_id": PROJECT_ID}}


def line_problem(line: dict) -> str:
    """Why HALO's loader would reject this line (its SpanRecord model), or "" when it loads."""
    from engine.traces.models.canonical_span import SpanRecord  # pydantic only; cheap to import
    from pydantic import ValidationError

    try:
        encoded = json.dumps(line, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        return f"not JSON-serialisable: {exc}"
    try:
        SpanRecord.model_validate_json(encoded)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ())) or "line"
        return f"{where}: {first.get('msg')}"
    if not str(line.get("trace_id") or "").strip():
        return "trace_id is empty"
    return ""


def write_context(lines: Iterable[dict], path: Path) -> Path:
    """Write the lines as HALO JSONL (one JSON object per line) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines)
    path.write_text(text, encoding="utf-8")
    return path


def _context_timestamp(run_span_lines: list[dict]) -> str:
    stamps = [str(line.get("end_time") or "") for line in run_span_lines]
    stamps = [stamp for stamp in stamps if _TIMESTAMP.match(stamp)]
    return max(stamps) if stamps else FALLBACK_TIMESTAMP


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


# -- the "HALO input summary" table ---------------------------------------------

_SUMMARY_ROWS = (
    # (signal source or None for run spans, span name, label, where it lives, what is included)
    ("harness_config", "harness.config", "Current harness config", "global config span",
     "system prompt, model settings, tool policy, eval metadata"),
    (None, None, "SDK execution traces", "original runtime traces", "agent steps, tool calls, outputs"),
    ("human_feedback", "human_feedback.comment", "Human feedback", "appended to the source trace",
     "reviewer summary, required observations, prohibited claims"),
    ("llm_feedback", "llm_feedback.insight", "LLM feedback", "appended to the source trace",
     "model-generated observations"),
    ("generated_eval", "generated_eval.definition", "Generated eval definitions", "appended to the source trace",
     "expected behavior, rubric, pass/fail examples"),
    ("eval_gate", "eval_gate.result", "Promptfoo row results", "appended to the source trace",
     "pass/fail outcome and explanation"),
    ("eval_gate", "eval_gate.summary", "Promptfoo gate summary", "global summary span", "suite totals across all evals"),
)


def input_summary_rows(lines: list[dict]) -> list[dict]:
    """The seed's "HALO input summary" rows, counted from the context lines HALO will read.

    Each row is {"signal", "count", "where", "included"}. SDK execution traces are the
    distinct trace ids among the run spans (lines without an optimizer signal).
    """
    span_counts: dict[tuple[str, str], int] = {}
    run_traces: set[str] = set()
    for line in lines:
        attributes = line.get("attributes") or {}
        source = attributes.get(SIGNAL_SOURCE)
        if source is None:
            run_traces.add(str(line.get("trace_id") or ""))
            continue
        key = (str(source), str(line.get("name") or ""))
        span_counts[key] = span_counts.get(key, 0) + 1
    rows = []
    for source, name, label, where, included in _SUMMARY_ROWS:
        count = len(run_traces) if source is None else span_counts.get((source, name), 0)
        rows.append({"signal": label, "count": count, "where": where, "included": included})
    return rows


def render_input_summary(rows: list[dict]) -> str:
    """The table as the notebook shows it (Markdown)."""
    out = [
        "### HALO input summary",
        "",
        "| Input signal | Count | Where it lives | What is included |",
        "| --- | ---: | --- | --- |",
    ]
    out.extend(f"| {row['signal']} | {row['count']} | {row['where']} | {row['included']} |" for row in rows)
    return "\n".join(out)


# -- the report prompt -----------------------------------------------------------

def render_report_prompt() -> str:
    """What HALO is asked to write: an implementation-first handoff in seven sections."""
    sections = "\n".join(f"{number}. `{heading}`" for number, heading in enumerate(REQUIRED_SECTIONS, start=1))
    subheadings = "\n".join(f"   - `{heading}`" for heading in DETAILED_SUBHEADINGS)
    return f"""
The trace file is the optimization context of a financial diligence analyst agent; treat it as the single
source of truth. Besides the agent's own execution traces it holds spans whose `optimizer.signal_source`
attribute says what they are: `harness_config` (the current harness: system prompt, model settings, tool
policy, eval metadata), `human_feedback` (expert reviews, attached to the trace they review), `llm_feedback`
(model-written insights), `generated_eval` (eval definitions) and `eval_gate` (the eval gate's summary and
its per-row results).

Weigh human feedback as first-class evidence. Before you recommend any change, hold the evidence against the
current harness config and say which case applies:
- the harness does not state the requirement at all (missing requirement);
- the harness states it but the runs do not reliably follow it (present but not reliably followed);
- the problem is in the implementation or in what is observed and measured (implementation or observability defect).
Before you write that the harness does not state something, search the system prompt and the tool policy for it:
if they state it in other words, the case is "present but not reliably followed", not a missing requirement.

Cite the evidence for every recommendation (each item of the top 3 and each row of the table), using the ids
exactly as they appear in the trace file: `[feedback:<feedback.id>]` for a human feedback span,
`[eval:<eval.id>]` for an eval definition, `[gate:<eval.id>]` for a gate row, `[span:<span_id>]` for any other
span. Cite only items that are about that recommendation; Loopsite checks every citation against the data.

Write a handoff that an engineer or coding agent can implement directly, using exactly these top-level
sections in this order and no others:
{sections}

What each section holds:
- Executive summary: what the current harness already does well, the most valuable remaining gaps, and
  whether the eval gate passed (with its totals).
- Top 3 changes to implement first: the three most valuable changes, each with a short reason.
- Ranked recommendation table: a Markdown table with rank, recommendation, impact, confidence,
  implementation effort, evidence and validation.
- Supporting diagnosis and evidence: the recurring harness-level failure modes, each classified as missing
  requirement, present but not reliably followed, or implementation/observability defect, with the
  evidence source for each.
- Detailed recommendations: these sub-headings, exactly as written and in this order (never use the word
  "owner" in them). When a change is an instruction for the system prompt, quote the sentence to add.
{subheadings}
- Insights by feedback source: what came from the traces, human feedback, LLM feedback, generated evals,
  eval-gate results and the harness config.
- Machine-readable summary: exactly one fenced ```json block holding an object with a `top_priorities` list.
""".strip()


def render_retry_prompt(problems: list[str]) -> str:
    """The short follow-up sent when a report lacks sections or has them out of order."""
    listed = "\n".join(f"- `{heading}`" for heading in problems)
    order = "\n".join(f"{number}. `{heading}`" for number, heading in enumerate(REQUIRED_SECTIONS, start=1))
    return (
        "Your previous report is incomplete: these required sections are missing or out of order:\n"
        f"{listed}\n\n"
        "Write the complete report again, from `## Executive summary` to `## Machine-readable summary`, "
        f"with every section in this order:\n{order}"
    )


# -- reading the report ------------------------------------------------------------

_HEADING_LINE = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t#]*$", re.MULTILINE)


def _normalise_heading(text: str) -> str:
    text = re.sub(r"^\d+[.)]\s*", "", text.strip())  # "## 1. Executive summary"
    return " ".join(text.replace("*", "").replace("`", "").split()).lower()


def _heading_positions(report: str, level: int) -> list[tuple[int, str]]:
    return [(match.start(), _normalise_heading(match.group(2)))
            for match in _HEADING_LINE.finditer(report or "") if len(match.group(1)) == level]


def _problems(report: str, required: tuple[str, ...], level: int) -> list[str]:
    """Headings of `required` that are absent, or present but outside the longest run in the right order.

    Of the orders that keep the most headings in place, the one keeping the earlier
    required headings wins: with the table written before the top 3, the table is
    the one out of order.
    """
    found = _heading_positions(report, level)
    first: dict[str, int] = {}
    for start, text in found:
        first.setdefault(text, start)
    present = [(heading, first[_normalise_heading(heading.lstrip("#"))]) for heading in required
               if _normalise_heading(heading.lstrip("#")) in first]
    longest_from = [1] * len(present)  # longest in-order chain starting at each present heading
    for i in range(len(present) - 1, -1, -1):
        for j in range(i + 1, len(present)):
            if present[j][1] > present[i][1]:
                longest_from[i] = max(longest_from[i], 1 + longest_from[j])
    kept: set[str] = set()
    needed, last = max(longest_from, default=0), -1
    for (heading, position), length in zip(present, longest_from):
        if needed and position > last and length == needed:
            kept.add(heading)
            last, needed = position, needed - 1
    return [heading for heading in required if heading not in kept]


def check_sections(report: str) -> list[str]:
    """The required top-level headings that are missing or out of order (empty when the report is complete)."""
    return _problems(report, REQUIRED_SECTIONS, 2)


def check_subheadings(report: str) -> list[str]:
    """The Detailed recommendations sub-headings that are missing or out of order in that section."""
    section = extract_section(report, "## Detailed recommendations")
    problems = []
    for level in (3, 4):
        wanted = tuple(heading for heading in DETAILED_SUBHEADINGS if heading.startswith("#" * level + " "))
        problems += _problems(section, wanted, level)
    return [heading for heading in DETAILED_SUBHEADINGS if heading in problems]


def clean_handoff(report: str) -> str:
    """The handoff: the report from its `## Executive summary` heading on (anything HALO wrote before is dropped)."""
    text = (report or "").replace("\r\n", "\n")
    match = re.search(r"(?im)^[ \t]*##[ \t]+(?:\d+[.)][ \t]*)?executive summary\b", text)
    if match is None:
        match = re.search(r"(?i)##[ \t]+executive summary\b", text)  # heading glued to preceding text
    kept = text[match.start():] if match else text
    return kept.strip() + "\n"


def extract_section(report: str, heading: str) -> str:
    """One section, from its heading line up to the next top-level (`## `) heading; "" when absent."""
    text = report or ""
    wanted = _normalise_heading(heading.lstrip("#"))
    level = len(heading) - len(heading.lstrip("#"))
    for match in _HEADING_LINE.finditer(text):
        if len(match.group(1)) == level and _normalise_heading(match.group(2)) == wanted:
            rest = text[match.end():]
            following = re.search(r"(?m)^##[ \t]", rest)
            end = match.end() + (following.start() if following else len(rest))
            return text[match.start():end].strip()
    return ""


def handoff_summary(report: str) -> str:
    """What the notebook shows of the handoff: the top 3 changes and the insights by feedback source."""
    sections = [
        extract_section(report, "## Top 3 changes to implement first"),
        extract_section(report, "## Insights by feedback source"),
    ]
    shown = "\n\n".join(section for section in sections if section)
    return shown or (report or "").strip()


def top_priorities(report: str) -> list:
    """`top_priorities` from the report's fenced JSON block (the Machine-readable summary's first); [] if none."""
    section = extract_section(report, "## Machine-readable summary") or report or ""
    for block in re.findall(r"```(?:json)?[ \t]*\n(.*?)```", section, flags=re.DOTALL | re.IGNORECASE):
        try:
            value = json.loads(block)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict) and isinstance(value.get("top_priorities"), list):
            return value["top_priorities"]
    return []


# -- running HALO -------------------------------------------------------------------

class HaloError(RuntimeError):
    """HALO did not produce a report; the message says why (with the child's stderr tail)."""

    def __init__(self, message: str, *, stderr_tail: str = "", timed_out: bool = False):
        super().__init__(message)
        self.stderr_tail = stderr_tail
        self.timed_out = timed_out


@dataclass(frozen=True)
class HaloOptions:
    model: str
    base_url: str
    api_key: str
    maximum_depth: int = 1
    maximum_turns: int = 20
    maximum_parallel_subagents: int = 2
    status_interval: float = 2.0
    # Consecutive failed model calls before HALO gives up (HALO's default of 10, with
    # backoff, keeps a run against a dead endpoint going for minutes).
    max_llm_failures: int = 3
    # The endpoint's limits (loopsite.llm.model_limits): the child's model client keeps them and waits out
    # 429 / 503 (runs.model_limits). Empty: no shared limit, 429 / 503 still waited out.
    model_limits: dict[str, Any] = field(default_factory=dict, compare=False)

    def __repr__(self) -> str:  # never print the key
        return (f"HaloOptions(model={self.model!r}, base_url={self.base_url!r}, maximum_depth={self.maximum_depth}, "
                f"maximum_turns={self.maximum_turns}, maximum_parallel_subagents={self.maximum_parallel_subagents})")


def options_from_settings(**overrides: Any) -> HaloOptions:
    """HaloOptions from the app's settings and model endpoint (the stand-in when no key is set)."""
    from django.conf import settings

    from loopsite.llm import endpoint, model_limits

    ep = endpoint()
    values = {
        "model": settings.OPENAI_HALO_MODEL,
        "base_url": ep.base_url,
        "api_key": ep.api_key,
        "maximum_depth": settings.HALO_MAXIMUM_DEPTH,
        "maximum_turns": settings.HALO_MAXIMUM_TURNS,
        "maximum_parallel_subagents": settings.HALO_MAXIMUM_PARALLEL_SUBAGENTS,
        "max_llm_failures": settings.HALO_MAX_LLM_FAILURES,
        # A call holds its slot at most for the client's own time limit (openai's default 600 s), plus a margin.
        "model_limits": model_limits(lease_seconds=HALO_CALL_TIMEOUT_SECONDS + 30),
    }
    values.update(overrides)
    return HaloOptions(**values)


def run_halo(
    *,
    context_path: Path,
    prompt: str,
    options: HaloOptions,
    on_event: Callable[[dict], None] | None = None,
    timeout: float = 600.0,
    history: list[dict] | None = None,
    temp_root: Path | None = None,
) -> str:
    """Run HALO over `context_path` with `prompt` and return its report text.

    HALO runs in `python -m reviews.halo_child` with a scrubbed environment; every
    JSON event line it prints (tool_call, tool_result, text, status, report, error)
    is passed to `on_event` in this thread as it arrives. `history` (chat messages,
    {"role", "content"}) goes before `prompt`. The child is killed after `timeout`
    seconds. Raises HaloError when no report comes back.
    """
    context_path = Path(context_path).resolve()
    if not context_path.is_file():
        raise HaloError(f"The optimization context {context_path} does not exist.")
    workdir = Path(tempfile.mkdtemp(prefix="loopsite-halo-", dir=temp_root)).resolve()
    (workdir / "tmp").mkdir()
    messages = [*(history or []), {"role": "user", "content": prompt}]
    job = {
        "context_path": str(context_path),
        "messages": messages,
        "model": options.model,
        "base_url": options.base_url,
        "api_key": options.api_key,
        "maximum_depth": options.maximum_depth,
        "maximum_turns": options.maximum_turns,
        "maximum_parallel_subagents": options.maximum_parallel_subagents,
        "index_dir": str(workdir / "index"),
        "status_interval": options.status_interval,
        "max_llm_failures": options.max_llm_failures,
        "model_limits": options.model_limits,
    }
    try:
        return _run_child(job, workdir=workdir, on_event=on_event, timeout=timeout)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _run_child(job: dict, *, workdir: Path, on_event: Callable[[dict], None] | None, timeout: float) -> str:
    stderr_path = workdir / "halo-stderr.log"
    started = time.monotonic()
    report: str | None = None
    error: str | None = None
    timed_out = False
    with stderr_path.open("wb") as stderr_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "reviews.halo_child"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr_file,
            cwd=workdir, env=secretless_env(workdir), start_new_session=True, preexec_fn=PREEXEC,
        )
        lines: queue.Queue[bytes | None] = queue.Queue()
        reader = threading.Thread(target=_pump, args=(proc.stdout, lines), name="halo-stdout", daemon=True)
        reader.start()
        finished = False
        try:
            try:
                proc.stdin.write(json.dumps(job).encode("utf-8"))
                proc.stdin.close()
            except BrokenPipeError:
                pass
            while True:
                remaining = timeout - (time.monotonic() - started)
                if remaining <= 0:
                    timed_out = True
                    break
                try:
                    raw = lines.get(timeout=min(1.0, remaining))
                except queue.Empty:
                    continue
                if raw is None:
                    finished = True
                    break
                event = _parse_event(raw)
                if event is None:
                    continue
                if event["type"] == "report":
                    report = str(event.get("text") or "")
                elif event["type"] == "error":
                    error = str(event.get("message") or "unknown error")
                if on_event is not None:
                    on_event(event)
        finally:
            if finished and proc.poll() is None:
                try:
                    proc.wait(timeout=10)  # stdout closed: the child is exiting
                except subprocess.TimeoutExpired:
                    pass
            if proc.poll() is None:  # timed out, or on_event raised
                kill_group(proc)
            reader.join(timeout=5)
    tail = _tail(stderr_path)
    seconds = time.monotonic() - started
    if timed_out:
        raise HaloError(f"HALO timed out after {int(timeout)} s and was stopped.{_with_tail(tail)}",
                        stderr_tail=tail, timed_out=True)
    if report is not None and report.strip():
        log.info("HALO finished in %.1fs (%d characters)", seconds, len(report))
        return report
    if error:
        raise HaloError(f"HALO failed: {error}{_with_tail(tail)}", stderr_tail=tail)
    raise HaloError(f"HALO exited with code {proc.returncode} without a report.{_with_tail(tail)}", stderr_tail=tail)


def run_halo_with_retry(
    *,
    context_path: Path,
    prompt: str,
    options: HaloOptions,
    on_event: Callable[[dict], None] | None = None,
    timeout: float = 600.0,
    temp_root: Path | None = None,
) -> tuple[str, list[str]]:
    """Run HALO; when its report lacks sections (or has them out of order), re-prompt once.

    The second run gets the first prompt, the first report and a short follow-up
    naming the problems. Returns (report, problems still present after the retry;
    empty when the report is complete).
    """
    report = run_halo(context_path=context_path, prompt=prompt, options=options, on_event=on_event, timeout=timeout,
                      temp_root=temp_root)
    problems = check_sections(report)
    if not problems:
        return report, []
    log.warning("HALO report lacks sections %s; re-prompting once", problems)
    if on_event is not None:
        on_event({"type": "retry", "missing": problems})
    history = [{"role": "user", "content": prompt}, {"role": "assistant", "content": report}]
    second = run_halo(context_path=context_path, prompt=render_retry_prompt(problems), options=options,
                      on_event=on_event, timeout=timeout, history=history, temp_root=temp_root)
    second_problems = check_sections(second)
    if len(second_problems) > len(problems):  # the retry made it worse: keep the first report
        return report, problems
    return second, second_problems


def _pump(stream, lines: queue.Queue) -> None:  # noqa: ANN001
    try:
        for raw in iter(stream.readline, b""):
            lines.put(raw)
    finally:
        lines.put(None)


def _parse_event(raw: bytes) -> dict | None:
    text = raw.decode("utf-8", errors="replace").strip()
    if not text:
        return None
    try:
        event = json.loads(text)
    except json.JSONDecodeError:
        log.debug("HALO child wrote a non-JSON line: %s", text[:200])
        return None
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        return None
    return event


def _tail(path: Path, limit: int = 4000) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    return data[-limit:].decode("utf-8", errors="replace").strip()


def _with_tail(tail: str) -> str:
    if not tail:
        return ""
    lines = tail.splitlines()[-15:]
    return "\nHALO stderr (tail):\n" + "\n".join(lines)


# -- checking the handoff's evidence ---------------------------------------------------------------------------
#
# Every recommendation cites what supports it with CITATION_SYNTAX (ids as they appear in the context):
# `[feedback:<feedback.id>]`, `[eval:<eval.id>]`, `[gate:<eval.id of a gate row>]`, `[span:<span_id>]`.
# `check_evidence()` resolves each citation against the context lines and marks those that do not
# exist, or whose item shares no subject word with the recommendation citing it (a wrong theme); it
# also checks every "the harness/prompt does not state X" claim against the harness prompt and tool
# policy, and lists recommendations that cite nothing.

CITATION = re.compile(r"\[(feedback|eval|gate|span):\s*([^\]\s]+)\s*\]")
CITATION_SYNTAX = "[feedback:ID], [eval:EVAL_ID], [gate:EVAL_ID], [span:SPAN_ID]"
_OMISSION = re.compile(
    r"\b(?:harness|(?:system )?prompt|tool policy|instructions?)\b[^.\n|]{0,60}?\b(?:does not|doesn't|do not|never|nowhere)"
    r"\s+(?:state|say|mention|require|include|cover|contain|ask|tell|spell out)s?\b([^.\n|]*)",
    re.IGNORECASE,
)
_WORD = re.compile(r"[a-z][a-z0-9]+")
# Words every recommendation and every signal share; they say nothing about the subject.
_GENERIC = frozenset("""
about above after again against also analyst and answer answers any are because been before being both but
can cite cited cites claim claims could does doing each eval evals evidence feedback figure figures file files
for from gate harness has have how human into its itself just make model more most must next not now only other
our out over own prompt rather report reports rule rules same should some source sources span spans state states
such than that the their them then there these they this those through too trace traces under until very was
were what when where which while who why will with would you your add added adding keep run runs row rows
system instruction instructions recommendation recommendations change changes item items version pass passes
passed fail fails failed failing case cases use uses using say says said mention mentions name names
write writes written tell tells ensure""".split())


def _stem(word: str) -> str:
    for suffix in ("ations", "ation", "ions", "ion", "ings", "ing", "ies", "ed", "es", "s", "ly"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 4:
            return word[: -len(suffix)]
    return word


def subject_words(text: str) -> set[str]:
    """The stems of a text's subject words (no generic words such as answer, harness, evidence)."""
    return {_stem(word) for word in _WORD.findall((text or "").lower().replace("_", " ").replace("-", " "))
            if word not in _GENERIC and len(word) >= 3}


def _sentences(text: str) -> list[str]:
    parts = re.split(r"(?<=[.!?])\s+|\n+", text or "")
    return [" ".join(part.split()) for part in parts if part.strip()]


def citation_targets(lines: list[dict]) -> dict[tuple[str, str], str]:
    """(kind, id) -> the text of what can be cited in these context lines."""
    targets: dict[tuple[str, str], str] = {}
    for line in lines:
        attributes = line.get("attributes") or {}
        source = attributes.get(SIGNAL_SOURCE)
        span_id = str(line.get("span_id") or "")
        text = " ".join(str(value) for key, value in attributes.items()
                        if isinstance(value, str) and not key.startswith(("inference.", "openinference.", "optimizer.")))
        if span_id:
            targets[("span", span_id)] = f"{line.get('name') or ''} {text}"
        if source == "human_feedback" and attributes.get("feedback.id"):
            targets[("feedback", str(attributes["feedback.id"]))] = " ".join(str(attributes.get(key) or "") for key in (
                "feedback.question", "feedback.summary", "feedback.required_observations", "feedback.prohibited_claims"))
        elif source == "generated_eval" and attributes.get("eval.id"):
            targets[("eval", str(attributes["eval.id"]))] = " ".join(str(attributes.get(key) or "") for key in (
                "eval.title", "eval.expected_behavior"))
        elif source == "eval_gate" and line.get("name") == "eval_gate.result" and attributes.get("eval.id"):
            targets[("gate", str(attributes["eval.id"]))] = " ".join(str(attributes.get(key) or "") for key in (
                "eval.title", "eval.explanation"))
    # A gate row is about what its eval is about: read the eval's definition with it.
    for (kind, ident), text in list(targets.items()):
        if kind == "gate" and ("eval", ident) in targets:
            targets[(kind, ident)] = f"{text} {targets[('eval', ident)]}"
    return targets


def harness_texts(lines: list[dict]) -> str:
    """The harness prompt and tool policy, from the context's harness config span."""
    for line in lines:
        attributes = line.get("attributes") or {}
        if attributes.get(SIGNAL_SOURCE) == "harness_config":
            policy = attributes.get("harness.tool_policy") or ""
            try:
                policy = "\n".join(_strings(json.loads(policy)))
            except (TypeError, ValueError):
                pass
            return f"{attributes.get('harness.system_prompt') or ''}\n{policy}"
    return ""


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [text for item in value.values() for text in _strings(item)]
    if isinstance(value, list):
        return [text for item in value for text in _strings(item)]
    return []


def recommendation_units(handoff: str) -> list[str]:
    """The recommendations: the numbered items of the top 3 (with their indented lines) and the table's rows."""
    units: list[str] = []
    top = extract_section(handoff, "## Top 3 changes to implement first")
    current: list[str] = []
    for line in top.splitlines()[1:]:
        if re.match(r"^\s*\d+[.)]\s+", line):
            if current:
                units.append("\n".join(current))
            current = [line.strip()]
        elif current and line.strip():
            current.append(line.strip())
    if current:
        units.append("\n".join(current))
    table = extract_section(handoff, "## Ranked recommendation table")
    for line in table.splitlines():
        if line.startswith("|") and not re.match(r"^\|\s*-", line) and not re.match(r"^\|\s*rank\b", line, re.I):
            units.append(line.strip())
    return units


def _subject_text(unit: str) -> str:
    """What a recommendation is about: its text without citations, evidence counts and validation steps."""
    text = CITATION.sub(" ", unit)
    if text.startswith("|"):
        cells = [cell.strip() for cell in text.strip("|").split("|")]
        return cells[1] if len(cells) > 1 else text
    text = re.split(r"\n\s*Evidence:", text)[0]
    return text


def _described_elsewhere(title: str, handoff: str) -> set[str]:
    """Subject words of the handoff's other passages about the same recommendation: each block (between blank
    lines) that contains its title, with a quoted block right after it (e.g. the sentence to add)."""
    title = re.sub(r"^\s*\d+[.)]\s*|\*", "", title.split("\n")[0]).strip(" .")
    title = title.split(":", 1)[1].strip() if ":" in title and len(title.split(":", 1)[1].split()) >= 3 else title
    if len(title.split()) < 3:
        return set()
    blocks = re.split(r"\n\s*\n", handoff or "")
    words: set[str] = set()
    for index, block in enumerate(blocks):
        if title.lower() in " ".join(block.replace("*", "").split()).lower():
            words |= subject_words(CITATION.sub(" ", block))
            following = blocks[index + 1].strip() if index + 1 < len(blocks) else ""
            if following.startswith(">"):
                words |= subject_words(following)
    return words


def _stated_in(claim: str, unit: str, harness: str) -> str:
    """The harness sentence that states what `claim` says it does not ("" if none does)."""
    target = re.split(r"[,;:(]| and | but ", claim.strip(" :,;"), maxsplit=1)[0].strip()
    if not subject_words(target) or re.fullmatch(r"(?:(?:this|the|that|its?|such an?)\s*)?(?:rule|requirement|instruction|"
                                                 r"behaviou?r|check|step)?s?", target.lower()):
        quoted = re.findall(r'"([^"\n]{20,})"|“([^”\n]{20,})”', unit)
        target = next((a or b for a, b in quoted), "") or _subject_text(unit)
    wanted = subject_words(target)
    if not wanted:
        return ""
    for sentence in _sentences(harness):
        words = subject_words(sentence)
        shared = wanted & words
        # The harness sentence is about the same thing: it shares at least three subject words with the claim,
        # and at least half of its own subject words are the claim's; or it holds all of a short claim's words.
        if (len(shared) >= 3 and len(shared) * 2 >= len(words)) or (len(wanted) <= 4 and wanted <= words):
            return sentence
    return ""


def check_evidence(*, handoff: str, lines: list[dict]) -> dict[str, list[dict]]:
    """Resolve the handoff's citations and check its "does not state" claims against the harness.

    Returns {"citations": [...], "unresolved": [...], "uncited": [...], "stated_claims": [...]}: every
    citation with its status (`ok`, `missing`: no such id in the cycle's data, `wrong_theme`: the cited
    item shares no subject word with the recommendation), the unresolved ones again, recommendations
    citing nothing, and "does not state" claims the harness does state (with the sentence that states it).
    """
    targets = citation_targets(lines)
    harness = harness_texts(lines)
    citations: list[dict] = []
    uncited: list[dict] = []
    seen: set[tuple[str, str, str]] = set()
    for unit in recommendation_units(handoff):
        found = CITATION.findall(unit)
        subject = subject_words(_subject_text(unit)) | _described_elsewhere(_subject_text(unit), handoff)
        if not found:
            uncited.append({"recommendation": _short_text(_subject_text(unit))})
        for kind, ident in found:
            key = (kind, ident, _short_text(_subject_text(unit)))
            if key in seen:
                continue
            seen.add(key)
            entry = {"citation": f"[{kind}:{ident}]", "kind": kind, "id": ident,
                     "recommendation": _short_text(_subject_text(unit))}
            text = targets.get((kind, ident))
            if text is None:
                entry.update(status="missing", reason=f"No {kind} with id {ident} in this cycle's data.")
            elif kind != "span" and subject and not (subject & subject_words(text)):
                entry.update(status="wrong_theme",
                             reason=f"The cited {kind} is about something else: {_short_text(text, 160)}")
            else:
                entry.update(status="ok", reason="")
            citations.append(entry)
    stated: list[dict] = []
    if harness.strip():
        for unit in [*recommendation_units(handoff), *_sentences(extract_section(handoff, "## Supporting diagnosis and evidence"))]:
            for match in _OMISSION.finditer(CITATION.sub(" ", unit)):
                sentence = _stated_in(match.group(1), unit, harness)
                if sentence:
                    item = {"claim": _short_text(match.group(0), 200), "recommendation": _short_text(_subject_text(unit)),
                            "harness_sentence": sentence}
                    if item not in stated:
                        stated.append(item)
    return {"citations": citations, "unresolved": [c for c in citations if c["status"] != "ok"],
            "uncited": uncited, "stated_claims": stated}


def _short_text(text: str, limit: int = 140) -> str:
    text = " ".join(re.sub(r"[*`]", "", text or "").split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def evidence_appendix(checks: dict[str, list[dict]]) -> str:
    """What the downloaded handoff lists at its end: unresolved citations and contradicted claims."""
    unresolved = checks.get("unresolved") or []
    stated = checks.get("stated_claims") or []
    uncited = checks.get("uncited") or []
    if not (unresolved or stated or uncited):
        return ""
    lines = ["", "---", "", "## Evidence check (added by Loopsite)", ""]
    if unresolved:
        lines.append("Unresolved citations (the cited item does not exist in this cycle, or is about something else):")
        lines += [f"- `{item['citation']}` in \"{item['recommendation']}\": {item['reason']}" for item in unresolved]
        lines.append("")
    if stated:
        lines.append("Claims that the harness does not state something it does state:")
        lines += [f"- \"{item['claim']}\" — the harness says: \"{item['harness_sentence']}\"" for item in stated]
        lines.append("")
    if uncited:
        lines.append("Recommendations that cite no evidence:")
        lines += [f"- {item['recommendation']}" for item in uncited]
        lines.append("")
    return "\n".join(lines)
