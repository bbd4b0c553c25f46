"""Fault modes, so tests can prove the app's repair-then-fail paths.

    python -m loopsite.standin --fault broken-json

Only roles with `PRODUCES_JSON = True` are affected; the analyst and the generic role
answer as usual.

- `broken-json`: every JSON answer is cut in half (invalid JSON), repair requests too;
- `broken-json-once`: the first answer is broken, the answer to a repair request is valid;
- `unknown-trace`: every `trace_id` / `source_trace_id` in the JSON points at a run that
  does not exist (valid JSON, wrong reference), repair requests too;
- `rate-limited` (every role): every other model call is answered 429 with `Retry-After:
  RATE_LIMIT_RETRY_AFTER` seconds, as a provider's rate limit answers. The server counts the
  calls per request body: the first time a body arrives it is refused, the retry is served
  (a third arrival is refused again, and so on), so a client that waits and retries always
  gets through, and one that does not, fails.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading

from .conversation import Conversation, Reply

FAULTS = ("broken-json", "broken-json-once", "unknown-trace", "rate-limited")
RATE_LIMITED = "rate-limited"
RATE_LIMIT_RETRY_AFTER = 1
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


class RateLimiter:
    """`rate-limited`: whether this arrival of `body` is refused (odd arrivals of each body are)."""

    MAX_BODIES = 100_000

    def __init__(self) -> None:
        self.seen: dict[str, int] = {}
        self.lock = threading.Lock()
        self.refused = 0
        self.served = 0

    def refuse(self, body: bytes) -> bool:
        key = hashlib.sha256(body).hexdigest()
        with self.lock:
            if len(self.seen) > self.MAX_BODIES:
                self.seen.clear()
            count = self.seen.get(key, 0) + 1
            self.seen[key] = count
            refused = count % 2 == 1
            if refused:
                self.refused += 1
            else:
                self.served += 1
            return refused
