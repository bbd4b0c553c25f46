"""The run as the review pages show it: the trace panel, citation links, and finding a claim in the run."""

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from django.core.cache import caches
from django.db.models import Count, Max, Sum
from django.template.loader import render_to_string
from django.utils.safestring import mark_safe

from runs import display
from runs.models import Run

# The run detail page marks the final answer as a citable "artifact" of this name.
ANSWER = "final_answer"

# Leading phrases that make a prohibited claim an instruction rather than the claim itself:
# "Do not say SOC 2 is simply complete" is checked as "SOC 2 is simply complete" too.
_NEGATIONS = re.compile(
    r"^\s*(?:do\s+not|don[’']t|never|must\s+not|should\s+not|avoid)\s+"
    r"(?:(?:say|claim|state|imply|suggest|assert|write|report|conclude)(?:ing)?\s+(?:that\s+)?)?",
    re.IGNORECASE,
)
_QUOTED = re.compile(r"[\"“”'‘’]([^\"“”'‘’]{3,})[\"“”'‘’]")
MIN_PHRASE = 3


def trace_context(run: Run) -> dict[str, Any]:
    """What the run-detail partials (answer, validators, artifacts, span-tree) need."""
    return {"run": run, "span_tree": display.span_tree(run)}


EVIDENCE_PARTS = ("answer", "validators", "artifacts", "span-tree")


def evidence_fingerprint(run: Run) -> str | None:
    """What the run's evidence depends on: its state, answer, validator results and its span and artifact
    rows. None while the run is queued or running (its evidence still changes)."""
    if run.is_active:
        return None
    spans = run.spans.aggregate(n=Count("id"), last=Max("id"))
    artifacts = run.artifacts.aggregate(n=Count("id"), last=Max("id"), size=Sum("size"))
    state = json.dumps([run.status, run.attempts, str(run.finished_at), run.final_answer, run.evidence_coverage,
                        run.output_contract, spans, artifacts], sort_keys=True, default=str)
    return hashlib.sha256(state.encode()).hexdigest()[:24]


def evidence_html(run: Run, *, request=None) -> str:
    """The run's answer, validators, artifacts and span tree as the trace panel beside the feedback form
    shows them (the run page's own partials). The same for every reader, and fixed once the run has
    finished: rendered once per fingerprint and kept in the "evidence" cache, so twenty reviewers
    opening the run do not render a 100-span tree twenty times."""
    fingerprint = evidence_fingerprint(run)
    key = f"evidence:{run.pk}:{fingerprint}"
    store = caches["evidence"]
    if fingerprint is not None:
        cached = store.get(key)
        if cached is not None:
            return mark_safe(cached)  # noqa: S308 - our own rendering of escaped templates
    context = trace_context(run)
    html = "\n".join(render_to_string(f"runs/run_detail.html#{part}", context, request=request)
                     for part in EVIDENCE_PARTS)
    if fingerprint is not None:
        store.set(key, html)
    return mark_safe(html)  # noqa: S308


def artifact_anchor(name: str) -> str:
    slug = "".join(ch if ch.isalnum() else "-" for ch in name).strip("-").lower()
    return f"artifact-{slug}"


def citation_url(run: Run, *, span_id: str = "", artifact: str = "", line: int | str | None = None) -> str:
    """Where a citation points: the span, the answer, the artifact or (with `line`) the artifact's line,
    as ids of the run page that the trace panel beside the form has too."""
    base = run.get_absolute_url()
    if span_id:
        return f"{base}#span-{span_id}"
    if artifact == ANSWER:
        return f"{base}#answer"
    if artifact:
        number = str(line or "").strip()
        suffix = f"-L{int(number)}" if number.isdigit() and int(number) > 0 else ""
        return f"{base}#{artifact_anchor(artifact)}{suffix}"
    return ""


def citation_label(span_id: str | None, artifact: str | None, line: int | str | None = None) -> str:
    if span_id:
        return f"span {span_id}"
    if artifact:
        name = "the answer" if artifact == ANSWER else artifact
        return f"{name}, line {line}" if line else name
    return ""


@dataclass
class Hit:
    phrase: str
    where: str  # "the answer" or an artifact name
    line: int | None
    url: str
    excerpt: str


def phrases_of(claim: str) -> list[str]:
    """The claim as typed, without a leading "Do not say…", and any quoted phrase in it."""
    claim = " ".join(claim.split())
    candidates = [claim, _NEGATIONS.sub("", claim).rstrip(".")]
    candidates += [match.group(1).strip() for match in _QUOTED.finditer(claim)]
    phrases: list[str] = []
    for phrase in candidates:
        phrase = phrase.strip(" .")
        if len(phrase) >= MIN_PHRASE and phrase.lower() not in (p.lower() for p in phrases):
            phrases.append(phrase)
    return phrases


def find_claim(run: Run, claim: str) -> list[Hit]:
    """Where the run's answer or artifacts already contain the claim (case-insensitive)."""
    hits: list[Hit] = []
    sources = [("the answer", run.final_answer or "", citation_url(run, artifact=ANSWER))]
    sources += [
        (artifact.name, artifact.content or "", citation_url(run, artifact=artifact.name))
        for artifact in run.artifacts.all()
    ]
    for phrase in phrases_of(claim):
        pattern = re.compile(r"\s+".join(re.escape(word) for word in phrase.split()), re.IGNORECASE)
        for where, text, url in sources:
            match = pattern.search(text)
            if match is None or any(hit.where == where for hit in hits):
                continue
            is_artifact = where != "the answer"
            line = text.count("\n", 0, match.start()) + 1 if is_artifact else None
            start, end = max(0, match.start() - 60), min(len(text), match.end() + 60)
            excerpt = ("…" if start else "") + " ".join(text[start:end].split()) + ("…" if end < len(text) else "")
            if line is not None and where != "the answer":
                url = citation_url(run, artifact=where, line=line)  # opens and highlights that line
            hits.append(Hit(phrase=phrase, where=where, line=line, url=url, excerpt=excerpt))
    return hits
