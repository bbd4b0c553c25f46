"""Small, readable text rules shared by the insight writer, the eval generator and the judge.

- `json_after(text, header)`: the JSON value that follows a line such as "Traces:";
- `quoted(text)`: phrases in "double", 'single', `back` or “curly” quotes;
- `positive_literal(observation)`: the literal a passing answer should contain, if one is clear;
- `negative_literal(claim)`: the literal a passing answer must not contain, if one is clear;
- `content_words(text)`: the words that carry meaning (for overlap checks).
"""

from __future__ import annotations

import json
import re
from typing import Any

_QUOTED = re.compile(r'"([^"\n]{2,120})"|“([^”\n]{2,120})”|`([^`\n]{2,120})`|(?<![A-Za-z])\'([^\'\n]{2,120})\'(?![A-Za-z])')
_NUMBER = re.compile(r"\$?\d[\d,]*(?:\.\d+)?(?:%|[MBK]\b)?")
_FILE = re.compile(r"\b[\w./-]+\.(?:csv|json|md|txt|xlsx|pdf|yaml|yml)\b")
_PROPER = re.compile(r"\b([A-Z][A-Za-z0-9]+(?:[ -](?:[A-Z][A-Za-z0-9]*|I{1,3}|\d+))+)\b")
_NEGATION = re.compile(
    r"^\s*(?:do not|don't|does not|must not|should not|never|avoid|no)\b\s*", re.IGNORECASE
)
_SAYING = re.compile(
    r"^(?:say|says|claim|claims|state|states|write|imply|implies|call it|describe it as|present it as|report)"
    r"\s+(?:that\s+)?",
    re.IGNORECASE,
)

STOPWORDS = frozenset("""
a about above after again against all also an and any are as at be because been before being below between both
but by can could did do does doing down during each either every few for from further had has have having he her
here hers him his how i if in into is it its itself just more most must no nor not now of off on once only or other
our out over own same she should so some such than that the their them then there these they this those through to
too under until up very was we were what when where which while who whom why will with would you your
answer answers output response passes pass passing fail fails failing requirement requirements prohibited claim claims
makes make meets meet mentions mention states state says say explicitly clearly below every none only rather
""".split())


def json_after(text: str, header: str) -> Any:
    """The JSON value that starts right after the line `header` (e.g. "Traces:"); None if absent or invalid."""
    match = re.search(rf"(?m)^{re.escape(header)}\s*$", text)
    if match is None:
        return None
    rest = text[match.end():].lstrip()
    try:
        value, _ = json.JSONDecoder().raw_decode(rest)
    except json.JSONDecodeError:
        return None
    return value


def quoted(text: str) -> list[str]:
    return [next(group for group in match.groups() if group) for match in _QUOTED.finditer(text or "")]


def positive_literal(observation: str) -> str:
    """A literal that shows the observation in an answer: a quoted phrase, a file name, a figure or a proper name."""
    phrases = quoted(observation)
    if phrases:
        return phrases[0]
    file_name = _FILE.search(observation)
    if file_name:
        return file_name.group(0)
    for number in _NUMBER.findall(observation):
        if len(number.strip("$%")) >= 2 or any(mark in number for mark in "$%."):
            return number
    # A run of capitalised words that is not just the sentence's first word ("Northstar Holdings", "Type II").
    for proper in _PROPER.findall(observation[1:] if observation[:1].isupper() else observation):
        return proper
    return ""


def negative_literal(claim: str) -> str:
    """A literal whose presence shows the prohibited claim, or "" when the claim describes behaviour.

    "SOC 2 is complete" (typed as the claim itself) -> "SOC 2 is complete";
    'Do not say "SOC 2 complete"' -> "SOC 2 complete"; "Do not claim NRR is official" -> "NRR is official";
    "Do not stop at legal-entity concentration" -> "" (behaviour, not wording).
    """
    text = " ".join((claim or "").split()).rstrip(".")
    phrases = quoted(text)
    if phrases:
        return phrases[0]
    negation = _NEGATION.match(text)
    if negation is None:
        return text if 0 < len(text.split()) <= 12 else ""
    rest = text[negation.end():]
    saying = _SAYING.match(rest)
    if saying is None:
        return ""
    said = rest[saying.end():].strip()
    return said if 0 < len(said.split()) <= 8 else ""


def content_words(text: str) -> list[str]:
    words = re.findall(r"[A-Za-z0-9$%][A-Za-z0-9$%.\-']*[A-Za-z0-9%]|[A-Za-z0-9]", (text or "").lower())
    seen: list[str] = []
    for word in words:
        if word not in STOPWORDS and len(word) >= 3 and word not in seen:
            seen.append(word)
    return seen


def slug(text: str, *, limit: int = 60) -> str:
    value = re.sub(r"[^a-z0-9]+", "-", (text or "").lower()).strip("-")
    return value[:limit].strip("-")


def first_sentence(text: str, *, limit: int = 140) -> str:
    text = " ".join((text or "").split())
    match = re.match(r"(.+?[.!?])(?:\s|$)", text)
    sentence = match.group(1) if match else text
    return sentence if len(sentence) <= limit else sentence[: limit - 1].rstrip() + "…"
