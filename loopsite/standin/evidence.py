"""Read dataroom files into facts, figures and tables, with no knowledge of any company.

- A *fact* is one sentence or bullet of a narrative file, or one row of a CSV.
- A *figure* is a number with a label: a metric row (`metric,value` tables), the
  latest row of a period table (`month,...`), or a `$43.0M` / `71%` / `11 months`
  in a sentence, labelled by the words before it.
- A *table* is a CSV file's columns and rows, for the rollup rules.

Structured files are CSV/JSON exports; everything else is narrative.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass, field
from functools import cached_property

STOPWORDS = frozenset("""
a about above after again against all also am an and any are as at be because been before being below
between both but by can could did do does doing down during each few for from further had has have having
he her here hers him his how i if in into is it its itself just me more most my no nor not now of off on
once only or other our ours out over own same she should so some such than that the their them then there
these they this those through to too under until up very was we were what when where which while who whom
why will with would you your tell us we should real first after per via vs
""".split())

STRUCTURED_SUFFIXES = (".csv", ".json", ".tsv")
METRIC_KEY_COLUMNS = ("metric", "kpi", "measure", "line_item", "item")
PERIOD_KEY_COLUMNS = ("month", "period", "date", "year", "quarter", "fiscal_year", "fy")
PERCENT_WORDS = ("pct", "percent", "share", "margin", "rate", "retention", "ratio")

ESTIMATE_FLAGS = ("estimate", "unvalidated", "not validated", "has not validated", "unaudited", "unofficial")
MISSING_FLAGS = ("not_provided", "not provided", "not available", "was requested but")
PARTIAL_FLAGS = ("partial", "preliminary", "incomplete")


def stem(word: str) -> str:
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def words(text: str) -> list[str]:
    """Lower-case words and numbers, split on punctuation and underscores ("fy2025" -> fy, 2025)."""
    return re.findall(r"[a-z]+|\d+", text.lower())


def terms(text: str) -> list[str]:
    """Content words, stemmed, in order, without stopwords or duplicates."""
    seen: dict[str, None] = {}
    for word in words(text):
        if word in STOPWORDS or (word.isalpha() and len(word) < 2):
            continue
        seen.setdefault(stem(word), None)
    return list(seen)


def is_structured(path: str) -> bool:
    return path.lower().endswith(STRUCTURED_SUFFIXES)


def cite(*sources: str) -> str:
    unique = list(dict.fromkeys(source for source in sources if source))
    return "(" + ", ".join(f"`{source}`" for source in unique) + ")"


@dataclass(frozen=True)
class Fact:
    source: str
    text: str
    kind: str  # "structured" or "narrative"
    index: int
    row: tuple[tuple[str, str], ...] | None = None  # CSV row as (column, value) pairs

    @cached_property
    def terms(self) -> frozenset[str]:
        return frozenset(terms(self.text)) | frozenset(terms(self.source))

    @property
    def lower(self) -> str:
        return self.text.lower()

    def has_flag(self, flags: tuple[str, ...]) -> bool:
        lower = self.lower.replace("-", " ")
        return any(flag.replace("_", " ") in lower.replace("_", " ") for flag in flags)


@dataclass(frozen=True)
class Figure:
    label: str
    value: float
    unit: str  # "$M", "%", "months" or ""
    display: str
    fact: Fact
    from_metric_table: bool = False

    @property
    def source(self) -> str:
        return self.fact.source

    @property
    def kind(self) -> str:
        return self.fact.kind

    @cached_property
    def tokens(self) -> frozenset[str]:
        return frozenset(stem(word) for word in words(self.label) if word not in STOPWORDS and word != "m")

    def same_value(self, other: Figure) -> bool:
        if self.unit != other.unit:
            return False
        scale = max(abs(self.value), abs(other.value), 1e-9)
        return abs(self.value - other.value) / scale < 0.005


@dataclass
class Table:
    source: str
    columns: list[str]
    rows: list[dict[str, str]]

    def column(self, *needles: str, exclude: tuple[str, ...] = ()) -> str | None:
        for column in self.columns:
            lower = column.lower()
            if any(needle in lower for needle in needles) and not any(word in lower for word in exclude):
                return column
        return None


@dataclass
class Evidence:
    """Everything the analyst read, parsed once."""

    files: dict[str, str]  # dataroom-relative path -> text, in reading order
    facts: list[Fact] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)

    @classmethod
    def read(cls, files: dict[str, str]) -> Evidence:
        evidence = cls(files=dict(files))
        for path, text in files.items():
            if path.lower().endswith((".csv", ".tsv")):
                evidence._read_table(path, text)
            elif path.lower().endswith(".json"):
                evidence._read_json(path, text)
            else:
                evidence._read_narrative(path, text)
        return evidence

    # ----------------------------------------------------------- narrative

    def _read_narrative(self, path: str, text: str) -> None:
        for index, sentence in enumerate(split_sentences(text)):
            fact = Fact(source=path, text=sentence, kind="narrative", index=index)
            self.facts.append(fact)
            self.figures.extend(figures_in_sentence(fact))

    # ----------------------------------------------------------- structured

    def _read_table(self, path: str, text: str) -> None:
        delimiter = "\t" if path.lower().endswith(".tsv") else ","
        reader = csv.DictReader(io.StringIO(text.strip()), delimiter=delimiter)
        columns = [column.strip() for column in reader.fieldnames or []]
        rows = []
        for row in reader:
            clean = {(key or "").strip(): (value or "").strip() for key, value in row.items() if key is not None}
            if any(clean.values()):
                rows.append(clean)
        if not columns:
            return
        table = Table(source=path, columns=columns, rows=rows)
        self.tables.append(table)
        key = columns[0]
        metric_key = next((c for c in columns if c.lower() in METRIC_KEY_COLUMNS), None)
        value_column = next((c for c in columns if c.lower().startswith("value") or c.lower() == "amount"), None)
        period_table = key.lower() in PERIOD_KEY_COLUMNS
        for index, row in enumerate(rows):
            fact = Fact(source=path, text=render_row(columns, row), kind="structured", index=index,
                        row=tuple((c, row.get(c, "")) for c in columns))
            self.facts.append(fact)
            if metric_key and value_column:
                figure = structured_figure(row[metric_key], value_column, row.get(value_column, ""), fact, True)
                if figure:
                    self.figures.append(figure)
            elif period_table and index == len(rows) - 1:
                for column in columns[1:]:
                    label = f"{column} {row.get(key, '')}"
                    figure = structured_figure(label, column, row.get(column, ""), fact, False)
                    if figure:
                        self.figures.append(figure)

    def _read_json(self, path: str, text: str) -> None:
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            self._read_narrative(path, text)
            return
        items = data.items() if isinstance(data, dict) else enumerate(data if isinstance(data, list) else [data])
        for index, (key, value) in enumerate(items):
            rendered = json.dumps(value, ensure_ascii=False) if isinstance(value, (dict, list)) else str(value)
            if len(rendered) > 300:
                rendered = rendered[:297] + "..."
            self.facts.append(Fact(source=path, text=f"{key}: {rendered}", kind="structured", index=index))

    # ----------------------------------------------------------- queries

    def kind_of(self, path: str) -> str:
        return "structured" if is_structured(path) else "narrative"


def split_sentences(text: str) -> list[str]:
    """Bullets and table lines are one fact each; paragraphs are split into sentences."""
    sentences: list[str] = []
    paragraph: list[str] = []

    def flush() -> None:
        if paragraph:
            joined = " ".join(paragraph)
            sentences.extend(part.strip() for part in re.split(r"(?<=[.!?])\s+(?=[A-Z\"'`(\[])", joined))
            paragraph.clear()

    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or set(line) <= set("-|: "):
            flush()
            continue
        bullet = re.match(r"^(?:[-*+]|\d+[.)])\s+(.*)$", line)
        if bullet:
            flush()
            sentences.append(bullet.group(1).strip())
        else:
            paragraph.append(line)
    flush()
    return [sentence for sentence in sentences if len(words(sentence)) >= 2]


def render_row(columns: list[str], row: dict[str, str]) -> str:
    key, rest = columns[0], columns[1:]
    details = ", ".join(f"{column}={row[column]}" for column in rest if row.get(column))
    head = row.get(key, "")
    return f"{head}: {details}" if details else head


_NUMBER = re.compile(r"^-?\$?\s?(\d[\d,]*(?:\.\d+)?)\s?(%)?$")


def structured_figure(label: str, column: str, raw: str, fact: Fact, from_metric_table: bool) -> Figure | None:
    match = _NUMBER.match(raw.strip())
    if not match:
        return None
    value = float(match.group(1).replace(",", ""))
    number = match.group(1)
    name = f"{column} {label}".lower()
    if match.group(2):
        unit, display = "%", f"{number}%"
    elif re.search(r"(^|_)m($|_)", column.lower()) or re.search(r"(^|_)m($|_|\s)", label.lower()):
        unit, display = "$M", f"${number}M"
    elif "month" in name:
        unit, display = "months", f"{number} months"
    elif any(word in name for word in PERCENT_WORDS) and value <= 1.5:
        value = round(value * 100, 2)
        unit, display = "%", f"{value:g}%"
    else:
        unit, display = "", number
    return Figure(label=label.strip(), value=value, unit=unit, display=display, fact=fact,
                  from_metric_table=from_metric_table)


_SENTENCE_NUMBER = re.compile(
    r"\$\s?(?P<money>\d[\d,]*(?:\.\d+)?)\s?(?P<scale>billion|million|thousand|bn|[MBK])?\b"
    r"|(?P<pct>\d+(?:\.\d+)?)\s?%"
    r"|(?P<months>\d+(?:\.\d+)?)[ -]months?\b",
    re.IGNORECASE,
)


def figures_in_sentence(fact: Fact) -> list[Figure]:
    found = []
    previous_end = 0
    text = fact.text
    for match in _SENTENCE_NUMBER.finditer(text):
        before = text[previous_end:match.start()]
        label_words = [w for w in words(before) if w not in STOPWORDS]
        if len(label_words) < 2:  # "..., or 34% of FY2025 ARR": read the words after the number too
            after = re.split(r"[,.;:()]", text[match.end():], maxsplit=1)[0]
            before = f"{before} {after}"
        previous_end = match.end()
        if match.group("money"):
            value = float(match.group("money").replace(",", ""))
            scale = (match.group("scale") or "").lower()
            value = {"b": value * 1000, "billion": value * 1000, "bn": value * 1000,
                     "k": value / 1000, "thousand": value / 1000, "m": value, "million": value}.get(scale, value / 1e6)
            unit = "$M"
        elif match.group("pct"):
            value, unit = float(match.group("pct")), "%"
        else:
            value, unit = float(match.group("months")), "months"
        found.append(Figure(label=before.strip(" :-—,"), value=value, unit=unit, display=match.group(0).strip(),
                            fact=fact))
    return found
