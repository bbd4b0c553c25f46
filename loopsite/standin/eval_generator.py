"""The eval generator: the seed's `generate_feedback_derived_evals` step (Step 5), by readable rules.

Claims a request whose first user message carries `MARKER` (the app's eval prompt,
reviews/generation.py). It reads `Traces:`, `Human feedback:` and `LLM insights:` JSON
lists from the prompt and writes one eval per human feedback item whose trace is listed.
Every check comes from the feedback's own words and figures, tested against the trace's
answer (the answer the reviewer judged):

- each required observation is a rubric requirement; its key terms (figures with units such
  as "11-month", names such as "Type II" or "Northstar Holdings", acronyms, file names, quoted
  phrases; names and figures the summary gives for the same subject) are quoted in it, and
  become `icontains` assertions;
- each prohibited claim is a rubric prohibition. When the answer says it, the answer's own
  wording is quoted and becomes a `not-contains` assertion: a claim typed as wording ("Do not
  say SOC 2 is simply complete") is looked up word by word (fillers such as "simply" dropped);
  a claim about behaviour ("Do not stop at legal-entity concentration") matches the answer's
  sentence that uses all its key words and figures, and its lead clause is quoted;
- an observation that marks a figure as wrong ("Mark official NRR unsupported", "Prefer finance
  ARR over board ARR") finds the answer's sentence that states such a figure as fact (about the
  term, or from the disfavoured source) and prohibits that wording;
- when the verdict is fail or mixed (or not given), an assertion the judged answer already
  satisfies cannot catch it and is dropped; the rubric keeps every requirement;
- the pass example is a corrected statement meeting every check, the fail example the
  answer's offending text; both are verified with the judge's own rules before they are kept;
- `scoring_method` is `hybrid` with literal assertions, `llm_judge` without.

The rubric is written so that the stand-in's judge (judge.py) applies it faithfully: one line
per requirement or prohibition, literals in quotes.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from . import judge
from .conversation import Conversation, Reply
from .textrules import (
    INSTRUCTION_VERBS, STOPWORDS, figures_in, find_wording, first_sentence, has_phrase, is_figure_with_unit, json_after,
    key_terms, key_words,
    mentions_word, negative_literal, sentences, slug, title_case,
)

NAME = "eval_generator"
PRODUCES_JSON = True
MARKER = "Loopsite task: eval-generation"  # as in reviews/generation.py

_NEGATION = re.compile(r"^\s*(?:do not|don't|does not|must not|should not|never|avoid|no longer)\s+", re.IGNORECASE)
_PREFER = re.compile(r"^(?:prefer|use|rely on|lead with|favou?r|trust)\s+(.+?)\s+(?:over|rather than|instead of)\s+(.+)$",
                     re.IGNORECASE)
_MARKED = frozenset({"unsupported", "unvalidated", "unverified", "unofficial", "wrong", "incorrect", "inflated",
                     "overstated", "misleading", "stale", "outdated", "unaudited"})
_HEDGES = re.compile(r"\b(?:unsupported|unknown|unvalidated|unverified|estimate[sd]?|flagged|partial|directional|not|"
                     r"no|preliminary|unaudited|cannot|conflict|contradict\w*|instead)\b", re.IGNORECASE)
_BEHAVIOUR_VERBS = frozenset("stop stops imply implies say says claim claims promote promotes present presents "
                             "state states call calls treat treats silently".split())
_DETERMINERS = frozenset("the a an it its this that these those their there".split())


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


# ------------------------------------------------------------------ what the feedback asks for


@dataclass
class Requirement:
    text: str
    terms: list[str]


@dataclass
class Prohibition:
    text: str  # the behaviour or claim, without its negation ("stop at legal-entity concentration")
    literal: str = ""  # the wording the claim names, if it is typed as wording
    wordings: list[str] = field(default_factory=list)  # the judged answer's own text for it


def _strip(text: str) -> str:
    return " ".join(str(text or "").split()).strip().rstrip(".")


def _lower_first(text: str) -> str:
    first = text.split(" ", 1)[0]
    if first.isupper() and len(first) > 1 or any(ch.isupper() for ch in first[1:]):
        return text
    return text[:1].lower() + text[1:]


def _upper_first(text: str) -> str:
    return text[:1].upper() + text[1:]


def _summary_sentences(summary: str) -> list[str]:
    return [part for part in re.split(r"(?<=[.!?])\s+", summary) if part.strip()]


def requirements_of(required: list[str], summary: str) -> list[Requirement]:
    """Each observation with its key terms, plus names and figures the summary gives for the same subject."""
    found = [Requirement(text, key_terms(text)) for text in required]
    taken = {term.lower() for item in found for term in item.terms}
    for sentence in _summary_sentences(summary):
        extra = [term for term in key_terms(sentence) if term.lower() not in taken and not term.isupper()]
        if not extra:
            continue
        words = set(key_words(sentence))
        best = max(found, key=lambda item: len(words & set(key_words(item.text))), default=None)
        if best is not None and words & set(key_words(best.text)):
            best.terms.extend(extra)
            taken |= {term.lower() for term in extra}
    return found


def _behaviour_wording(answer: str, claim: str) -> str:
    """The lead clause of the answer's sentence that does what a behaviour claim describes."""
    words = [word for word in key_words(claim) if word not in _BEHAVIOUR_VERBS and not re.search(r"\d", word)]
    figures = figures_in(claim)
    if len(words) < 2:
        return ""
    for sentence in sentences(answer):
        if all(mentions_word(sentence, word) for word in words) and all(figure in sentence for figure in figures):
            return _lead_clause(sentence)
    return ""


