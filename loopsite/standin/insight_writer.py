"""The insight writer: the seed's `generate_llm_feedback` step (Step 4), by readable rules.

Claims a request whose first user message carries `MARKER` (the app's insights prompt,
reviews/generation.py). It reads the `Traces:` JSON list from the prompt and writes one
`llm_insight` per trace; every observation is derived from that trace alone:

- which dataroom files the answer cites (backticked paths), or that it cites none;
- the figures the answer states (money, percentages, months);
- how the runtime validators and the required artifacts came out;
- whether the answer flags unsupported or missing data, or states things flatly.

A repair request (the app's `REPAIR_MARKER` in the last user message) gets the same
answer, rebuilt from the original prompt.
"""

from __future__ import annotations

import json
import re
from typing import Any

from .conversation import Conversation, Reply
from .textrules import json_after

NAME = "insight_writer"
PRODUCES_JSON = True
MARKER = "Loopsite task: llm-insights"  # as in reviews/generation.py
REPAIR_MARKER = "Loopsite task: repair-json"  # as in reviews/generation.py

_CITED = re.compile(r"`([^`\s]+\.(?:csv|json|md|txt|xlsx|pdf|yaml|yml))`")
_FIGURE = re.compile(r"\$\d[\d,]*(?:\.\d+)?\s?[MBK]?\b|\b\d+(?:\.\d+)?%|\b\d+[- ]months?\b", re.IGNORECASE)
_HEDGES = ("unsupported", "not provided", "not available", "cannot be verified", "unvalidated", "missing", "unclear")


def matches(conv: Conversation) -> bool:
    return MARKER in conv.first_user_text


def reply(conv: Conversation) -> Reply:
    traces = json_after(conv.first_user_text, "Traces:")
    if not isinstance(traces, list):
        return Reply(text=json.dumps({"error": "The prompt has no `Traces:` JSON list to review."}))
    insights = [insight_for(index, trace) for index, trace in enumerate(traces, start=1) if isinstance(trace, dict)]
    return Reply(text=json.dumps(insights, indent=2, ensure_ascii=False))


def insight_for(index: int, trace: dict[str, Any]) -> dict[str, Any]:
    answer = str(trace.get("answer") or "")
    observations = [_citations(answer), _figures(answer), _checks(trace), _hedging(answer)]
    return {
        "insight_id": f"llm_insight_{index:02d}",
        "trace_id": trace.get("trace_id", ""),
        "question": trace.get("question", ""),
        "source_type": "llm_insight",
        "observations": [text for text in observations if text],
    }


def _citations(answer: str) -> str:
    cited = list(dict.fromkeys(_CITED.findall(answer)))
    if not cited:
        return "Does not cite any dataroom file for its claims; key figures cannot be traced to a source."
    shown = ", ".join(cited[:4]) + (f" and {len(cited) - 4} more" if len(cited) > 4 else "")
    return f"Cites {len(cited)} dataroom file(s) for its claims: {shown}."


def _figures(answer: str) -> str:
    figures = list(dict.fromkeys(" ".join(match.split()) for match in _FIGURE.findall(answer)))
    if not figures:
        return "States no figures; the conclusion is qualitative only."
    return "Anchors its conclusion on figures: " + ", ".join(figures[:6]) + "."


def _checks(trace: dict[str, Any]) -> str:
    validators = trace.get("validators") or {}
    parts = []
    for key, label in (("evidence_coverage_passed", "evidence coverage"), ("output_contract_passed", "output contract")):
        value = validators.get(key)
        if value is not None:
            parts.append(f"{label} {'passed' if value else 'failed'}")
    artifacts = trace.get("artifacts") or []
    missing = trace.get("missing_artifacts") or []
    if artifacts or missing:
        parts.append(f"{len(artifacts)} artifact(s) written" + (f", missing {', '.join(missing)}" if missing else ""))
    return ("Runtime checks: " + "; ".join(parts) + ".") if parts else ""


def _hedging(answer: str) -> str:
    lowered = answer.lower()
    found = [word for word in _HEDGES if word in lowered]
    if found:
        return "Flags gaps instead of inferring them (" + ", ".join(f"“{word}”" for word in found[:3]) + ")."
    return "States its conclusions without flagging any missing or unsupported data."
