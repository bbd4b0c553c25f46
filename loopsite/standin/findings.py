"""The analyst's topic rules: what it concludes from the evidence it read.

Each `*_finding` function looks at the question and the evidence and may return a
`Finding`: a lead statement with inline citations, the claims behind it, risks and
open questions. Where a harness rule (see rules.py) governs the topic, the
function does what the rule says when the rule is on, and makes the seed's known
mistake when it is off. Nothing here knows a company: it works from column names
(parent_account, status, value_m), flag words (estimate, unvalidated) and file
kinds (CSV/JSON exports versus narrative markdown).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from . import rules
from .evidence import (
    ESTIMATE_FLAGS,
    MISSING_FLAGS,
    PARTIAL_FLAGS,
    Evidence,
    Fact,
    Figure,
    Table,
    cite,
    stem,
    terms,
    words,
)

# Question words and the dataroom words that usually answer them (generic diligence vocabulary).
EXPANSIONS: dict[str, tuple[str, ...]] = {
    "financing": ("cash", "runway", "burn", "raise"),
    "runway": ("cash", "burn"),
    "burn": ("cash", "runway"),
    "revenue": ("arr", "recurring", "recognition"),
    "quality": ("recognition", "bridge", "churn"),
    "figure": ("arr", "bridge", "reported"),
    "concentration": ("customer", "parent", "share", "account"),
    "rollup": ("parent", "hierarchy", "account"),
    "customer": ("account", "parent", "renewal"),
    "legal": ("litigation", "claim", "contract", "clause", "indemnity", "dispute", "counsel"),
    "exposure": ("claim", "indemnity", "liability", "uncapped"),
    "acquirer": ("control", "change"),
    "security": ("soc", "certification", "audit", "questionnaire"),
    "enterprise": ("soc", "procurement"),
    "ready": ("soc", "security"),
    "unsupported": ("unvalidated", "estimate", "provided", "partial"),
    "metric": ("retention", "kpi", "payback", "nrr"),
    "infer": ("estimate", "unvalidated"),
    "contradiction": ("conflict", "reconcile", "differ", "board"),
}

# Words that say little about where the answer is; their expansions still count.
GENERIC_QUESTION_WORDS = frozenset({
    "risk", "near", "term", "company", "dataroom", "real", "strong", "ready", "much", "many", "rely",
    "tell", "look", "need", "still", "appear", "answer", "management", "material", "claim", "evidence",
    "write", "memo", "give", "summarise", "summarize", "explain",
})

CONTRADICTION_WORDS = ("contradiction", "conflict", "inconsisten", "discrepan", "differ", "reconcil")
CONCENTRATION_WORDS = frozenset({"concentration", "customer", "parent", "rollup", "dependency", "exposure", "largest"})
SECURITY_WORDS = frozenset({"security", "certification", "certified", "compliance", "soc", "audit", "iso", "trust"})
METRIC_WORDS = frozenset({"metric", "unsupported", "retention", "infer", "kpi", "nrr", "estimate", "refuse", "financial"})
HEADLINE_SOURCE_WORDS = frozenset({"board", "deck", "overview", "investor", "presentation", "management", "pitch"})
FINAL_WORDS = frozenset({"ending", "total", "closing", "current"})
CATEGORY_WORDS = {
    "Legal": frozenset({"legal", "contract", "clause", "claim", "litigation", "lawsuit", "indemnity", "msa",
                        "dispute", "breach", "counsel", "liability", "dpa", "control", "reseller"}),
    "Customer concentration": frozenset({"customer", "concentration", "parent", "renewal", "account", "logo",
                                         "health", "escalation", "churn"}),
    "Financial": frozenset({"arr", "revenue", "burn", "runway", "cash", "margin", "financing", "bridge",
                            "pipeline", "nrr", "retention", "opex", "payback", "financial", "bookings"}),
}
CERTIFICATION = re.compile(r"\b(SOC ?[12]|ISO ?27001|ISO ?27701|PCI[- ]DSS|HIPAA|FedRAMP|HITRUST)\b", re.I)
SALES_SOURCE_WORDS = frozenset({"sale", "marketing", "faq", "pitch", "field"})
PENDING_WORDS = ("in progress", "pending", "not been issued", "not issued", "not yet", "fieldwork", "underway")
RISK_WORDS = {"High": ("breach", "claim", "lawsuit", "litigation", "uncapped", "blocked", "default", "covenant"),
              "Medium": ("dispute", "risk", "non-standard", "escalation", "not been", "unresolved", "open")}
SEVERITY_RANK = {"High": 0, "Medium": 1, "Low": 2}


@dataclass(frozen=True)
class Claim:
    text: str
    sources: tuple[str, ...]
    claim_type: str = "fact"


@dataclass
class Risk:
    risk: str
    severity: str
    rationale: str
    evidence: tuple[str, ...]
    open_questions: list[str]
    category: str = "Financial"

    @property
    def described(self) -> str:
        """Title and rationale, without repeating a title that is the start of the rationale."""
        title = self.risk.removesuffix("...")
        return self.rationale if self.rationale.startswith(title) else f"{self.risk}. {self.rationale}"


@dataclass
class Finding:
    topic: str
    lead: str
    claims: list[Claim] = field(default_factory=list)
    risks: list[Risk] = field(default_factory=list)
    open_questions: list[Claim] = field(default_factory=list)
    suppress: frozenset[str] = frozenset()  # facts with these terms are not listed again as evidence
    category: str = "Financial"
    rule_id: str | None = None
    rule_followed: bool | None = None

    @property
    def sources(self) -> list[str]:
        return list(dict.fromkeys(source for claim in self.claims for source in claim.sources))


@dataclass
class Question:
    text: str
    user_message: str = ""

    @property
    def terms(self) -> list[str]:
        return [term for term in terms(self.text) if term not in GENERIC_QUESTION_WORDS]

    @property
    def expanded(self) -> list[str]:
        found = dict.fromkeys(self.terms)
        for term in terms(self.text):
            for extra in EXPANSIONS.get(term, ()):
                found.setdefault(stem(extra), None)
        return list(found)

    def mentions(self, vocabulary: frozenset[str]) -> bool:
        return bool(set(self.terms) & vocabulary)

    @property
    def asks_for_contradictions(self) -> bool:
        lower = self.text.lower()
        return any(word in lower for word in CONTRADICTION_WORDS)

    @property
    def wants_nrr_only_if_direct(self) -> bool:
        """The per-question prompt rule in runs/prompts.py for net revenue retention."""
        return "report the metric only if the dataroom directly provides" in self.user_message.lower()


def relevance(fact_terms: frozenset[str], question: Question) -> int:
    direct = set(question.terms)
    return sum(2 if term in direct else 1 for term in fact_terms if term in question.expanded)


def category_of(text: str, source: str) -> str:
    tokens = set(terms(text)) | set(terms(source))
    path_tokens = set(terms(source.split("/")[0])) if "/" in source else set()
    scores = {
        name: len(tokens & vocabulary) + 2 * len(path_tokens & vocabulary)
        for name, vocabulary in CATEGORY_WORDS.items()
    }
    best = max(scores, key=lambda name: (scores[name], name == "Financial"))
    return best if scores[best] else "Financial"


def _name(term: str, question: Question) -> str:
    """The metric's name as the question wrote it (ARR, Runway)."""
    match = re.search(rf"\b({re.escape(term)}\w*)", question.text, re.I)
    name = match.group(1) if match else term
    return name[0].upper() + name[1:]