def _lead_clause(sentence: str, *, through: str | None = None) -> str:
    """The start of a sentence: up to its first colon, or (with `through`) through the first figure after it."""
    head, colon, _ = sentence.partition(":")
    if through is None and colon and len(head.split()) >= 3 and not figures_in(head):
        return head.strip()
    through = through or ""
    start = sentence.lower().find(through.lower()) if through else 0
    for match in re.finditer(r"[$€£]?\d[\d,]*(?:\.\d+)?(?:%|[MBK]\b|x\b)?", sentence):
        if match.start() >= max(start, 0):
            words = sentence[: match.end()].split()
            return " ".join(words[-10:])
    return " ".join(sentence.split()[:10]).rstrip(".,;:")


def marked_wordings(required: list[str], answer: str) -> list[tuple[str, str, str]]:
    """(subject, description, wording): the answer stating as fact a figure an observation marks as wrong."""
    found: list[tuple[str, str, str]] = []
    for text in required:
        text = _strip(text)
        prefer = _PREFER.match(text)
        if prefer:
            favoured, disfavoured = prefer.group(1), prefer.group(2)
            own = [w for w in key_words(disfavoured) if w not in key_words(favoured)]
            plus = [w for w in key_words(favoured) if w not in key_words(disfavoured)]
            for sentence in sentences(answer):
                if own and all(mentions_word(sentence, w) for w in own) and figures_in(sentence) and not any(
                        mentions_word(sentence, w) for w in plus) and not _HEDGES.search(sentence):
                    found.append((disfavoured, f"rely on the {disfavoured} figure instead of the {favoured} figure",
                                  _lead_clause(sentence, through="")))
                    break
            continue
        if not set(key_words(text)) & _MARKED:
            continue
        for term in [t for t in key_terms(text) if not figures_in(t)]:
            pattern = re.compile(rf"(?<!\w){re.escape(term)}(?!\w)", re.IGNORECASE)
            for sentence in sentences(answer):
                at = pattern.search(sentence)
                if at and figures_in(sentence[at.end():]) and not _HEDGES.search(sentence):
                    found.append((term, f"state {term} as a supported figure", _lead_clause(sentence, through=term)))
                    break
    return found


def prohibitions_of(prohibited: list[str], required: list[str], answer: str) -> list[Prohibition]:
    found: list[Prohibition] = []
    for claim in prohibited:
        claim = _strip(claim)
        negation = _NEGATION.match(claim)
        text = claim[negation.end():] if negation else f"claim that {_lower_first(claim)}"
        literal = negative_literal(claim)
        wording = find_wording(answer, literal) if literal else _behaviour_wording(answer, claim)
        found.append(Prohibition(text=text, literal=literal, wordings=[wording] if wording else []))
    for subject, description, wording in marked_wordings(required, answer):
        if any(wording in item.wordings for item in found):
            continue
        home = next((item for item in found if not item.wordings and re.search(
            rf"(?<!\w){re.escape(subject.split()[-1])}(?!\w)", item.text, re.IGNORECASE)), None)
        if home is not None:
            home.wordings.append(wording)
        else:
            found.append(Prohibition(text=description, wordings=[wording]))
    return found


# ------------------------------------------------------------------ the eval


