"""The rubric judge: what promptfoo's `llm-rubric` (and the app's "Try it") asks a grader model.

Claims a request whose system message is promptfoo's grading prompt ("You are grading output
according to a user-specified rubric") or whose last user message holds `<Output>` and
`<Rubric>` blocks. It ALWAYS answers a JSON object `{"reason", "pass", "score"}`.

How it decides, line by line through the rubric:
- a line ending in ":" is a heading; a heading with a negative word ("must not", "do not",
  "never", "fail if", ...) makes the bullets under it prohibitions, any other heading
  makes them requirements; other lines are split into sentences, each a requirement
  unless it carries a negative word itself;
- a requirement with quoted phrases is met when the output contains every one of them
  (case-insensitive); without quotes it is met when the output contains at least half of
  its meaningful words; a sentence with no meaningful word is not a check;
- a prohibition with quoted phrases is broken when the output contains any of them; a
  prohibition without quotes cannot be checked literally and is only mentioned;
- score = checks met / checks made (1.0 with no checks); pass = every check met.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from .conversation import Conversation, Reply
from .textrules import content_words, quoted

NAME = "rubric_judge"
PRODUCES_JSON = True
PROMPTFOO_SYSTEM = "You are grading output according to a user-specified rubric"

_NEGATIVE = re.compile(
    r"\b(?:must not|should not|do not|does not|don't|doesn't|never|fail(?:s)? if|avoid|not (?:claim|say|state|imply))\b",
    re.IGNORECASE,
)
_BULLET = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+")


def matches(conv: Conversation) -> bool:
    text = conv.last_user_text
    return PROMPTFOO_SYSTEM in conv.instructions or ("<Output>" in text and "<Rubric>" in text)


def reply(conv: Conversation) -> Reply:
    output, rubric = split_request(conv.last_user_text)
    return Reply(text=json.dumps(grade(output=output, rubric=rubric), ensure_ascii=False))


def split_request(text: str) -> tuple[str, str]:
    """The output and rubric blocks of promptfoo's grading message."""
    rubric_at = text.rfind("<Rubric>")
    rubric = text[rubric_at + len("<Rubric>"):] if rubric_at >= 0 else ""
    rubric = rubric.rsplit("</Rubric>", 1)[0]
    head = text[:rubric_at] if rubric_at >= 0 else text
    output_at = head.find("<Output>")
    output = head[output_at + len("<Output>"):] if output_at >= 0 else head
    output = output.rsplit("</Output>", 1)[0]
    return output.strip(), rubric.strip()


@dataclass
class Check:
    clause: str
    negative: bool
    met: bool
    detail: str


def clauses(rubric: str) -> list[tuple[str, bool]]:
    """(clause, is_prohibition) for each requirement or prohibition in the rubric."""
    found: list[tuple[str, bool]] = []
    section_negative = False
    for raw in rubric.splitlines():
        line = raw.strip()
        if not line:
            continue
        bullet = _BULLET.match(line)
        if not bullet and line.endswith(":"):
            section_negative = bool(_NEGATIVE.search(line))
            continue
        if bullet:
            found.append((line[bullet.end():], section_negative))
            continue
        for sentence in re.split(r"(?<=[.!?])\s+", line):
            if sentence.strip():
                found.append((sentence.strip(), bool(_NEGATIVE.search(sentence))))
    return found


def _contains(output: str, phrase: str) -> bool:
    return " ".join(phrase.lower().split()) in " ".join(output.lower().split())


def check(output: str, clause: str, negative: bool) -> Check | None:
    phrases = quoted(clause)
    if negative:
        if not phrases:
            return None
        said = [phrase for phrase in phrases if _contains(output, phrase)]
        detail = f"says “{said[0]}”" if said else "avoids " + ", ".join(f"“{p}”" for p in phrases)
        return Check(clause, True, not said, detail)
    if phrases:
        missing = [phrase for phrase in phrases if not _contains(output, phrase)]
        detail = ("lacks " + ", ".join(f"“{p}”" for p in missing)) if missing else (
            "has " + ", ".join(f"“{p}”" for p in phrases))
        return Check(clause, False, not missing, detail)
    words = content_words(clause)
    if not words:
        return None
    present = [word for word in words if _contains(output, word)]
    met = len(present) * 2 >= len(words)
    return Check(clause, False, met, f"{len(present)} of {len(words)} key words ({', '.join(words[:6])})")


def grade(*, output: str, rubric: str) -> dict:
    checks = [result for clause, negative in clauses(rubric) if (result := check(output, clause, negative))]
    if not output.strip():
        return {"reason": "The output is empty.", "pass": False, "score": 0.0}
    if not checks:
        return {"reason": "Nothing in the rubric can be checked against the output by the stand-in's rules; passed.",
                "pass": True, "score": 1.0}
    failed = [item for item in checks if not item.met]
    score = round((len(checks) - len(failed)) / len(checks), 3)
    if failed:
        reason = "Fails: " + "; ".join(
            f"{'prohibited' if item.negative else 'required'} “{_short(item.clause)}” — {item.detail}" for item in failed
        )
    else:
        reason = f"All {len(checks)} rubric checks met: " + "; ".join(item.detail for item in checks)
    return {"reason": reason[:900], "pass": not failed, "score": score}


def _short(text: str, limit: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