# ------------------------------------------------------------------ rule a: metrics


def metric_findings(question: Question, evidence: Evidence, active: frozenset[str]) -> list[Finding]:
    flagged = {id(fact) for fact in evidence.facts if fact.has_flag(ESTIMATE_FLAGS + MISSING_FLAGS + PARTIAL_FLAGS)}
    figures = [figure for figure in evidence.figures if id(figure.fact) not in flagged]
    structured = [figure for figure in figures if figure.kind == "structured"]
    focus = [term for term in question.terms if any(term in figure.tokens for figure in structured)]
    if question.asks_for_contradictions:
        narrative_tokens = {token for figure in figures if figure.kind == "narrative" for token in figure.tokens}
        focus += sorted(
            token for figure in structured for token in figure.tokens
            if token in narrative_tokens and token.isalpha() and len(token) >= 3 and token not in FINAL_WORDS
            and token not in focus
        )
    findings: list[Finding] = []
    anchors_seen: set[int] = set()
    for term in dict.fromkeys(focus):
        finding = _metric_finding(term, question, figures, active, anchors_seen)
        if finding:
            findings.append(finding)
    return findings


def _metric_finding(term: str, question: Question, figures: list[Figure], active: frozenset[str],
                    anchors_seen: set[int]) -> Finding | None:
    structured = [f for f in figures if f.kind == "structured" and term in f.tokens]
    units = {f.unit for f in structured}
    narrative = [f for f in figures if f.kind == "narrative" and term in f.tokens and f.unit in units]
    headline = _pick_headline(narrative, structured)
    anchor = _pick_anchor(structured, headline, term)
    if id(anchor) in anchors_seen:
        return None
    anchors_seen.add(id(anchor))
    name = _name(term, question)
    rule = rules.SOURCE_OF_TRUTH_METRICS

    if headline is None:
        return Finding(
            topic="metric", category=category_of(anchor.label, anchor.source),
            lead=f"{name}: {anchor.display} per the `{anchor.label}` figure {cite(anchor.source)}.",
            claims=[Claim(f"{name} is {anchor.display} ({anchor.label}).", (anchor.source,))],
        )
    if anchor.same_value(headline):
        finding = Finding(
            topic="metric", category=category_of(anchor.label, anchor.source),
            lead=(f"{name}: {anchor.display} in the `{anchor.label}` export {cite(anchor.source)}, consistent with "
                  f"\"{headline.fact.text}\" {cite(headline.source)}."),
            claims=[Claim(f"{name} is {anchor.display} ({anchor.label}) in the structured export.", (anchor.source,)),
                    Claim(f"The narrative agrees: {headline.fact.text}", (headline.source,))],
        )
        _add_runway_risk(finding, anchor, figures, active)
        return finding

    # The structured export and the narrative headline disagree: harness rule a decides.
    if not rule.is_on_for(active):
        return Finding(
            topic="metric", category=category_of(headline.label, headline.source),
            lead=f"{name} to rely on: {headline.display}, as reported in \"{headline.fact.text}\" {cite(headline.source)}.",
            claims=[Claim(f"{name} is {headline.display}: {headline.fact.text}", (headline.source,))],
            suppress=frozenset({term}), rule_id=rule.id, rule_followed=False,
        )
    explanations = [
        fact for fact in {id(f.fact): f.fact for f in narrative}.values()
        if fact.source not in (headline.source,) and not fact is headline.fact
        and re.search(r"includ|exclud|classif|controlled|reconcil|not |differ|adjust", fact.lower)
    ][:2]
    # Other views in the export that sit between the two figures (e.g. an adjusted or bookings view).
    low, high = sorted((anchor.value, headline.value))
    others = [f for f in structured if f.from_metric_table and f.unit == anchor.unit and low < f.value < high
              and not f.same_value(anchor)]
    lead = (f"Rely on the finance-controlled {name}: {anchor.display} (`{anchor.label}`) {cite(anchor.source)}. "
            f"The board/narrative figure is {headline.display} (\"{headline.fact.text}\") {cite(headline.source)}; "
            f"the two conflict and should not be silently reconciled.")
    claims = [
        Claim(f"Finance-controlled {name} is {anchor.display} ({anchor.label}).", (anchor.source,)),
        Claim(f"The narrative reports {name} of {headline.display}: {headline.fact.text}", (headline.source,)),
    ]
    for fact in explanations:
        lead += f" {fact.text} {cite(fact.source)}"
        claims.append(Claim(fact.text, (fact.source,)))
    for other in others[:2]:
        lead += f" The export also carries `{other.label}` = {other.display}, a different view {cite(other.source)}."
        claims.append(Claim(f"{other.label} is {other.display}, not the controlled {name}.", (other.source,)))
    sources = (anchor.source, headline.source) + tuple(fact.source for fact in explanations)
    return Finding(
        topic="metric", category=category_of(anchor.label, anchor.source), lead=lead, claims=claims,
        risks=[Risk(
            risk=f"Headline {name} conflicts with the finance-controlled figure",
            severity="High",
            rationale=(f"Finance-controlled {name} is {anchor.display} while the narrative reports "
                       f"{headline.display}; decisions based on the narrative figure would overstate it."),
            evidence=tuple(dict.fromkeys(sources)),
            open_questions=[f"How does the {headline.display} {name} reconcile to the finance-controlled {anchor.display}?"],
            category=category_of(anchor.label, anchor.source),
        )],
        open_questions=[Claim(
            f"How does the narrative {name} of {headline.display} reconcile to the finance-controlled {anchor.display}?",
            (headline.source, anchor.source), "open_question")],
        rule_id=rule.id, rule_followed=True,
    )


