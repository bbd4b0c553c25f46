"""Fault modes, so tests can prove the app's repair-then-fail paths.

    python -m loopsite.standin --fault broken-json

Only roles with `PRODUCES_JSON = True` are affected; the analyst and the generic role
answer as usual.

- `broken-json`: every JSON answer is cut in half (invalid JSON), repair requests too;
- `broken-json-once`: the first answer is broken, the answer to a repair request is valid;
- `unknown-trace`: every `trace_id` / `source_trace_id` in the JSON points at a run that
  does not exist (valid JSON, wrong reference), repair requests too.
"""

from __future__ import annotations

import json
import re

from .conversation import Conversation, Reply

FAULTS = ("broken-json", "broken-json-once", "unknown-trace")
REPAIR_MARKER = "Loopsite task: repair-json"  # as in reviews/generation.py
UNKNOWN_TRACE_ID = "0" * 31 + "f"


def apply(fault: str | None, role, conv: Conversation, reply: Reply) -> Reply:
    if not fault or not getattr(role, "PRODUCES_JSON", False) or reply.tool_calls:
        return reply
    is_repair = REPAIR_MARKER in conv.last_user_text
    if fault == "broken-json" or (fault == "broken-json-once" and not is_repair):
        return Reply(text=broken(reply.text))
    if fault == "unknown-trace":
        return Reply(text=re.sub(r'("(?:source_)?trace_id":\s*)"[^"]*"', rf'\1"{UNKNOWN_TRACE_ID}"', reply.text))
    return reply


def broken(text: str) -> str:
    """Deterministically invalid JSON: a chatty preface and the first half of the document."""
    cut = text[: max(1, len(text) // 2)]
    broken_text = f"Here is the JSON you asked for:\n{cut}"
    try:
        json.loads(broken_text)
    except json.JSONDecodeError:
        return broken_text
    return broken_text + " {"  # pragma: no cover - a half document never parses, but be sure
