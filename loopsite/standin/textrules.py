"""Small, readable text rules shared by the insight writer, the eval generator and the judge.

- `json_after(text, header)`: the JSON value that follows a line such as "Traces:";
- `quoted(text)`: phrases in "double", 'single', `back` or “curly” quotes;
- `positive_literal(observation)`: the literal a passing answer should contain, if one is clear;
- `negative_literal(claim)`: the literal a passing answer must not contain, if one is clear;
- `content_words(text)`: the words that carry meaning (for overlap checks);
- `key_terms(text)`: figures with units, names, acronyms, file names and quoted phrases a criterion names;
- `key_words(text)`, `mentions_word(text, word)`: a criterion's words without instruction verbs, and whether
  a text uses one (plural and verb endings and a few synonym groups count);
- `find_wording(answer, phrase)`: the answer's own text for a phrase, fillers such as "simply" aside;
- `sentences(text)`, `figures_in(text)`, `title_case(text)`.
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


# --- key terms, word matching and proper case (the eval generator and the judge share these) -----------------

# A figure with its unit: "$43.0M", "122%", "11-month", "12 months", "3.5x".
_FIGURE_TERM = re.compile(
    r"(?<![\w$€£])(?:[$€£]\s?\d[\d,]*(?:\.\d+)?\s?(?:[MBK]\b|bn\b|million\b|billion\b)?"
    r"|\d[\d,]*(?:\.\d+)?(?:%|x\b|[MBK]\b|-(?:month|year|day|week|quarter)s?\b"
    r"|\s(?:months?|years?|days?|weeks?|quarters?)\b))"
)
_ANY_FIGURE = re.compile(r"(?<![\w.])[$€£]?\d[\d,]*(?:\.\d+)?(?:%|[MBK]\b|x\b)?")
# Capitalised names of two or more words, or a name with a Roman numeral or number ("Type II", "SOC 2").
_NAME = re.compile(r"\b[A-Z][A-Za-z0-9&]+(?:[ ](?:[A-Z][A-Za-z0-9&]*|I{1,3}V?|IV|\d+)\b)+")
_ACRONYM = re.compile(r"\b[A-Z]{2,}[0-9]*\b")

# Imperative verbs reviewers start observations with; they name what to do, not what the answer says.
INSTRUCTION_VERBS = frozenset("""
name names tie ties prefer prefers preserve preserves mark marks use uses distinguish distinguishes treat treats
mention mentions report reports flag flags keep keeps include includes show shows cite cites give gives explain
explains identify identifies note notes refuse refuses roll rolls lead leads call calls quote quotes describe
describes be being been separate separates point points tell tells list lists highlight highlights surface
surfaces ensure ensures make makes put puts consider considers address addresses reflect reflects recognise
recognize recognises recognizes discuss discusses compare compares
""".split())

# Words a reviewer and an answer use for the same thing; matching a word matches any of its group.
SYNONYMS: tuple[frozenset[str], ...] = (
    frozenset({"contradiction", "contradict", "conflict", "discrepancy", "mismatch", "inconsistent",
               "inconsistency", "disagree", "differ", "gap"}),
    frozenset({"pressure", "risk", "strain"}),
    frozenset({"concentration", "exposure", "dependency", "dependence"}),
    frozenset({"unsupported", "unknown", "unvalidated", "unverified", "unconfirmed"}),
    frozenset({"weaker", "weak", "less reliable"}),
    frozenset({"rollup", "roll-up", "roll up", "rolled up", "rolling"}),
)
_SUFFIXES = ("ations", "ation", "ions", "ion", "ings", "ing", "ies", "ed", "es", "s", "ly")
_SMALL_WORDS = frozenset("a an and as at but by for from in into nor of on or over per the to vs via with".split())
_GENERIC_NOUNS = frozenset("figure figures number numbers value values thing things point points".split())
_FILLERS = frozenset("simply just fully really actually already entirely completely officially".split())


def stem(word: str) -> str:
    word = word.lower()
    for suffix in _SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 4:
            return word[: -len(suffix)]
    return word


def tokens(text: str) -> list[str]:
    """Lowercase word tokens; hyphens, underscores, slashes and dots split words."""
    return re.findall(r"[a-z0-9$%]+", (text or "").lower())


def mentions_word(text: str, word: str) -> bool:
    """Does `text` use `word` (or a word of its synonym group), allowing plural and verb endings?"""
    stems = {stem(token) for token in tokens(text)}
    flat = " ".join(tokens(text))
    for variant in synonyms_of(word):
        parts = tokens(variant)
        if len(parts) > 1:
            if " ".join(parts) in flat:
                return True
        elif parts and stem(parts[0]) in stems:
            return True
    return False


def synonyms_of(word: str) -> set[str]:
    word = word.lower()
    found = {word}
    for group in SYNONYMS:
        if word in group or stem(word) in {stem(item) for item in group}:
            found |= group
    return found


def key_words(text: str) -> list[str]:
    """Meaningful words of a criterion: content words without instruction verbs; hyphenated words split."""
    words: list[str] = []
    for word in content_words(text):
        for part in word.split("-") if "-" in word and not re.search(r"\d", word) else [word]:
            part = part.strip(".'")
            if len(part) >= 3 and part not in STOPWORDS and part not in INSTRUCTION_VERBS and part not in words \
                    and part not in _GENERIC_NOUNS:
                words.append(part)
    return words


def key_terms(text: str) -> list[str]:
    """Literal terms an answer that does what `text` asks must contain: figures with units, names, acronyms,
    file names and quoted phrases ("11-month", "$43.0M", "Type II", "Northstar Holdings", "NRR")."""
    found: list[str] = []

    def add(term: str) -> None:
        term = term.strip().rstrip(".,;:")
        if term and not any(term.lower() == seen.lower() for seen in found):
            found.append(term)

    for phrase in quoted(text):
        add(phrase)
    for match in _FILE.finditer(text or ""):
        add(match.group(0))
    for match in _FIGURE_TERM.finditer(text or ""):
        add(match.group(0))
    body = text or ""
    for match in _NAME.finditer(body):
        name = match.group(0)
        start = match.start()
        if start == 0 or re.search(r"[.!?:;]\s*$", body[:start]):  # a sentence's first word is not a name
            first, _, rest = name.partition(" ")
            if first.lower() in INSTRUCTION_VERBS or first.lower() in STOPWORDS or not rest:
                name = rest if rest and (_NAME.fullmatch(rest) or _ACRONYM.fullmatch(rest)) else ""
        if name and not name.isupper() or (name and " " in name):
            add(name)
    for match in _ACRONYM.finditer(body):
        if not any(match.group(0) in term for term in found):
            add(match.group(0))
    return [term for term in found if not any(
        term != other and re.search(rf"(?<!\w){re.escape(term)}(?!\w)", other) for other in found)]


# "11-month", "11 months" and "11 month" are one figure: a check written with one form must accept the others.
_FIGURE_UNIT = re.compile(r"(\d[\d,]*(?:\.\d+)?)\s*-?\s*(month|year|week|day|quarter)s?\b", re.IGNORECASE)


def is_figure_with_unit(term: str) -> bool:
    return bool(_FIGURE_UNIT.fullmatch(term.strip()))


def normalised(text: str) -> str:
    """Lower case, single spaces, and figures with a time unit in one form ("11 month")."""
    text = " ".join((text or "").lower().split())
    return _FIGURE_UNIT.sub(lambda match: f"{match.group(1)} {match.group(2).lower()}", text)


def has_phrase(text: str, phrase: str) -> bool:
    """Whether `text` says `phrase`, case-insensitively and whatever form its figures with units take."""
    return normalised(phrase) in normalised(text)


def figures_in(text: str) -> list[str]:
    return [match.group(0) for match in _ANY_FIGURE.finditer(text or "") if re.search(r"\d", match.group(0))]


def sentences(text: str) -> list[str]:
    """Sentences and list items of a Markdown answer, without bold labels."""
    found: list[str] = []
    for line in (text or "").splitlines():
        line = re.sub(r"^\s*(?:[-*•]|\d+[.)])\s+", "", line).replace("**", "").strip()
        if not line:
            continue
        for part in re.split(r"(?<=[.!?])\s+(?=[A-Z`\"“(])", line):
            if part.strip():
                found.append(part.strip())
    return found


def find_wording(answer: str, phrase: str, *, before: int = 2) -> str:
    """The answer's own text for `phrase` (matched word by word, ignoring quotes and fillers such as "simply",
    then also "is"/"are"), with up to `before` preceding words; "" when the answer does not say it."""
    words = [w for w in re.findall(r"[A-Za-z0-9$%.,']+", phrase) if w.strip(".,")]
    variants = [words, [w for w in words if w.lower() not in _FILLERS],
                [w for w in words if w.lower() not in _FILLERS | {"is", "are", "was", "were"}]]
    spans = [(m.start(), m.end(), m.group(0).strip(".,").lower())
             for m in re.finditer(r"[A-Za-z0-9$%][A-Za-z0-9$%.,']*", answer or "")]
    for variant in variants:
        want = [w.strip(".,").lower() for w in variant]
        if not want:
            continue
        for index in range(len(spans) - len(want) + 1):
            if [span[2] for span in spans[index:index + len(want)]] == want:
                start = spans[max(0, index - before)][0]
                end = spans[index + len(want) - 1][1]
                while end > start and answer[end - 1] in ".,":
                    end -= 1
                text = answer[start:end]
                if text.count('"') % 2 and answer[end:end + 1] == '"':
                    text += '"'
                if text.count("`") % 2 and answer[end:end + 1] == "`":
                    text += "`"
                return " ".join(text.split())
    return ""


def title_case(text: str) -> str:
    """Proper title case: small words lower-case (except first), acronyms and figures kept, hyphen parts capitalised."""
    words = text.split()
    out = []
    for index, word in enumerate(words):
        parts = word.split("-")
        fixed = []
        for part_index, part in enumerate(parts):
            core = part.strip("\"'“”(),:;")
            if not core or any(ch.isupper() for ch in core[1:]) or any(ch.isdigit() for ch in core[:1]) and \
                    part_index == 0 and len(parts) == 1:
                fixed.append(part)
            elif core.lower() in _SMALL_WORDS and index not in (0,) and part_index == 0 and not \
                    (index > 0 and words[index - 1].endswith(":")):
                fixed.append(part.lower())
            else:
                lead = part[: len(part) - len(part.lstrip("\"'“(”"))]
                body = part[len(lead):]
                fixed.append(lead + body[:1].upper() + body[1:])
        out.append("-".join(fixed))
    return " ".join(out)