def _pick_headline(narrative: list[Figure], structured: list[Figure]) -> Figure | None:
    if not narrative:
        return None

    def key(figure: Figure) -> tuple:
        headline_source = bool(set(terms(figure.source)) & HEADLINE_SOURCE_WORDS) or "management report" in figure.fact.lower
        overlap = max((len(figure.tokens & other.tokens) for other in structured), default=0)
        return (not headline_source, -overlap, figure.fact.index)

    return min(narrative, key=key)


def _pick_anchor(structured: list[Figure], headline: Figure | None, term: str) -> Figure:
    def key(figure: Figure) -> tuple:
        overlap = len(figure.tokens & headline.tokens) if headline else 0
        same_unit = headline is None or figure.unit == headline.unit
        meaningful = {token for token in figure.tokens if token.isalpha()}
        jaccard = 1 / max(len(meaningful), 1)
        return (not same_unit, -overlap, not (figure.tokens & FINAL_WORDS), -jaccard, not figure.from_metric_table)

    return min(structured, key=key)


def _add_runway_risk(finding: Finding, anchor: Figure, figures: list[Figure], active: frozenset[str]) -> None:
    if "runway" not in anchor.tokens or anchor.unit != "months":
        return
    rule = rules.RUNWAY_CONSEQUENCE
    sources = (anchor.source,)
    if not rule.is_on_for(active) and anchor.value < 18:
        # The seed's mistake while the harness is silent: a generic red flag, no consequence drawn.
        finding.lead += " Cash runway is a red flag to keep an eye on."
        if finding.rule_id is None:
            finding.rule_id, finding.rule_followed = rule.id, False
        finding.risks.append(Risk(
            risk="Cash runway is a red flag", severity="Medium",
            rationale=f"Reported runway is {anchor.display}.", evidence=sources,
            open_questions=["How is runway expected to develop?"], category="Financial",
        ))
        return
    burn = next((f for f in figures if "burn" in f.tokens and f.kind == "structured"), None)
    burn_text = f" at {burn.display} cash burn" if burn else ""
    if anchor.value < 12:
        finding.lead += (f" A runway of {anchor.display}{burn_text} is under twelve months: the company must raise "
                         f"capital, cut burn or improve cash generation within the year, so near-term financing "
                         f"risk is elevated.")
        severity = "High"
    elif anchor.value < 18:
        finding.lead += f" A runway of {anchor.display}{burn_text} leaves limited room; financing risk is moderate."
        severity = "Medium"
    else:
        return
    sources = tuple(dict.fromkeys([anchor.source] + ([burn.source] if burn else [])))
    finding.risks.append(Risk(
        risk=f"Runway of {anchor.display} creates near-term financing pressure",
        severity=severity,
        rationale=f"Reported runway is {anchor.display}{burn_text}; the company needs financing or lower burn soon.",
        evidence=sources,
        open_questions=["What is the financing plan and timing before runway falls below six months?"],
        category="Financial",
    ))
    finding.open_questions.append(Claim(
        "What cash balance, debt capacity and financing plan support the reported runway?", sources, "open_question"))


