"""Checking model output against the seed's insight and eval schemas.

`parse_json` is the seed's `extract_json` (a fenced block or the whole text). The
validators return cleaned lists or raise `SchemaError` whose message names every
problem with where it is ("item 2 (eval_id 'x'): ..."), so the message can be sent
back to the model in a repair request and shown to people when the step fails.
Unknown trace references are rejected, never guessed.
"""

import re
from typing import Any

from loopsite.llm import SchemaError, parse_json  # noqa: F401  (shared with runs/handoffs.py)

SCORING_METHODS = ("deterministic", "llm_judge", "hybrid")
ASSERTION_TYPES = ("contains", "icontains", "not-contains")
EVAL_KEYS = (
    "eval_id", "title", "scoring_method", "expected_behavior", "source_trace_id", "rubric",
    "deterministic_assertions", "suggested_pass_example", "suggested_fail_example",
)
INSIGHT_KEYS = ("insight_id", "trace_id", "question", "source_type", "observations")
EVAL_ID_PATTERN = re.compile(r"^[a-z0-9]+(?:[-_][a-z0-9]+)*$")
MAX_PROBLEMS = 12


def _raise(problems: list[str]) -> None:
    if problems:
        shown = problems[:MAX_PROBLEMS]
        more = f" (and {len(problems) - MAX_PROBLEMS} more)" if len(problems) > MAX_PROBLEMS else ""
        raise SchemaError("; ".join(shown) + more + ".")


def _text(item: dict, key: str, where: str, problems: list[str], *, required: bool = True) -> str:
    value = item.get(key)
    if not isinstance(value, str):
        problems.append(f"{where}: `{key}` must be a string, got {type(value).__name__}")
        return ""
    value = value.strip()
    if required and not value:
        problems.append(f"{where}: `{key}` is empty")
    return value


def _list_of_objects(parsed: Any, what: str) -> list:
    if isinstance(parsed, dict):
        # Some models wrap the list: {"evals": [...]}. Accept exactly one list value, nothing else.
        lists = [value for value in parsed.values() if isinstance(value, list)]
        if len(parsed) == 1 and len(lists) == 1:
            parsed = lists[0]
    if not isinstance(parsed, list):
        raise SchemaError(f"Expected a JSON list of {what}, got {type(parsed).__name__}.")
    if not parsed:
        raise SchemaError(f"Expected a JSON list of {what}, got an empty list.")
    return parsed


def _unknown_keys(item: dict, allowed: tuple[str, ...], where: str, problems: list[str]) -> None:
    missing = [key for key in allowed if key not in item]
    if missing:
        problems.append(f"{where}: missing key(s) {', '.join(f'`{key}`' for key in missing)}")


def validate_insights(parsed: Any, *, trace_ids: set[str], scope: str = "any run in this cycle") -> list[dict[str, Any]]:
    """The seed's llm_insight list: one object per trace with string observations."""
    items = _list_of_objects(parsed, "LLM insights")
    problems: list[str] = []
    cleaned: list[dict[str, Any]] = []
    for index, item in enumerate(items, start=1):
        where = f"item {index}"
        if not isinstance(item, dict):
            problems.append(f"{where}: must be an object, got {type(item).__name__}")
            continue
        _unknown_keys(item, INSIGHT_KEYS, where, problems)
        trace_id = _text(item, "trace_id", where, problems) if "trace_id" in item else ""
        if trace_id and trace_id not in trace_ids:
            problems.append(f"{where}: trace_id '{trace_id}' is not the trace_id of {scope}")
        if item.get("source_type") != "llm_insight" and "source_type" in item:
            problems.append(f"{where}: `source_type` must be 'llm_insight', got {item.get('source_type')!r}")
        observations = item.get("observations")
        if "observations" in item:
            if not isinstance(observations, list) or not observations:
                problems.append(f"{where}: `observations` must be a non-empty list of strings")
            elif not all(isinstance(text, str) and text.strip() for text in observations):
                problems.append(f"{where}: every observation must be a non-empty string")
        cleaned.append({
            "insight_id": str(item.get("insight_id") or f"llm_insight_{index:02d}"),
            "trace_id": trace_id,
            "question": str(item.get("question") or ""),
            "observations": [text.strip() for text in observations or [] if isinstance(text, str) and text.strip()],
        })
    _raise(problems)
    return cleaned


