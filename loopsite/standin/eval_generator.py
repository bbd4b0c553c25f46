"""The eval generator: the seed's `generate_feedback_derived_evals` step (Step 5), by readable rules.

Claims a request whose first user message carries `MARKER` (the app's eval prompt,
reviews/generation.py). It reads `Traces:`, `Human feedback:` and `LLM insights:` JSON
lists from the prompt and writes one eval per human feedback item whose trace is listed:

- required observations become positive checks: a rubric requirement each, and an
  `icontains` assertion when the observation names a clear literal (a quoted phrase, a
  file name, a figure or a proper name);
- prohibited claims become negative checks: a rubric prohibition each, and a
  `not-contains` assertion when the claim is wording rather than behaviour;
- the trace's insights add nothing to the checks; their first observation is quoted in
  `expected_behavior` as context;
- `scoring_method` is `hybrid` with literal assertions, `llm_judge` without.

The rubric is written so that the stand-in's judge (judge.py) can apply it: one line per
requirement or prohibition, literals in double quotes.
"""

from __future__ import annotations

import json
from typing import Any

from .conversation import Conversation, Reply
from .textrules import first_sentence, json_after, negative_literal, positive_literal, slug

NAME = "eval_generator"
PRODUCES_JSON = True
MARKER = "Loopsite task: eval-generation"  # as in reviews/generation.py


def matches(conv: Conversation) -> bool:
    return MARKER in conv.first_user_text


def reply(conv: Conversation) -> Reply:
    prompt = conv.first_user_text
    traces = json_after(prompt, "Traces:")
    feedback = json_after(prompt, "Human feedback:")
    insights = json_after(prompt, "LLM insights:") or []
    if not isinstance(traces, list) or not isinstance(feedback, list):
        return Reply(text=json.dumps({"error": "The prompt needs `Traces:` and `Human feedback:` JSON lists."}))
    by_trace = {trace.get("trace_id"): trace for trace in traces if isinstance(trace, dict)}
    evals = []
    used_ids: set[str] = set()
    for item in feedback:
        if not isinstance(item, dict) or item.get("trace_id") not in by_trace:
            continue
        trace_insights = [i for i in insights if isinstance(i, dict) and i.get("trace_id") == item["trace_id"]]
        evals.append(eval_for(item, by_trace[item["trace_id"]], trace_insights, used_ids))
    return Reply(text=json.dumps(evals, indent=2, ensure_ascii=False))


def eval_for(feedback: dict[str, Any], trace: dict[str, Any], insights: list[dict[str, Any]],
             used_ids: set[str]) -> dict[str, Any]:
    label = feedback.get("trace_label") or trace.get("trace_label") or "trace"
    theme = str(feedback.get("theme") or "").strip()
    required = [str(text).strip() for text in feedback.get("required_observations") or [] if str(text).strip()]
    prohibited = [str(text).strip() for text in feedback.get("prohibited_claims") or [] if str(text).strip()]
    summary = " ".join(str(feedback.get("summary") or "").split())

    eval_id = slug(f"{theme or 'feedback'}-{label}") or "feedback-eval"
    base, number = eval_id, 2
    while eval_id in used_ids:
        eval_id, number = f"{base}-{number}", number + 1
    used_ids.add(eval_id)

    assertions = []
    for text in required:
        literal = positive_literal(text)
        if literal:
            assertions.append({"type": "icontains", "value": literal})
    for text in prohibited:
        literal = negative_literal(text)
        if literal:
            assertions.append({"type": "not-contains", "value": literal})

    topic = theme.replace("_", " ").strip().capitalize() or f"Feedback on {label}"
    title = f"{topic}: {first_sentence(summary, limit=110)}" if summary else topic
    return {
        "eval_id": eval_id,
        "title": title[:200],
        "scoring_method": "hybrid" if assertions else "llm_judge",
        "expected_behavior": _expected(summary, required, prohibited, insights),
        "source_trace_id": trace.get("trace_id", ""),
        "rubric": _rubric(required, prohibited),
        "deterministic_assertions": assertions,
        "suggested_pass_example": _pass_example(required, summary),
        "suggested_fail_example": _fail_example(prohibited, required),
    }


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:] if text[:2] != text[:2].upper() else text


def _expected(summary: str, required: list[str], prohibited: list[str], insights: list[dict[str, Any]]) -> str:
    parts = [summary] if summary else []
    if required:
        parts.append("The answer should " + "; ".join(_lower_first(text.rstrip(".")) for text in required) + ".")
    if prohibited:
        parts.append("It must not: " + "; ".join(_lower_first(_without_negation(text)) for text in prohibited) + ".")
    observations = [obs for insight in insights for obs in insight.get("observations") or []]
    if observations:
        parts.append(f"Model insight on the source run: {observations[0]}")
    return " ".join(parts) or "The answer should meet the approved reviewer feedback."


def _without_negation(text: str) -> str:
    text = text.rstrip(".")
    for prefix in ("Do not ", "Don't ", "Must not ", "Never ", "Avoid "):
        if text.lower().startswith(prefix.lower()):
            return text[len(prefix):]
    return f"say “{text}”"


def _rubric(required: list[str], prohibited: list[str]) -> str:
    lines = ["The answer passes only if it meets every requirement below and makes none of the prohibited claims."]
    if required:
        lines.append("Requirements:")
        for text in required:
            literal = positive_literal(text)
            lines.append(f"- {text.rstrip('.')}" + (f': mentions "{literal}".' if literal else "."))
    if prohibited:
        lines.append("The answer must not:")
        for text in prohibited:
            literal = negative_literal(text)
            lines.append(f"- {_without_negation(text)}" + (f': says "{literal}".' if literal else "."))
    return "\n".join(lines)


def _pass_example(required: list[str], summary: str) -> str:
    if not required:
        return summary or "An answer that follows the reviewer's feedback."
    literals = [positive_literal(text) for text in required]
    said = "; ".join(f"{text.rstrip('.')}" + (f" ({literal})" if literal else "") for text, literal in zip(required, literals))
    return f"An answer that does all of this: {said}."


def _fail_example(prohibited: list[str], required: list[str]) -> str:
    literals = [negative_literal(text) for text in prohibited]
    said = [literal for literal in literals if literal]
    if said:
        return f"An answer that says “{said[0]}”."
    if prohibited:
        return f"An answer that does what the reviewer ruled out: {_without_negation(prohibited[0])}."
    if required:
        return f"An answer that leaves out: {required[0].rstrip('.')}."
    return "An answer that ignores the reviewer's feedback."