# ------------------------------------------------------------------ rule b: parent rollup


def concentration_finding(question: Question, evidence: Evidence, active: frozenset[str]) -> Finding | None:
    if not question.mentions(CONCENTRATION_WORDS):
        return None
    customers = _customer_table(evidence.tables)
    if customers is None:
        return None
    table, entity_col, amount_col = customers
    share_col = table.column("share", "pct", "percent")
    parents = _parent_map(evidence.tables)
    rows = [row for row in table.rows if _number(row.get(amount_col)) is not None]
    if not rows:
        return None
    total = sum(_number(row[amount_col]) for row in rows)

    def share(amount: float, shares: list[float | None]) -> float:
        if shares and all(value is not None for value in shares):
            value = sum(shares)
            return value * 100 if value <= 1.5 else value
        return amount / total * 100 if total else 0.0

    top = max(rows, key=lambda row: _number(row[amount_col]))
    top_amount = _number(top[amount_col])
    top_share = share(top_amount, [_number(top.get(share_col))] if share_col else [])
    unit = "$" if "_m" in amount_col.lower() or "arr" in amount_col.lower() else ""
    suffix = "M" if "_m" in amount_col.lower() else ""
    entity_text = (f"the largest single legal entity, {top[entity_col]}, is {unit}{top[amount_col]}{suffix} "
                   f"or {top_share:.1f}% of ARR")

    groups: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        parent = parents.get(row[entity_col].lower()) or row[entity_col]
        groups.setdefault(parent, []).append(row)
    parent_name, members = max(groups.items(), key=lambda item: sum(_number(r[amount_col]) for r in item[1]))
    parent_amount = sum(_number(row[amount_col]) for row in members)
    parent_share = share(parent_amount, [_number(row.get(share_col)) for row in members] if share_col else [])
    hierarchy_sources = [t.source for t in evidence.tables if t.source != table.source and _parent_column(t)]
    rule = rules.PARENT_ACCOUNT_ROLLUP

    if len(members) < 2:  # no rollup changes the picture
        return Finding(
            topic="concentration", category="Customer concentration",
            lead=f"Customer concentration: {entity_text} {cite(table.source)}.",
            claims=[Claim(f"Largest customer {top[entity_col]} is {top_share:.1f}% of ARR.", (table.source,))],
            risks=[_concentration_risk(top[entity_col], top_share, (table.source,))],
        )
    if not rule.is_on_for(active):
        return Finding(
            topic="concentration", category="Customer concentration",
            lead=(f"Customer concentration measured by legal entity: {entity_text} {cite(table.source)}."),
            claims=[Claim(f"The largest customer, {top[entity_col]}, is {unit}{top[amount_col]}{suffix}, "
                          f"{top_share:.1f}% of ARR.", (table.source,))],
            risks=[_concentration_risk(top[entity_col], top_share, (table.source,))],
            suppress=frozenset(terms(parent_name)) | {"parent", "hierarchy"},
            rule_id=rule.id, rule_followed=False,
        )
    sources = (table.source, *hierarchy_sources)
    member_text = " + ".join(f"{row[entity_col]} {unit}{row[amount_col]}{suffix}" for row in members)
    amount_text = f"{unit}{parent_amount:.2f}".rstrip("0").rstrip(".") + suffix
    lead = (f"After rolling legal entities up to parent accounts, the largest exposure is {parent_name} at "
            f"{amount_text}, {parent_share:.1f}% (about {parent_share:.0f}%) of ARR ({member_text}) {cite(*sources)}. "
            f"The legal-entity view understates this: {entity_text} {cite(table.source)}.")
    return Finding(
        topic="concentration", category="Customer concentration", lead=lead,
        claims=[
            Claim(f"{parent_name} parent-account exposure is {amount_text}, {parent_share:.1f}% of ARR.", sources),
            Claim(f"The largest single legal entity, {top[entity_col]}, is {top_share:.1f}% of ARR.", (table.source,)),
        ],
        risks=[_concentration_risk(parent_name, parent_share, sources)],
        open_questions=[Claim(f"Do {parent_name}'s entities renew through one procurement decision, and when?",
                              sources, "open_question")],
        rule_id=rule.id, rule_followed=True,
    )