def eval_for(feedback: dict[str, Any], trace: dict[str, Any], insights: list[dict[str, Any]],
             used_ids: set[str]) -> dict[str, Any]:
    label = feedback.get("trace_label") or trace.get("trace_label") or "trace"
    theme = str(feedback.get("theme") or "").strip()
    required = [_strip(text) for text in feedback.get("required_observations") or [] if _strip(text)]
    prohibited = [_strip(text) for text in feedback.get("prohibited_claims") or [] if _strip(text)]
    summary = " ".join(str(feedback.get("summary") or "").split())
    answer = str(trace.get("answer") or "")
    failing = str(feedback.get("verdict") or "fail").lower() != "pass"

    eval_id = slug(f"{theme or 'feedback'}-{label}") or "feedback-eval"
    base, number = eval_id, 2
    while eval_id in used_ids:
        eval_id, number = f"{base}-{number}", number + 1
    used_ids.add(eval_id)

    requirements = requirements_of(required, summary)
    prohibitions = prohibitions_of(prohibited, required, answer)
    assertions = _assertions(requirements, prohibitions, answer if failing else "")
    rubric = _rubric(requirements, prohibitions)
    return {
        "eval_id": eval_id,
        "title": _title(theme, summary, label)[:200],
        "scoring_method": "hybrid" if assertions else "llm_judge",
        "expected_behavior": _expected(summary, required, prohibitions, insights),
        "source_trace_id": trace.get("trace_id", ""),
        "rubric": rubric,
        "deterministic_assertions": assertions,
        "suggested_pass_example": _pass_example(summary, requirements, rubric, assertions),
        "suggested_fail_example": _fail_example(answer, prohibitions, requirements, rubric, assertions),
    }


def _assertions(requirements: list[Requirement], prohibitions: list[Prohibition], judged: str) -> list[dict[str, str]]:
    """icontains for key terms, not-contains for the answer's wording; without a check that `judged` passes."""
    found: list[dict[str, str]] = []
    for item in requirements:
        for term in item.terms:
            if judged and has_phrase(judged, term):
                continue  # the judged answer has it: this check cannot catch it
            if is_figure_with_unit(term):
                continue  # "11-month" vs "11 months": a literal check would fail a right answer; the rubric has it
            found.append({"type": "icontains", "value": term})
    for item in prohibitions:
        values = item.wordings or ([item.literal] if item.literal and not judged else [])
        for value in values:
            found.append({"type": "not-contains", "value": value})
    unique: list[dict[str, str]] = []
    for assertion in found:
        if assertion not in unique:
            unique.append(assertion)
    return unique


def _title(theme: str, summary: str, label: str) -> str:
    topic = title_case(theme.replace("_", " ").strip()) if theme else ""
    point = first_sentence(summary, limit=400).rstrip(".!?") if summary else ""
    if len(point) > 60:
        cut = re.search(r"[,;:]\s|\s[–—-]\s|\s(?:when|because|while|so that|unless)\s", point[25:])
        if cut:
            point = point[: 25 + cut.start()]
    point = title_case(point)
    if topic and point:
        return f"{topic}: {point}"
    return topic or point or f"Feedback on {label}"


def _series(parts: list[str], conjunction: str = "and") -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + f" {conjunction} " + parts[-1]


def _is_instruction(text: str) -> bool:
    """An imperative ("Name the 11-month runway"): a known instruction verb first, or a capitalised first word
    followed by an article ("Quantify the gap"); a statement ("The runway is named") is not."""
    words = text.split()
    first = words[0].lower() if words else ""
    if first in INSTRUCTION_VERBS:
        return True
    return (first not in _DETERMINERS and first not in STOPWORDS and text[:1].isupper() and len(words) > 1
            and words[1].lower() in _DETERMINERS | {"a", "an"})


def _must(text: str) -> str:
    return _lower_first(text) if _is_instruction(text) else f"show that {_lower_first(text)}"


def _third_person(text: str) -> str:
    if not _is_instruction(text):
        return f"shows that {_lower_first(text)}"
    verb, _, rest = text.partition(" ")
    verb = verb.lower()
    if verb == "be":
        verb = "is"
    elif verb.endswith(("s", "sh", "ch", "x", "z")):
        verb += "es"
    elif verb.endswith("y") and verb[-2:-1] not in "aeiou":
        verb = verb[:-1] + "ies"
    else:
        verb += "s"
    return f"{verb} {rest}".strip()