def validate_assertions(value: Any, where: str = "deterministic_assertions") -> tuple[list[dict[str, str]], list[str]]:
    """(cleaned assertions, problems): a list of {type: contains|icontains|not-contains, value: non-empty string}."""
    problems: list[str] = []
    if not isinstance(value, list):
        return [], [f"{where}: must be a list of assertion objects, got {type(value).__name__}"]
    cleaned = []
    for index, assertion in enumerate(value, start=1):
        at = f"{where} #{index}"
        if not isinstance(assertion, dict):
            problems.append(f"{at}: must be an object with `type` and `value`")
            continue
        kind = assertion.get("type")
        if kind not in ASSERTION_TYPES:
            problems.append(f"{at}: type {kind!r} is not allowed (use {', '.join(ASSERTION_TYPES)})")
        text = assertion.get("value")
        if not isinstance(text, str) or not text.strip():
            problems.append(f"{at}: `value` must be a non-empty string")
        extra = set(assertion) - {"type", "value"}
        if extra:
            problems.append(f"{at}: unexpected key(s) {', '.join(sorted(extra))}")
        if kind in ASSERTION_TYPES and isinstance(text, str) and text.strip():
            cleaned.append({"type": kind, "value": text.strip()})
    return cleaned, problems


def validate_evals(parsed: Any, *, trace_ids: set[str], scope: str = "any run in this cycle") -> list[dict[str, Any]]:
    """The seed's eval definitions; `source_trace_id` must be the trace_id of a run in the cycle."""
    items = _list_of_objects(parsed, "eval definitions")
    problems: list[str] = []
    cleaned: list[dict[str, Any]] = []
    for index, item in enumerate(items, start=1):
        if not isinstance(item, dict):
            problems.append(f"item {index}: must be an object, got {type(item).__name__}")
            continue
        label = item.get("eval_id")
        where = f"item {index}" + (f" (eval_id '{label}')" if isinstance(label, str) and label else "")
        _unknown_keys(item, EVAL_KEYS, where, problems)
        eval_id = _text(item, "eval_id", where, problems) if "eval_id" in item else ""
        if eval_id and not EVAL_ID_PATTERN.match(eval_id.lower()):
            problems.append(f"{where}: eval_id must be lowercase letters, digits, '-' or '_'")
        if len(eval_id) > 100:
            problems.append(f"{where}: eval_id is longer than 100 characters")
        if isinstance(item.get("title"), str) and len(item["title"].strip()) > 300:
            problems.append(f"{where}: title is longer than 300 characters")
        scoring = item.get("scoring_method")
        if "scoring_method" in item and scoring not in SCORING_METHODS:
            problems.append(f"{where}: scoring_method {scoring!r} is not one of {', '.join(SCORING_METHODS)}")
        trace_id = _text(item, "source_trace_id", where, problems) if "source_trace_id" in item else ""
        if trace_id and trace_id not in trace_ids:
            problems.append(f"{where}: source_trace_id '{trace_id}' is not the trace_id of {scope}")
        values = {
            key: _text(item, key, where, problems, required=key in ("title", "expected_behavior"))
            for key in ("title", "expected_behavior", "rubric", "suggested_pass_example", "suggested_fail_example")
            if key in item
        }
        assertions, assertion_problems = (
            validate_assertions(item["deterministic_assertions"], f"{where}: deterministic_assertions")
            if "deterministic_assertions" in item else ([], [])
        )
        problems += assertion_problems
        if scoring in ("llm_judge", "hybrid") and "rubric" in item and not values.get("rubric"):
            problems.append(f"{where}: a {scoring} eval needs a rubric")
        if scoring == "deterministic" and "deterministic_assertions" in item and not assertions and not assertion_problems:
            problems.append(f"{where}: a deterministic eval needs at least one assertion")
        cleaned.append({
            "eval_id": eval_id.lower(), "scoring_method": scoring, "source_trace_id": trace_id,
            "deterministic_assertions": assertions, **values,
        })
    _raise(problems)
    return cleaned