def _concentration_risk(name: str, share: float, sources: tuple[str, ...]) -> Risk:
    severity = "High" if share >= 25 else "Medium" if share >= 10 else "Low"
    return Risk(
        risk=f"Customer concentration in {name}",
        severity=severity,
        rationale=f"{name} accounts for {share:.1f}% of ARR; losing it would materially reduce revenue.",
        evidence=sources,
        open_questions=[f"What are the renewal terms and health of {name}?"],
        category="Customer concentration",
    )


def _number(raw: str | None) -> float | None:
    if raw is None:
        return None
    try:
        return float(str(raw).replace(",", "").replace("$", "").rstrip("%"))
    except ValueError:
        return None


def _entity_column(table: Table) -> str | None:
    return table.column("customer", "legal_entity", "entity", "account", "client", exclude=("parent",))


def _parent_column(table: Table) -> str | None:
    return table.column("parent", "ultimate")


def _customer_table(tables: list[Table]) -> tuple[Table, str, str] | None:
    candidates = []
    for table in tables:
        entity = _entity_column(table)
        amount = table.column("arr", "revenue", "amount", "acv", exclude=("share", "pct", "parent"))
        if entity and amount and any(_number(row.get(amount)) is not None for row in table.rows):
            candidates.append((bool(table.column("share", "pct")), len(table.rows), table, entity, amount))
    if not candidates:
        return None
    best = max(candidates, key=lambda item: (item[0], item[1]))
    return best[2], best[3], best[4]


def _parent_map(tables: list[Table]) -> dict[str, str]:
    mapping: dict[str, str] = {}
    for table in tables:
        entity, parent = _entity_column(table), _parent_column(table)
        if entity and parent:
            for row in table.rows:
                if row.get(entity) and row.get(parent):
                    mapping.setdefault(row[entity].lower(), row[parent])
    return mapping


# ------------------------------------------------------------------ rule c: certifications


def certification_finding(question: Question, evidence: Evidence, active: frozenset[str]) -> Finding | None:
    if not question.mentions(SECURITY_WORDS):
        return None
    mentions = [fact for fact in evidence.facts if CERTIFICATION.search(fact.text)]
    if not mentions:
        return None
    family = CERTIFICATION.search(mentions[0].text).group(1)
    family_terms = frozenset(terms(family))

    def from_sales(fact: Fact) -> bool:
        return bool(set(terms(fact.source)) & SALES_SOURCE_WORDS) or "field guidance" in fact.lower

    sales = [fact for fact in mentions if from_sales(fact)]
    # Status statements: sentences of the non-sales narrative files that name the certification.
    status_files = list(dict.fromkeys(f.source for f in mentions if not from_sales(f) and f.kind == "narrative"))
    authoritative = [fact for fact in evidence.facts if fact.source in status_files
                     and re.search(r"complete|issued|progress|pending|certified|fieldwork|type|scheduled", fact.lower)]
    sales_phrase = next((m.group(1) for fact in sales for m in re.finditer(r"\"([^\"]+)\"", fact.text)
                         if CERTIFICATION.search(m.group(1))), None)
    rule = rules.CERTIFICATION_PRECISION

    if not rule.is_on_for(active) and (sales_phrase or sales):
        source = sales[0].source
        wording = f"\"{sales_phrase}\"" if sales_phrase else sales[0].text
        return Finding(
            topic="certification", category="Security",
            lead=(f"Security readiness: the company is {wording} according to `{source}`, which supports "
                  f"enterprise security review."),
            claims=[Claim(f"The company is {wording}.", (source,))],
            suppress=family_terms | {"type", "certification", "certified"}, rule_id=rule.id, rule_followed=False,
        )
    if not authoritative:
        return None
    status = " ".join(fact.text for fact in authoritative[:3])
    status_sources = list(dict.fromkeys(fact.source for fact in authoritative[:3]))
    pending = any(word in status.lower() for word in PENDING_WORDS)
    verdict = ("only partially ready for enterprise security review: the certification work is not finished"
               if pending else "supported for enterprise security review by its security documentation")
    lead = f"The company is {verdict}. Exact status: {status} {cite(*status_sources)}"
    claims = [Claim(f"Certification status: {fact.text}", (fact.source,)) for fact in authoritative[:3]]
    if sales:
        wording = f"\"{sales_phrase}\"" if sales_phrase else "its wording"
        lead += (f" Sales wording {wording} {cite(sales[0].source)} is weaker evidence and should not be relied on "
                 f"as certification.")
        claims.append(Claim(f"Sales material uses the wording {wording}, which is weaker evidence than the "
                            f"security documentation.", (sales[0].source,)))
    blocked = [fact for fact in mentions if fact.kind == "structured" or re.search(r"block|depend|pending", fact.lower)]
    blocked = [fact for fact in blocked if fact not in authoritative and fact not in sales][:2]
    for fact in blocked:
        lead += f" Related: {fact.text} {cite(fact.source)}"
        claims.append(Claim(fact.text, (fact.source,)))
    risks = []
    if pending:
        risks.append(Risk(
            risk=f"{family} certification incomplete",
            severity="High" if blocked else "Medium",
            rationale=f"{status} Enterprise buyers waiting on the report may delay procurement.",
            evidence=tuple(dict.fromkeys(status_sources + [fact.source for fact in blocked])),
            open_questions=[f"When will the outstanding {family} report be issued?"],
            category="Security",
        ))
    return Finding(
        topic="certification", category="Security", lead=lead, claims=claims, risks=risks,
        open_questions=[Claim(f"When will the outstanding {family} work complete and the report be issued?",
                              tuple(status_sources), "open_question")] if pending else [],
        suppress=family_terms, rule_id=rule.id, rule_followed=True,
    )