def _expected(summary: str, required: list[str], prohibitions: list[Prohibition], insights: list[dict[str, Any]]) -> str:
    parts = [summary if summary.endswith((".", "!", "?")) else f"{summary}." ] if summary else []
    if required:
        parts.append(f"A passing answer must {_series([_must(text) for text in required])}.")
    if prohibitions:
        subject = "It" if required else "A passing answer"
        parts.append(f"{subject} must not {_series([_lower_first(item.text) for item in prohibitions], 'or')}.")
    observations = [str(obs).strip() for insight in insights for obs in insight.get("observations") or [] if str(obs).strip()]
    if observations:
        note = observations[0] if observations[0].endswith((".", "!", "?")) else observations[0] + "."
        parts.append(f"An automated review of the source run noted: {note}")
    return " ".join(parts) or "A passing answer meets the approved reviewer feedback."


def _quote(text: str) -> str:
    return f"“{text}”" if '"' in text else f'"{text}"'


def _rubric(requirements: list[Requirement], prohibitions: list[Prohibition]) -> str:
    lines = ["The answer passes only if it meets every requirement below and makes none of the prohibited claims."]
    if requirements:
        lines.append("Requirements:")
        named_before: set[str] = set()
        for item in requirements:
            terms = [term for term in item.terms if term.lower() not in named_before]
            named_before |= {term.lower() for term in item.terms}
            named = f" (names {_series([_quote(term) for term in terms])})" if terms else ""
            lines.append(f"- {_upper_first(item.text)}{named}.")
    if prohibitions:
        lines.append("The answer must not:")
        for item in prohibitions:
            text = item.text
            if item.literal and item.literal.lower() in text.lower():
                at = text.lower().index(item.literal.lower())
                text = f"{text[:at]}{_quote(text[at:at + len(item.literal)])}{text[at + len(item.literal):]}"
            own = [q for q in item.wordings if q.lower() != item.literal.lower()]  # not the claim's words again
            said = f" (the judged answer said {_series([_quote(q) for q in own])})" if own else ""
            lines.append(f"- {_upper_first(text)}{said}.")
    return "\n".join(lines)


def _failures(output: str, rubric: str, assertions: list[dict[str, str]]) -> int:
    """How many checks `output` fails: the assertions as promptfoo applies them, and the rubric as the judge does."""
    failed = 0
    for assertion in assertions:
        value = assertion["value"]
        if assertion["type"] == "icontains" and value.lower() not in output.lower():
            failed += 1
        elif assertion["type"] == "contains" and value not in output:
            failed += 1
        elif assertion["type"] == "not-contains" and value in output:
            failed += 1
    if not judge.grade(output=output, rubric=rubric)["pass"]:
        failed += 1
    return failed


def _pass_example(summary: str, requirements: list[Requirement], rubric: str, assertions: list[dict[str, str]]) -> str:
    does = [_third_person(_upper_first(item.text)) for item in requirements]
    body = f"The answer {_series(does)}." if does else ""
    for candidate in ([summary, body] if summary else [body]), [body]:
        text = " ".join(part for part in candidate if part).strip()
        missing = [a["value"] for a in assertions if a["type"] in ("icontains", "contains")
                   and a["value"].lower() not in text.lower()]
        if missing:
            text += f" It names {_series([_quote(value) for value in missing])}."
        if text and not _failures(text, rubric, assertions):
            return text
    return " ".join(part for part in (summary, body) if part) or "An answer that follows the reviewer's feedback."


def _fail_example(answer: str, prohibitions: list[Prohibition], requirements: list[Requirement], rubric: str,
                  assertions: list[dict[str, str]]) -> str:
    said = [sentence for sentence in sentences(answer)
            if any(wording in sentence for item in prohibitions for wording in item.wordings)]
    lead = next((sentence for sentence in sentences(answer) if not sentence.lower().startswith(("answer.", "answer:"))), "")
    for candidate in (" ".join(dict.fromkeys(said)), " ".join(dict.fromkeys(said + [lead])), lead):
        candidate = re.sub(r"^Answer[.:]\s*", "", candidate.strip())
        if candidate and _failures(candidate, rubric, assertions):
            return candidate
    literals = [item.literal for item in prohibitions if item.literal]
    if literals:
        return f"An answer that says {_quote(literals[0])}."
    if requirements:
        return f"An answer that does not {_lower_first(requirements[0].text)}."
    return "An answer that ignores the reviewer's feedback."
