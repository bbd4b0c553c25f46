"""The rubric judge: what promptfoo's `llm-rubric` (and the app's "Try it") asks a grader model.

Claims a request whose system message is promptfoo's grading prompt ("You are grading output
according to a user-specified rubric") or whose last user message holds `<Output>` and
`<Rubric>` blocks. It ALWAYS answers a JSON object `{"reason", "pass", "score"}`.

How it decides, line by line through the rubric:
- a line ending in ":" is a heading; a heading with a negative word ("must not", "do not",
  "never", "fail if", ...) makes the bullets under it prohibitions, any other heading
  makes them requirements; other lines are split into sentences, each a requirement
  unless it carries a negative word itself;
- a requirement is met when the output contains every quoted phrase (case-insensitive) and
  uses the clause's key words outside the quotes (words, not instruction verbs such as "name"
  or "mark"; plural and verb endings and a few synonyms such as conflict/contradiction count):
  all of them when there are up to four, three in four otherwise; a clause with neither quotes
  nor key words is not a check;
- a prohibition with quoted phrases is broken when the output contains any of them; without
  quotes it is broken when the output says the claim's wording (fillers such as "simply" aside),
  or has a sentence that does not negate it and uses all its key words and figures; a
  prohibition with fewer than two key words is not a check;
- score = checks met / checks made (1.0 with no checks); pass = every check met.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from .conversation import Conversation, Reply
from .textrules import figures_in, find_wording, has_phrase, key_terms, key_words, mentions_word, negative_literal, quoted, sentences

NAME = "rubric_judge"
PRODUCES_JSON = True
PROMPTFOO_SYSTEM = "You are grading output according to a user-specified rubric"

_NEGATIVE = re.compile(
    r"\b(?:must not|should not|do not|does not|don't|doesn't|never|fail(?:s)? if|avoid|not (?:claim|say|state|imply))\b",
    re.IGNORECASE,
)
_BULLET = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+")
_PROHIBITION_LEAD = re.compile(r"^(?:do not|don't|must not|should not|never|avoid|not)\s+", re.IGNORECASE)
_BEHAVIOUR_WORDS = frozenset("stop stops imply implies say says claim claims promote promotes present presents "
                             "state states call calls treat treats silently make makes".split())
_NEGATED = re.compile(r"\b(?:not|no|never|instead of|rather than|understates?|unsupported|unknown)\b", re.IGNORECASE)
_SETTLING_WORDS = frozenset({"estimate", "official", "reconcile", "reconciled", "unsupported", "unvalidated",
                             "promote", "inflated", "unverified", "unaudited"})
_CAVEAT = re.compile(r"\b(?:unsupported|unknown|unvalidated|unverified|estimate[sd]?|flagged|partial|directional|not|"
                     r"preliminary|unaudited|cannot|conflicts?|contradict\w*|differs?|disagree\w*)\b", re.IGNORECASE)
_QUOTES = re.compile(r'"[^"\n]{2,120}"|“[^”\n]{2,120}”|`[^`\n]{2,120}`')
# Words a generated rubric uses to point at its quotes, not things the answer must say.
_REFERENCE_WORDS = frozenset({"names", "judged", "said", "wording", "phrase"})


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
    return has_phrase(output, phrase)


def check(output: str, clause: str, negative: bool) -> Check | None:
    phrases = quoted(clause)
    if negative:
        if not phrases:
            return _unquoted_prohibition(output, clause)
        said = [phrase for phrase in phrases if _contains(output, phrase)]
        detail = f"says “{said[0]}”" if said else "avoids " + ", ".join(f"“{p}”" for p in phrases)
        return Check(clause, True, not said, detail)
    missing = [phrase for phrase in phrases if not _contains(output, phrase)]
    words = [word for word in key_words(_QUOTES.sub(" ", clause)) if word not in _REFERENCE_WORDS]
    if not phrases and not words:
        return None
    absent = [word for word in words if not mentions_word(output, word)]
    needed = len(words) if len(words) <= 4 else -(-3 * len(words) // 4)
    met = not missing and len(words) - len(absent) >= needed
    if met:
        detail = "has " + ", ".join([f"“{p}”" for p in phrases] + words[:6])
    else:
        detail = "lacks " + ", ".join([f"“{p}”" for p in missing] + absent[:6])
    return Check(clause, False, met, detail)


def _unquoted_prohibition(output: str, clause: str) -> Check | None:
    """A prohibition without quotes: broken when a sentence of the output that does not negate it says the
    claim's wording ("SOC 2 is simply complete" -> "SOC 2 complete") or uses all the claim's key words and
    figures; not a check when the claim has fewer than two key words."""
    text = _PROHIBITION_LEAD.sub("", clause.strip())
    literal = negative_literal(clause)
    if literal and len(literal.split()) >= 2:
        for sentence in sentences(output):
            wording = find_wording(sentence, literal, before=0)
            if wording and not _NEGATED.search(sentence):
                return Check(clause, True, False, f"says “{wording}”")
    words = [word for word in key_words(text) if word not in _BEHAVIOUR_WORDS and not re.search(r"\d", word)]
    figures = figures_in(text)
    if len(words) < 2:
        return None
    for sentence in sentences(output):
        if _NEGATED.search(sentence):
            continue
        if all(mentions_word(sentence, word) for word in words) and all(figure in sentence for figure in figures):
            return Check(clause, True, False, f"says it: “{_short(sentence, 120)}”")
    # A claim that forbids settling a figure ("promote the NRR estimate into an official metric", "silently
    # reconcile the ARR gap"): broken by a line (not a question) that states a figure for its subject with no caveat.
    if set(words) & _SETTLING_WORDS:
        for subject in [term for term in key_terms(text) if not figures_in(term)]:
            pattern = re.compile(rf"(?<!\w){re.escape(subject)}(?!\w)", re.IGNORECASE)
            for paragraph in output.splitlines():  # a line: an answer paragraph or a list item
                at = pattern.search(paragraph)
                if at and "?" not in paragraph and figures_in(paragraph[at.end():]) and not _CAVEAT.search(paragraph):
                    return Check(clause, True, False, f"states {subject} as settled: “{_short(paragraph.strip(), 120)}”")
    return Check(clause, True, True, "no sentence makes it (" + ", ".join(words[:6]) + ")")


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