# ------------------------------------------------------------------ rule d: estimates; missing metrics


@dataclass
class FlaggedMetric:
    name: str  # "net revenue retention (NRR)"
    key_terms: frozenset[str]
    value: str
    flag: str
    note: str
    sources: list[str]


def metric_status_findings(question: Question, evidence: Evidence, active: frozenset[str]) -> list[Finding]:
    estimates, partials, missing = _flagged_metrics(evidence)
    broad = question.mentions(METRIC_WORDS)
    expanded = set(question.expanded)

    def relevant(item: FlaggedMetric) -> bool:
        return broad or bool(item.key_terms & expanded)

    findings: list[Finding] = []
    rule = rules.UNVALIDATED_ESTIMATES
    for item in filter(relevant, estimates):
        short = item.name.split(" (")[-1].rstrip(")") if " (" in item.name else item.name
        if rule.is_on_for(active):
            lead = (f"Official {item.name} is unsupported: the {item.value} figure is flagged "
                    f"`{item.flag}` {cite(*item.sources)}, so it is an estimate, not an official metric."
                    + (f" {item.note}" if item.note else ""))
            findings.append(Finding(
                topic="estimate", category="Financial", lead=lead,
                claims=[Claim(f"The {item.value} {short} is a {item.flag.replace('_', ' ')} figure, not an official "
                              f"metric; official {short} is unsupported.", tuple(item.sources), "unsupported")],
                risks=[Risk(
                    risk=f"{short} is an unvalidated estimate",
                    severity="Medium",
                    rationale=f"The only {short} figure ({item.value}) is flagged {item.flag}; it cannot support "
                              f"underwriting.",
                    evidence=tuple(item.sources),
                    open_questions=[f"Can finance provide a validated {short} calculation?"],
                    category="Financial",
                )],
                open_questions=[Claim(f"Can finance provide a validated {short} with its calculation basis?",
                                      tuple(item.sources), "open_question")],
                suppress=item.key_terms, rule_id=rule.id, rule_followed=True,
            ))
        else:
            findings.append(Finding(
                topic="estimate", category="Financial",
                lead=f"The company's {item.name} is {item.value} {cite(item.sources[0])}.",
                claims=[Claim(f"{_capital(item.name)} is {item.value}.", (item.sources[0],))],
                suppress=item.key_terms, rule_id=rule.id, rule_followed=False,
            ))
    for item in filter(relevant, partials):
        findings.append(Finding(
            topic="partial", category="Financial",
            lead=(f"{_capital(item.name)} of {item.value} is only partial (`{item.flag}`) "
                  f"{cite(*item.sources)}; treat it as directional." + (f" {item.note}" if item.note else "")),
            claims=[Claim(f"{_capital(item.name)} of {item.value} is flagged {item.flag} and is directional only.",
                          tuple(item.sources), "caveat")],
            risks=[Risk(risk=f"{_capital(item.name)} is only partial", severity="Medium",
                        rationale=f"{_capital(item.name)} of {item.value} is flagged {item.flag}. {item.note}".strip(),
                        evidence=tuple(item.sources),
                        open_questions=[f"When will a complete {item.name} figure be available?"])],
            suppress=item.key_terms,
        ))
    for item in filter(relevant, missing):
        findings.append(Finding(
            topic="missing", category="Financial",
            lead=f"{_capital(item.name)} is unknown: not provided in the dataroom {cite(*item.sources)}.",
            claims=[Claim(f"{_capital(item.name)} is not provided; it is unknown and unsupported.", tuple(item.sources),
                          "unsupported")],
            risks=[Risk(risk=f"{_capital(item.name)} is not provided", severity="Medium",
                        rationale=f"{_capital(item.name)} was not provided, so it cannot be assessed.",
                        evidence=tuple(item.sources),
                        open_questions=[f"Can management provide {item.name}?"])],
            open_questions=[Claim(f"Can management provide {item.name} with its source schedule?",
                                  tuple(item.sources), "open_question")],
            suppress=item.key_terms,
        ))
    if question.wants_nrr_only_if_direct and not any("nrr" in f.terms or "net revenue retention" in f.lower
                                                     for f in evidence.facts):
        searched = list(evidence.files)
        findings.append(Finding(
            topic="missing", category="Financial",
            lead=f"Net revenue retention is unknown: no file read provides it {cite(*searched)}.",
            claims=[Claim("Net revenue retention is not provided in the files searched; it is unsupported.",
                          tuple(searched), "unsupported")],
        ))
    return findings


def _flagged_metrics(evidence: Evidence) -> tuple[list[FlaggedMetric], list[FlaggedMetric], list[FlaggedMetric]]:
    used_words = {word for fact in evidence.facts for word in re.findall(r"\b[A-Z]{2,5}\b", fact.text)}
    estimates: list[FlaggedMetric] = []
    partials: list[FlaggedMetric] = []
    missing: list[FlaggedMetric] = []
    for table in evidence.tables:
        key = next((c for c in table.columns if c.lower() in ("metric", "kpi", "measure", "item", "line_item")), None)
        value_col = next((c for c in table.columns if c.lower().startswith("value")), None)
        if not key or not value_col:
            continue
        flag_col = table.column("status", "flag", "basis", "quality")
        note_col = table.column("note", "comment", "caveat")
        for row in table.rows:
            flag = (row.get(flag_col) or "") if flag_col else ""
            raw = " ".join(row.values())
            acronym = _acronym(row[key])
            acronym = acronym if acronym in used_words else ""
            item = FlaggedMetric(
                name=_metric_name(row[key], acronym), key_terms=frozenset(terms(row[key]) + [acronym.lower()] * bool(acronym)),
                value=row.get(value_col, ""), flag=flag or "flagged", note=(row.get(note_col) or "") if note_col else "",
                sources=[table.source],
            )
            fact = Fact(source=table.source, text=raw, kind="structured", index=0)
            if not item.value or fact.has_flag(MISSING_FLAGS):
                missing.append(item)
            elif fact.has_flag(ESTIMATE_FLAGS):
                estimates.append(item)
            elif fact.has_flag(PARTIAL_FLAGS):
                partials.append(item)
    # Narrative files that repeat an estimate corroborate it (same value, same metric words).
    for item in estimates:
        acronym = _acronym(item.name.split(" (")[0])
        for fact in evidence.facts:
            if fact.kind == "narrative" and item.value in fact.text and fact.has_flag(ESTIMATE_FLAGS) and (
                    (acronym and acronym.lower() in words(fact.text)) or item.key_terms & fact.terms):
                if fact.source not in item.sources:
                    item.sources.append(fact.source)
    return estimates, partials, missing


def _acronym(name: str) -> str:
    parts = [part for part in re.split(r"[_\s]+", name) if part]
    return "".join(part[0] for part in parts).upper() if len(parts) >= 3 else ""


def _metric_name(raw: str, acronym: str) -> str:
    name = re.sub(r"[_\s]+", " ", raw).strip()
    return f"{name} ({acronym})" if acronym else name


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


# ------------------------------------------------------------------ everything else


def risk_from_fact(fact: Fact) -> Risk | None:
    """A risk read straight off a row (severity/risk columns) or a sentence with risk words."""
    severity = None
    if fact.row:
        for column, value in fact.row:
            if re.search(r"severity|risk|confidence|health", column, re.I):
                lower = value.lower()
                if lower in ("high", "red", "critical"):
                    severity = "High"
                elif lower in ("medium", "yellow", "amber") and severity is None:
                    severity = "Medium"
        if severity is None and re.search(r"uncapped|breach|blocked", fact.lower):
            severity = "Medium"
    else:
        for level in ("High", "Medium"):
            if any(word in fact.lower for word in RISK_WORDS[level]):
                severity = level
                break
    if severity is None:
        return None
    title = fact.text if len(fact.text) <= 90 else fact.text[:87].rsplit(" ", 1)[0] + "..."
    return Risk(
        risk=title, severity=severity, rationale=fact.text, evidence=(fact.source,),
        open_questions=[f"What is the current status and expected impact of: {title}"],
        category=category_of(fact.text, fact.source),
    )


def gap_question(fact: Fact) -> Claim | None:
    """An open question from a sentence that admits missing or unreconciled evidence."""
    if re.search(r"not (been )?(provided|validated|reconciled|fully|published|included|issued)|requested|unresolved"
                 r"|has not|should be checked|verify", fact.lower) and fact.kind == "narrative":
        return Claim(f"Management to resolve: {fact.text}", (fact.source,), "open_question")
    return None


def supporting_facts(question: Question, evidence: Evidence, suppress: frozenset[str], used: set[str],
                     limit: int) -> list[Fact]:
    scored = []
    for fact in evidence.facts:
        if fact.text in used or fact.terms & suppress or fact.has_flag(ESTIMATE_FLAGS):
            continue
        score = relevance(fact.terms, question)
        if score > 0:
            scored.append((-score, list(evidence.files).index(fact.source), fact.index, fact))
    scored.sort(key=lambda item: item[:3])
    return [item[3] for item in scored[:limit]]


def severity_sorted(risks: list[Risk]) -> list[Risk]:
    return sorted(risks, key=lambda risk: SEVERITY_RANK.get(risk.severity, 3))



# ------------------------------------------------------------------ the whole analysis


@dataclass
class Analysis:
    question: Question
    evidence: Evidence
    findings: list[Finding]
    supporting: list[Fact]
    risks: list[Risk]
    open_questions: list[Claim]

    @property
    def claims(self) -> list[Claim]:
        claims = [claim for finding in self.findings for claim in finding.claims]
        claims += [Claim(fact.text, (fact.source,)) for fact in self.supporting]
        return list({claim.text: claim for claim in claims}.values())

    @property
    def lead(self) -> str:
        if self.findings:
            return "\n\n".join(finding.lead for finding in self.findings)
        if self.supporting:
            return " ".join(f"{fact.text} {cite(fact.source)}" for fact in self.supporting[:2])
        return ("The files read do not answer this question; the answer is unknown from the dataroom "
                f"{cite(*self.evidence.files)}.")

    @property
    def cited_sources(self) -> list[str]:
        return list(dict.fromkeys(source for claim in self.claims for source in claim.sources))


def analyse(question: Question, evidence: Evidence, active: frozenset[str]) -> Analysis:
    findings: list[Finding] = metric_findings(question, evidence, active)
    for make in (concentration_finding, certification_finding):
        finding = make(question, evidence, active)
        if finding:
            findings.append(finding)
    findings += metric_status_findings(question, evidence, active)

    suppress = frozenset().union(*(finding.suppress for finding in findings))
    used = {claim.text for finding in findings for claim in finding.claims}
    used |= {fact.text for finding in findings for fact in evidence.facts if fact.text in finding.lead}
    supporting = supporting_facts(question, evidence, suppress, used, limit=6 if findings else 8)

    relevant = [fact for fact in evidence.facts
                if relevance(fact.terms, question) > 0 and not fact.terms & suppress and fact.text not in used]
    risks = [risk for finding in findings for risk in finding.risks]
    if not any("runway" in risk.risk.lower() for risk in risks):  # a short runway is a risk whatever was asked
        runway = next((f for f in evidence.figures if f.kind == "structured" and "runway" in f.tokens
                       and f.unit == "months"), None)
        if runway:
            probe = Finding(topic="runway", lead="")
            _add_runway_risk(probe, runway, evidence.figures, active)
            risks += probe.risks
    risks += [risk for risk in map(risk_from_fact, relevant) if risk]
    risks = severity_sorted(list({risk.risk: risk for risk in risks}.values()))[:5]
    claims = [claim for finding in findings for claim in finding.claims]
    claims += [Claim(fact.text, (fact.source,)) for fact in supporting]
    if not risks and claims:  # the register is never empty: the main conclusion still needs confirming
        claim = claims[0]
        risks = [Risk(risk="Main conclusion rests on limited evidence", severity="Low",
                      rationale=f"{claim.text} This rests on {len(claim.sources)} source(s) only.",
                      evidence=claim.sources, open_questions=["What further evidence confirms this conclusion?"],
                      category=category_of(claim.text, claim.sources[0]))]

    questions = [claim for finding in findings for claim in finding.open_questions]
    questions += [claim for claim in map(gap_question, relevant) if claim]
    questions = list({claim.text: claim for claim in questions}.values())[:6]
    if not questions:
        sources = tuple(evidence.files)[:3]
        questions = [Claim("What further evidence would confirm the conclusions above?", sources, "open_question")]
    return Analysis(question=question, evidence=evidence, findings=findings, supporting=supporting,
                    risks=risks, open_questions=questions)
