"""HALO's agents (halo-engine): read the optimization context with HALO's trace tools, then report.

Claims a request that offers HALO's trace tools (`get_dataset_overview`,
`query_traces`, `search_trace`, `view_spans`). The root agent also has
`final_answer` (its only way to finish); a subagent does not and answers in
plain text. Like every role it is stateless: each request re-derives the next
step from the tool calls already made and their outputs.

Root agent:
1. `get_dataset_overview` (HALO's prompt says: first), plus one `call_subagent`
   about the execution traces when that tool is offered (maximum_depth >= 1);
2. `query_traces` with `filters.regex_pattern` = `"optimizer\\.signal_source"`: the
   traces that carry optimizer signals (paged by 500);
3. `search_trace` on each of them for that key: the ids of the signal spans;
4. `view_spans` on those ids (one span per call where a batch was oversized);
5. `final_answer` with the seven-section report built from the spans it read.
A "last turn" nudge or HALO's "call final_answer now" reprompt skips to step 5.

The report, by readable rules:
- each signal (human feedback, eval definition, gate row, insight observation) is
  matched to the harness rule (rules.py) whose keywords (`RULE_KEYWORDS`) it
  mentions most; a gate row also reads the eval definition it scores;
- a rule with failing gate rows, human feedback or eval definitions is a failure
  mode; ranked by failing gate rows, then feedback and evals, then insights;
- classified against the harness config span: the rule's trigger absent from the
  system prompt and tool policy = missing requirement (recommend adding the rule's
  sentence, quoted verbatim under "#### Prompt"); present = present but not
  reliably followed (recommend enforcing it);
- feedback and failing rows that match no rule are listed as requirements to write.

Subagent: `get_dataset_overview`, `query_traces` (no filter), then a short
summary of what it read (traces, spans, agents, error spans).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from .conversation import Conversation, Exchange, Reply, ToolCall
from .rules import RULES, Rule
from .textrules import key_words, stem

NAME = "halo_agent"
TRACE_TOOLS = ("get_dataset_overview", "query_traces", "search_trace", "view_spans")
FINAL_TOOL = "final_answer"
SUBAGENT_TOOL = "call_subagent"
SIGNAL_KEY = "optimizer.signal_source"
SIGNAL_REGEX = r'"optimizer\.signal_source"'
PAGE = 500
MAX_PAGES = 20
MAX_CALLS_PER_TURN = 40
MAX_VIEW_IDS = 200
SUBAGENT_QUESTION = (
    "Summarise the agent execution traces in this dataset: how many traces and spans, which agents and "
    "models ran, and how many spans ended in errors (OTel errors and tool errors)."
)
# HALO's nudges (engine/agents/turn_counter.py, openai_agent_runner.py): finish now.
FINISH_NOW = ("last turn", "over budget", "ended without calling the `final_answer` tool")

# Which words in a feedback item, eval or gate row point at which harness rule.
RULE_KEYWORDS: dict[str, tuple[str, ...]] = {
    "source_of_truth_metrics": (
        "source of truth", "source-of-truth", "finance-controlled", "finance controlled", "arr bridge",
        "controlled arr", "board arr", "headline arr", "finance arr", "reconcile", "reconciled",
        "arr figure", "arr contradiction", "board deck",
    ),
    "parent_account_rollup": (
        "parent account", "parent accounts", "parent-account", "roll up", "rolls up", "rolled up", "rollup",
        "rollups", "roll-up", "legal entity", "legal entities", "legal-entity", "account hierarchy",
        "account_hierarchy", "concentration",
    ),
    "certification_precision": (
        "soc 2", "soc2", "type i", "type ii", "certification", "certified", "security faq", "audit report",
    ),
    "unvalidated_estimates": (
        "unvalidated", "management estimate", "nrr", "cac payback", "unsupported metric",
        "unsupported metrics", "official metric", "estimate",
    ),
}
# What the runtime can do to make each rule stick (the "#### Tools" advice).
RULE_TOOL_HINTS: dict[str, str] = {
    "source_of_truth_metrics": "read the finance-controlled export (for example an ARR bridge CSV) before any "
                               "board or narrative file that reports the same metric",
    "parent_account_rollup": "look for a parent-account column or an account hierarchy file and compute the "
                             "parent-level totals with a shell command before writing the concentration claim",
    "certification_precision": "read the security or audit documents before sales collateral whenever a "
                               "question touches certifications",
    "unvalidated_estimates": "search the dataroom for words such as 'estimate', 'unvalidated' and 'not "
                             "published' before reporting any retention or efficiency metric",
}


def matches(conv: Conversation) -> bool:
    return all(conv.offers_tool(name) for name in TRACE_TOOLS)


def reply(conv: Conversation) -> Reply:
    if conv.offers_tool(FINAL_TOOL):
        return _root_reply(conv)
    return _subagent_reply(conv)


# -- steps ----------------------------------------------------------------------

def _must_finish(conv: Conversation) -> bool:
    last = conv.last_user_text.lower()
    return any(marker.lower() in last for marker in FINISH_NOW)


def _root_reply(conv: Conversation) -> Reply:
    if not _must_finish(conv):
        if not conv.calls_to("get_dataset_overview"):
            calls = [ToolCall("get_dataset_overview", {})]
            if conv.offers_tool(SUBAGENT_TOOL) and not conv.calls_to(SUBAGENT_TOOL):
                calls.append(ToolCall(SUBAGENT_TOOL, {"input": SUBAGENT_QUESTION}))
            return Reply(tool_calls=tuple(calls))
        calls = _next_reads(conv)
        if calls:
            return Reply(tool_calls=tuple(calls[:MAX_CALLS_PER_TURN]))
    reading = Reading.from_conversation(conv)
    return Reply(tool_calls=(ToolCall(FINAL_TOOL, {"answer": build_report(reading)}),))


def _next_reads(conv: Conversation) -> list[ToolCall]:
    queries = conv.calls_to("query_traces")
    if not queries:
        return [ToolCall("query_traces", {"filters": {"regex_pattern": SIGNAL_REGEX}, "limit": PAGE})]
    trace_ids: list[str] = []
    last_total = 0
    last_count = 0
    for exchange in queries:
        result = _result(exchange) or {}
        page = result.get("traces") or []
        last_total, last_count = int(result.get("total") or 0), len(page)
        for summary in page:
            if summary.get("trace_id") and summary["trace_id"] not in trace_ids:
                trace_ids.append(summary["trace_id"])
    if last_count and len(trace_ids) < last_total and len(queries) < MAX_PAGES:
        return [ToolCall("query_traces", {"filters": {"regex_pattern": SIGNAL_REGEX}, "limit": PAGE,
                                          "offset": len(queries) * PAGE})]

    searched = {exchange.arguments.get("trace_id") for exchange in conv.calls_to("search_trace")}
    pending = [trace_id for trace_id in trace_ids if trace_id not in searched]
    if pending:
        return [ToolCall("search_trace", {"trace_id": trace_id, "regex_pattern": SIGNAL_REGEX,
                                          "context_buffer_chars": 0, "max_matches": 500})
                for trace_id in pending]

    matched: dict[str, list[str]] = {}
    for exchange in conv.calls_to("search_trace"):
        result = _result(exchange) or {}
        for match in result.get("matches") or []:
            ids = matched.setdefault(str(match.get("trace_id") or exchange.arguments.get("trace_id")), [])
            if match.get("span_id") and match["span_id"] not in ids:
                ids.append(match["span_id"])

    covered: dict[str, set[str]] = {}
    oversized: dict[str, set[str]] = {}
    for exchange in conv.calls_to("view_spans"):
        trace_id = str(exchange.arguments.get("trace_id"))
        ids = [str(span_id) for span_id in exchange.arguments.get("span_ids") or []]
        result = _result(exchange) or {}
        if result.get("oversized") and len(ids) > 1:
            oversized.setdefault(trace_id, set()).update(ids)
        else:  # read, or a single span too large to read: either way, done with it
            covered.setdefault(trace_id, set()).update(ids)
    calls: list[ToolCall] = []
    for trace_id, ids in matched.items():
        missing = [span_id for span_id in ids if span_id not in covered.get(trace_id, set())]
        singles = [span_id for span_id in missing if span_id in oversized.get(trace_id, set())]
        batch = [span_id for span_id in missing if span_id not in oversized.get(trace_id, set())]
        calls += [ToolCall("view_spans", {"trace_id": trace_id, "span_ids": [span_id]}) for span_id in singles]
        for start in range(0, len(batch), MAX_VIEW_IDS):
            calls.append(ToolCall("view_spans", {"trace_id": trace_id, "span_ids": batch[start:start + MAX_VIEW_IDS]}))
    return calls


def _subagent_reply(conv: Conversation) -> Reply:
    if not _must_finish(conv):
        if not conv.calls_to("get_dataset_overview"):
            return Reply(tool_calls=(ToolCall("get_dataset_overview", {}),))
        if not conv.calls_to("query_traces"):
            return Reply(tool_calls=(ToolCall("query_traces", {"limit": PAGE}),))
    return Reply(text=subagent_summary(conv))


def subagent_summary(conv: Conversation) -> str:
    overview = next((_result(exchange) for exchange in conv.calls_to("get_dataset_overview")
                     if _result(exchange)), None) or {}
    traces: list[dict] = []
    for exchange in conv.calls_to("query_traces"):
        traces += (_result(exchange) or {}).get("traces") or []
    if not overview and not traces:
        return "I could not read the dataset: the trace tools returned nothing usable."
    with_agents = [trace for trace in traces if trace.get("agent_names")]
    biggest = max(with_agents or traces, key=lambda trace: int(trace.get("span_count") or 0), default=None)
    parts = [
        f"I read the dataset with get_dataset_overview and query_traces: {overview.get('total_traces', len(traces))} "
        f"traces, {overview.get('total_spans', sum(int(t.get('span_count') or 0) for t in traces))} spans.",
        f"{len(with_agents)} of the {len(traces)} traces listed are agent execution traces "
        f"(agents: {', '.join(overview.get('agent_names') or []) or 'none named'}; "
        f"models: {', '.join(overview.get('model_names') or []) or 'none named'}).",
        f"Errors: {overview.get('otel_error_span_count', 0)} OTel error spans and "
        f"{overview.get('tool_error_span_count', 0)} tool error spans in "
        f"{overview.get('error_trace_count', 0)} traces.",
    ]
    if biggest:
        parts.append(f"The largest is trace {biggest.get('trace_id')} with {biggest.get('span_count')} spans.")
    return " ".join(parts)


# -- what the root agent read ----------------------------------------------------

def _result(exchange: Exchange) -> dict[str, Any] | None:
    """The `result` object of a HALO tool output (None for tool errors and non-JSON outputs)."""
    try:
        value = json.loads(exchange.output or "")
    except (TypeError, json.JSONDecodeError):
        return None
    if not isinstance(value, dict):
        return None
    result = value.get("result", value)
    return result if isinstance(result, dict) else None


def _json_list(value: Any) -> list[str]:
    if isinstance(value, list):
        return [str(item) for item in value]
    try:
        parsed = json.loads(value or "[]")
    except (TypeError, json.JSONDecodeError):
        return [str(value)] if value else []
    return [str(item) for item in parsed] if isinstance(parsed, list) else [str(parsed)]


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes", "pass", "passed")
    return bool(value)


@dataclass
class Reading:
    harness: dict[str, str] = field(default_factory=dict)
    feedback: list[dict[str, Any]] = field(default_factory=list)
    insights: list[dict[str, Any]] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)
    gate_rows: list[dict[str, Any]] = field(default_factory=list)
    gate_summary: dict[str, int] | None = None
    total_traces: int = 0
    total_spans: int = 0
    error_spans: int = 0
    signal_traces: set[str] = field(default_factory=set)
    global_traces: set[str] = field(default_factory=set)
    subagent_answers: list[str] = field(default_factory=list)
    tool_calls: int = 0
    gate_summary_span: str = ""

    @property
    def run_traces(self) -> int:
        return max(0, self.total_traces - len(self.global_traces))

    @classmethod
    def from_conversation(cls, conv: Conversation) -> Reading:
        reading = cls(tool_calls=len(conv.exchanges))
        for exchange in conv.calls_to("get_dataset_overview"):
            overview = _result(exchange) or {}
            reading.total_traces = int(overview.get("total_traces") or 0)
            reading.total_spans = int(overview.get("total_spans") or 0)
            reading.error_spans = int(overview.get("otel_error_span_count") or 0)
        for exchange in conv.calls_to(SUBAGENT_TOOL):
            result = _result(exchange) or {}
            if result.get("answer"):
                reading.subagent_answers.append(str(result["answer"]))
        seen: set[tuple[str, str]] = set()
        for exchange in conv.calls_to("view_spans"):
            for span in (_result(exchange) or {}).get("spans") or []:
                key = (str(span.get("trace_id")), str(span.get("span_id")))
                if key not in seen:
                    seen.add(key)
                    reading.absorb(span)
        return reading

    def absorb(self, span: dict[str, Any]) -> None:
        attributes = span.get("attributes") or {}
        source = attributes.get(SIGNAL_KEY)
        name = span.get("name") or ""
        trace_id = str(span.get("trace_id") or "")
        if not source:
            return
        self.signal_traces.add(trace_id)
        if source == "harness_config":
            self.global_traces.add(trace_id)
            self.harness = {
                "version": str(attributes.get("harness.version") or ""),
                "system_prompt": str(attributes.get("harness.system_prompt") or ""),
                "tool_policy": str(attributes.get("harness.tool_policy") or ""),
            }
        elif source == "human_feedback":
            self.feedback.append({
                "id": str(attributes.get("feedback.id") or ""),
                "span_id": str(span.get("span_id") or ""),
                "trace_id": trace_id,
                "label": str(attributes.get("feedback.trace_label") or trace_id[:8]),
                "question": str(attributes.get("feedback.question") or ""),
                "summary": str(attributes.get("feedback.summary") or ""),
                "required": _json_list(attributes.get("feedback.required_observations")),
                "prohibited": _json_list(attributes.get("feedback.prohibited_claims")),
            })
        elif source == "llm_feedback":
            self.insights.append({
                "id": str(attributes.get("llm_feedback.id") or ""),
                "trace_id": trace_id,
                "label": str(attributes.get("llm_feedback.trace_label") or trace_id[:8]),
                "question": str(attributes.get("llm_feedback.question") or ""),
                "observations": _json_list(attributes.get("llm_feedback.observations")),
            })
        elif source == "generated_eval":
            self.evals.append({
                "id": str(attributes.get("eval.id") or ""),
                "trace_id": trace_id,
                "label": str(attributes.get("eval.trace_label") or trace_id[:8]),
                "title": str(attributes.get("eval.title") or ""),
                "expected": str(attributes.get("eval.expected_behavior") or ""),
            })
        elif source == "eval_gate" and name == "eval_gate.summary":
            self.global_traces.add(trace_id)
            self.gate_summary_span = str(span.get("span_id") or "")
            self.gate_summary = {key: int(attributes.get(f"eval_gate.{key}") or 0)
                                 for key in ("total", "passed", "failed")}
        elif source == "eval_gate":
            self.gate_rows.append({
                "eval_id": str(attributes.get("eval.id") or ""),
                "trace_id": trace_id,
                "label": str(attributes.get("eval.trace_label") or trace_id[:8]),
                "title": str(attributes.get("eval.title") or ""),
                "passed": _truthy(attributes.get("eval.passed")),
                "explanation": str(attributes.get("eval.explanation") or ""),
            })

    @property
    def gate(self) -> dict[str, int]:
        if self.gate_summary is not None:
            return self.gate_summary
        passed = sum(1 for row in self.gate_rows if row["passed"])
        return {"total": len(self.gate_rows), "passed": passed, "failed": len(self.gate_rows) - passed}


# -- matching signals to rules -----------------------------------------------------

def rule_scores(text: str) -> dict[str, int]:
    lower = (text or "").lower()
    return {
        rule_id: sum(1 for keyword in keywords if re.search(rf"(?<![a-z0-9]){re.escape(keyword)}(?![a-z0-9])", lower))
        for rule_id, keywords in RULE_KEYWORDS.items()
    }


def best_rule(text: str) -> Rule | None:
    """The rule the text is about: the most keyword hits, then the most subject words shared with the rule's
    title and sentence (ties: the order of rules.RULES); None when it mentions no keyword and shares fewer
    than three subject words with every rule."""
    scores = rule_scores(text)
    words = {stem(word) for word in key_words(text)}
    shared = {rule.id: len(words & {stem(word) for word in key_words(f"{rule.title} {rule.sentence}")}) for rule in RULES}
    best = max(RULES, key=lambda rule: (scores.get(rule.id, 0), shared[rule.id], -RULES.index(rule)))
    return best if scores.get(best.id, 0) > 0 or shared[best.id] >= 3 else None


def stated_in(rule_text: str, harness_text: str) -> str:
    """The harness sentence that states the rule in other words: it shares at least three subject words with
    the rule, and at least half of its own subject words are the rule's ("" when none does)."""
    wanted = {stem(word) for word in key_words(rule_text)}
    for sentence in re.split(r"(?<=[.!?])\s+|\n+|\",\s*\"", harness_text or ""):
        sentence = sentence.strip(' -"[]{}')
        words = {stem(word) for word in key_words(sentence)}
        shared = wanted & words
        if len(shared) >= 3 and len(shared) * 2 >= len(words):
            return sentence
    return ""


@dataclass
class Case:
    """One harness rule and the evidence that points at it."""

    rule: Rule
    present: bool
    stated_as: str = ""  # the harness sentence that states the rule in other words, if any
    failing_rows: list[dict] = field(default_factory=list)
    passing_rows: list[dict] = field(default_factory=list)
    feedback: list[dict] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)
    insights: list[tuple[dict, str]] = field(default_factory=list)

    @property
    def is_failure_mode(self) -> bool:
        return bool(self.failing_rows or self.feedback or self.evals)

    @property
    def needs_change(self) -> bool:
        return self.is_failure_mode and not (self.present and not self.failing_rows)

    @property
    def classification(self) -> str:
        return "present but not reliably followed" if self.present else "missing requirement"

    @property
    def sort_key(self) -> tuple:
        return (-len(self.failing_rows), -(len(self.feedback) + len(self.evals)), -len(self.insights),
                RULES.index(self.rule))

    def citations(self) -> str:
        ids = ([f"[gate:{eval_id}]" for eval_id in _eval_ids(self.failing_rows)]
               + [f"[feedback:{item['id']}]" for item in self.feedback if item.get("id")]
               + [f"[eval:{item['id']}]" for item in self.evals if item.get("id")])
        return " ".join(dict.fromkeys(ids))

    def evidence_text(self) -> str:
        parts = []
        if self.failing_rows:
            parts.append(f"{len(self.failing_rows)} failing gate row(s) ({_labels(self.failing_rows)})")
        if self.feedback:
            parts.append(f"{len(self.feedback)} human feedback ({_labels(self.feedback)})")
        if self.evals:
            parts.append(f"{len(self.evals)} eval definition(s)")
        if self.insights:
            parts.append(f"{len(self.insights)} LLM observation(s)")
        if self.passing_rows:
            parts.append(f"{len(self.passing_rows)} passing gate row(s)")
        return ", ".join(parts) or "none"


@dataclass
class Diagnosis:
    reading: Reading
    cases: list[Case]
    uncovered_feedback: list[dict]
    uncovered_rows: list[dict]

    @property
    def changes(self) -> list[Case]:
        return [case for case in self.cases if case.needs_change]


def diagnose(reading: Reading) -> Diagnosis:
    harness_text = "\n".join([reading.harness.get("system_prompt", ""), reading.harness.get("tool_policy", "")])
    cases = {}
    for rule in RULES:
        stated = "" if rule.is_on(harness_text) else stated_in(rule.sentence, harness_text)
        cases[rule.id] = Case(rule=rule, present=rule.is_on(harness_text) or bool(stated), stated_as=stated)
    evals_by_id = {item["id"]: item for item in reading.evals}
    uncovered_feedback: list[dict] = []
    uncovered_rows: list[dict] = []
    rule_of_trace: dict[str, Rule | None] = {}
    for item in reading.feedback:
        rule = best_rule(" ".join([item["question"], item["summary"], *item["required"], *item["prohibited"]]))
        rule_of_trace.setdefault(item["trace_id"], rule)
        if rule is None:
            uncovered_feedback.append(item)
        else:
            cases[rule.id].feedback.append(item)

    def about(trace_id: str, text: str) -> Rule | None:
        # An eval or gate row is about what the feedback on its trace is about; else its own words decide.
        if trace_id in rule_of_trace:
            return rule_of_trace[trace_id]
        return best_rule(text)

    for item in reading.evals:
        rule = about(item["trace_id"], " ".join([item["title"], item["expected"]]))
        if rule is not None:
            cases[rule.id].evals.append(item)
    for row in reading.gate_rows:
        scored = evals_by_id.get(row["eval_id"], {})
        rule = about(scored.get("trace_id") or row["trace_id"],
                     " ".join([row["title"], scored.get("title", ""), scored.get("expected", "")]))
        if rule is None:
            if not row["passed"]:
                uncovered_rows.append(row)
            continue
        (cases[rule.id].passing_rows if row["passed"] else cases[rule.id].failing_rows).append(row)
    for item in reading.insights:
        for observation in item["observations"]:
            rule = best_rule(observation)
            if rule is not None:
                cases[rule.id].insights.append((item, observation))
    ranked = sorted(cases.values(), key=lambda case: case.sort_key)
    return Diagnosis(reading=reading, cases=ranked, uncovered_feedback=uncovered_feedback,
                     uncovered_rows=uncovered_rows)


# -- the report ---------------------------------------------------------------------

@dataclass
class Recommendation:
    title: str
    kind: str  # add_prompt_sentence, enforce_existing_rule, new_requirement, regression_suite
    why: str
    impact: str
    confidence: str
    effort: str
    evidence: str
    validation: str
    case: Case | None = None
    evidence_ids: dict[str, list[str]] = field(default_factory=dict)
    cites: str = ""  # the citations, in the syntax the report prompt asks for ([feedback:ID] ...)


def recommendations(diagnosis: Diagnosis) -> list[Recommendation]:
    reading = diagnosis.reading
    recs: list[Recommendation] = []
    for case in diagnosis.changes:
        evals = _eval_ids(case.failing_rows + case.passing_rows) or [item["id"] for item in case.evals]
        validation = (f"Re-run {', '.join(f'`{eval_id}`' for eval_id in evals)} on the next harness version; "
                      "each must pass." if evals else "Add an eval for this rule before promoting the next version.")
        if case.present:
            title = f"Enforce the existing rule: {case.rule.title}"
            kind = "enforce_existing_rule"
            stated = f" (\"{_short(case.stated_as, 160)}\")" if case.stated_as else ""
            why = (f"The harness already states this rule{stated}, yet the runs do not follow it: state it precisely "
                   "and make it a checked step, not only an instruction.")
            effort = "Medium"
        else:
            title = f"Add to the prompt: {case.rule.title}"
            kind = "add_prompt_sentence"
            why = "Neither the prompt nor the tool policy states this rule, and the analyst makes the mistake it prevents."
            effort = "Low"
        recs.append(Recommendation(
            title=title, kind=kind, why=why,
            impact="High" if case.failing_rows else "Medium",
            confidence="High" if case.failing_rows and (case.feedback or case.evals) else "Medium",
            effort=effort, evidence=case.evidence_text(), validation=validation, case=case, cites=case.citations(),
            evidence_ids={
                "failing_gate_rows": _eval_ids(case.failing_rows),
                "human_feedback": [item["id"] for item in case.feedback],
                "generated_evals": [item["id"] for item in case.evals],
            },
        ))
    for item in diagnosis.uncovered_feedback:
        rows = [row for row in diagnosis.uncovered_rows if row["trace_id"] == item["trace_id"]]
        recs.append(Recommendation(
            title=f"Write a requirement for: {_first_sentence(item['summary']) or item['question']}",
            kind="new_requirement",
            why="Human feedback names a mistake that no rule in the current harness addresses.",
            impact="High" if rows else "Medium", confidence="Medium", effort="Medium",
            evidence=f"human feedback ({item['label']})" + (f", {len(rows)} failing gate row(s)" if rows else ""),
            validation=(f"Re-run {', '.join(f'`{eval_id}`' for eval_id in _eval_ids(rows))}." if rows
                        else "Add an eval from this feedback."),
            cites=" ".join([f"[feedback:{item['id']}]"] + [f"[gate:{eval_id}]" for eval_id in _eval_ids(rows)]
                           + [f"[eval:{e['id']}]" for e in reading.evals if e["trace_id"] == item["trace_id"]]),
            evidence_ids={"failing_gate_rows": _eval_ids(rows), "human_feedback": [item["id"]], "generated_evals": []},
        ))
    covered_rows = {row["eval_id"] for item in diagnosis.uncovered_feedback for row in diagnosis.uncovered_rows
                    if row["trace_id"] == item["trace_id"]}
    for row in diagnosis.uncovered_rows:
        if row["eval_id"] in covered_rows:
            continue
        recs.append(Recommendation(
            title=f"Fix the failing eval: {row['title'] or row['eval_id']}",
            kind="new_requirement",
            why="A gate row fails for a reason no rule in the current harness addresses.",
            impact="High", confidence="Medium", effort="Medium", evidence=f"failing gate row ({row['label']})",
            validation=f"Re-run `{row['eval_id']}`.", cites=f"[gate:{row['eval_id']}]",
            evidence_ids={"failing_gate_rows": [row["eval_id"]], "human_feedback": [], "generated_evals": []},
        ))
    eval_count = len(reading.evals) or reading.gate["total"]
    recs.append(Recommendation(
        title="Keep the approved evals as the regression suite",
        kind="regression_suite",
        why=f"The {eval_count} eval definition(s) encode the reviewers' expectations; the next harness must pass "
            "them case by case before it is promoted.",
        impact="Medium", confidence="High", effort="Low",
        evidence=f"{eval_count} eval definition(s), gate {reading.gate['passed']}/{reading.gate['total']} passed",
        validation="Run the whole suite against the candidate and compare with this baseline row by row.",
        cites=f"[span:{reading.gate_summary_span}]" if reading.gate_summary_span else "",
        evidence_ids={"failing_gate_rows": [], "human_feedback": [], "generated_evals": [e["id"] for e in reading.evals]},
    ))
    return recs


def build_report(reading: Reading) -> str:
    diagnosis = diagnose(reading)
    recs = recommendations(diagnosis)
    sections = [
        "_Offline stand-in HALO agent: this report was assembled by readable rules from the spans read "
        "through HALO's trace tools._",
        _executive_summary(diagnosis),
        _top_three(recs),
        _ranked_table(recs),
        _diagnosis_section(diagnosis),
        _detailed(diagnosis, recs),
        _insights(diagnosis),
        _machine_readable(diagnosis, recs),
    ]
    return "\n\n".join(sections).strip() + "\n"


def _executive_summary(diagnosis: Diagnosis) -> str:
    reading = diagnosis.reading
    gate = reading.gate
    verdict = "passed" if gate["failed"] == 0 and gate["total"] > 0 else ("failed" if gate["failed"] else "did not run")
    version = reading.harness.get("version") or "unknown"
    strengths = [case.rule.title for case in diagnosis.cases if case.present]
    passing = [row["title"] or row["eval_id"] for row in reading.gate_rows if row["passed"]]
    gaps = [f"{case.rule.title} ({case.classification})" for case in diagnosis.changes]
    gaps += [_first_sentence(item["summary"]) for item in diagnosis.uncovered_feedback]
    lines = [
        "## Executive summary",
        "",
        f"Harness `{version}` was analysed over {reading.run_traces} execution trace(s) and "
        f"{len(reading.feedback)} human feedback, {len(reading.insights)} LLM insight, {len(reading.evals)} eval "
        f"definition and {len(reading.gate_rows)} gate row span(s).",
        "",
        f"- **Eval gate: {verdict}** — {gate['passed']} of {gate['total']} passed, {gate['failed']} failed.",
        "- **Already working:** " + ("; ".join(
            [f"the prompt already states: {title}" for title in strengths] + [f"passes \"{t}\"" for t in passing[:3]]
        ) or "no gate row passes yet and no known rule is stated in the prompt") + ".",
        "- **Highest-value gaps:** " + ("; ".join(gaps[:4]) or "none found in the feedback, evals and gate rows") + ".",
    ]
    return "\n".join(lines)


def _top_three(recs: list[Recommendation]) -> str:
    lines = ["## Top 3 changes to implement first", ""]
    for number, rec in enumerate(recs[:3], start=1):
        lines.append(f"{number}. **{rec.title}.** {rec.why}")
        if rec.kind == "add_prompt_sentence" and rec.case is not None:
            lines.append(f"   Add this sentence to the system prompt: \"{rec.case.rule.sentence}\"")
        elif rec.kind == "enforce_existing_rule" and rec.case is not None and rec.case.stated_as:
            lines.append(f"   Restate it precisely in the system prompt: \"{rec.case.rule.sentence}\"")
        lines.append(f"   Evidence: {rec.evidence}." + (f" {rec.cites}" if rec.cites else ""))
    return "\n".join(lines)


def _ranked_table(recs: list[Recommendation]) -> str:
    lines = [
        "## Ranked recommendation table",
        "",
        "| Rank | Recommendation | Impact | Confidence | Implementation effort | Evidence | Validation |",
        "| ---: | --- | --- | --- | --- | --- | --- |",
    ]
    for rank, rec in enumerate(recs, start=1):
        evidence = f"{rec.evidence} {rec.cites}".strip()
        cells = [str(rank), rec.title, rec.impact, rec.confidence, rec.effort, evidence, rec.validation]
        lines.append("| " + " | ".join(_cell(cell) for cell in cells) + " |")
    return "\n".join(lines)


def _diagnosis_section(diagnosis: Diagnosis) -> str:
    lines = ["## Supporting diagnosis and evidence", ""]
    modes = [case for case in diagnosis.cases if case.is_failure_mode]
    for case in modes:
        status = case.classification
        if case.present and not case.failing_rows:
            status = "present and followed in the gate (no failing row)"
        lines.append(f"- **{case.rule.title}** — {status}. Evidence: {case.evidence_text()}.")
        for row in case.failing_rows[:3]:
            lines.append(f"  - Gate row `{row['eval_id']}` on {row['label']} failed: {_short(row['explanation'], 200)}")
        for item in case.feedback[:3]:
            lines.append(f"  - Human feedback on {item['label']}: {_short(item['summary'], 200)}")
    for item in diagnosis.uncovered_feedback:
        lines.append(f"- **{_first_sentence(item['summary']) or item['question']}** — missing requirement "
                     f"(no rule in the harness covers it). Evidence: human feedback on {item['label']}.")
    for row in diagnosis.uncovered_rows:
        lines.append(f"- **{row['title'] or row['eval_id']}** — failing gate row on {row['label']} that no harness "
                     f"rule covers: {_short(row['explanation'], 200)}")
    if not modes and not diagnosis.uncovered_feedback and not diagnosis.uncovered_rows:
        lines.append("- No recurring failure mode: no failing gate row and no human feedback points at a gap.")
    if diagnosis.reading.error_spans:
        lines.append(f"- **Runtime errors** — implementation/observability defect: {diagnosis.reading.error_spans} "
                     "span(s) ended with STATUS_CODE_ERROR. Evidence: execution traces.")
    return "\n".join(lines)


def _detailed(diagnosis: Diagnosis, recs: list[Recommendation]) -> str:
    to_add = [rec.case for rec in recs if rec.kind == "add_prompt_sentence" and rec.case is not None]
    to_enforce = [rec.case for rec in recs if rec.kind == "enforce_existing_rule" and rec.case is not None]
    new = [rec for rec in recs if rec.kind == "new_requirement"]
    lines = ["## Detailed recommendations", "", "### Behavior contract", "", "#### Prompt", ""]
    if to_add:
        lines.append("Add these sentences to the system prompt, in this order (each quoted verbatim):")
        lines.append("")
        for rank, case in enumerate(to_add, start=1):
            lines.append(f"{rank}. Rule `{case.rule.id}` ({case.rule.title}; {case.evidence_text()}):")
            lines.append("")
            lines.append(f"   > {case.rule.sentence}")
            lines.append("")
    for case in to_enforce:
        if not case.stated_as:
            lines.append(f"- The prompt already states rule `{case.rule.id}` ({case.rule.title}); keep it as written.")
            continue
        lines.append(f"- The harness states rule `{case.rule.id}` ({case.rule.title}) only in general terms "
                     f"(\"{_short(case.stated_as, 160)}\"), and the runs do not follow it; restate it precisely:")
        lines.append("")
        lines.append(f"  > {case.rule.sentence}")
        lines.append("")
    for rec in new:
        lines.append(f"- {rec.title} (no existing rule covers it; {rec.evidence}).")
    if not (to_add or to_enforce or new):
        lines.append("No prompt change is needed: no failure mode points at a missing instruction.")
    lines += ["", "#### Skills", "",
              "No new skill is needed; the changes above are instructions and checks on the existing analyst.",
              "", "### Runtime implementation", "", "#### Tools", ""]
    hinted = to_add + to_enforce
    if hinted:
        lines += [f"- For `{case.rule.id}`: {RULE_TOOL_HINTS.get(case.rule.id, 'read the primary source first')}."
                  for case in hinted]
    else:
        lines.append("No tool change is needed.")
    lines += ["", "#### Control flow", ""]
    if to_enforce:
        lines += [f"- Before answering, check the draft against rule `{case.rule.id}` and revise it when the rule "
                  "is not applied; the rule is stated but not reliably followed." for case in to_enforce]
    lines.append("- Before the final answer, re-read the required observations of the reviewers' feedback that "
                 "applies to the question and make sure none of the prohibited claims appears.")
    lines += ["", "#### Routing", "", "No routing change: one analyst agent answers every question.",
              "", "### Output contract", "", "#### Artifact schema", "",
              "Keep the six required artifacts; each claim that applies a rule above should cite the file it "
              "relies on in `citations.json` and `evidence_table.csv`.",
              "", "### Observability and evals", "", "#### Observability", "",
              f"The context held {diagnosis.reading.run_traces} execution trace(s) with "
              f"{diagnosis.reading.total_spans} spans in total; record the harness version and which rules the "
              "answer applied on each run so the next gate can be compared row by row.",
              "", "#### Evals", ""]
    failing = [row for row in diagnosis.reading.gate_rows if not row["passed"]]
    if failing:
        lines.append("These gate rows fail now and must pass on the next harness version: "
                     + ", ".join(f"`{row['eval_id']}` ({row['label']})" for row in failing) + ".")
    else:
        lines.append("Every gate row passes; keep them all as regression tests.")
    lines.append(f"Keep all {len(diagnosis.reading.evals)} eval definition(s) in the approved regression suite.")
    return "\n".join(lines)


def _insights(diagnosis: Diagnosis) -> str:
    reading = diagnosis.reading
    gate = reading.gate
    traces = (f"{reading.run_traces} agent execution trace(s) and {reading.total_spans} spans in the context; "
              f"{reading.error_spans} error span(s).")
    if reading.subagent_answers:
        traces += " Subagent: " + _short(reading.subagent_answers[0], 400)
    feedback = "; ".join(f"{item['label']}: {_short(item['summary'], 140)}" for item in reading.feedback[:6])
    insights = "; ".join(f"{item['label']}: {_short(item['observations'][0], 120)}"
                         for item in reading.insights[:4] if item["observations"])
    evals = "; ".join(_short(item["title"], 100) for item in reading.evals[:7])
    failing = [row["title"] or row["eval_id"] for row in reading.gate_rows if not row["passed"]]
    gate_text = f"{gate['total']} total, {gate['passed']} passed, {gate['failed']} failed."
    if failing:
        gate_text += " Failing: " + "; ".join(_short(title, 100) for title in failing[:5]) + "."
    present = [case.rule.title for case in diagnosis.cases if case.present]
    missing = [case.rule.title for case in diagnosis.changes if not case.present]
    harness = f"Version `{reading.harness.get('version') or 'unknown'}`. "
    harness += ("States: " + "; ".join(present) + ". ") if present else "States none of the known rules. "
    harness += ("Missing: " + "; ".join(missing) + ".") if missing else ""
    rows = [
        ("Traces", traces),
        ("Human feedback", f"{len(reading.feedback)} item(s). " + feedback if feedback else "No human feedback."),
        ("LLM feedback", f"{len(reading.insights)} insight(s). " + insights if insights else "No LLM insights."),
        ("Generated evals", f"{len(reading.evals)} definition(s): " + evals if evals else "No eval definitions."),
        ("Eval-gate results", gate_text),
        ("Harness config", harness.strip()),
    ]
    lines = ["## Insights by feedback source", "", "| Feedback source | Key insights |", "| --- | --- |"]
    lines += [f"| {source} | {_cell(text)} |" for source, text in rows]
    return "\n".join(lines)


def _machine_readable(diagnosis: Diagnosis, recs: list[Recommendation]) -> str:
    gate = diagnosis.reading.gate
    payload = {
        "top_priorities": [
            {
                "rank": rank,
                "title": rec.title,
                "kind": rec.kind,
                "rule_id": rec.case.rule.id if rec.case else None,
                "classification": rec.case.classification if rec.case else (
                    "missing requirement" if rec.kind == "new_requirement" else "regression coverage"),
                "prompt_sentence": rec.case.rule.sentence if rec.kind == "add_prompt_sentence" and rec.case else None,
                "impact": rec.impact,
                "confidence": rec.confidence,
                "effort": rec.effort,
                "evidence": rec.evidence_ids,
                "validation": rec.validation,
            }
            for rank, rec in enumerate(recs, start=1)
        ],
        "eval_gate": {**gate, "gate_passed": gate["failed"] == 0 and gate["total"] > 0},
        "harness_version": diagnosis.reading.harness.get("version") or None,
    }
    return "## Machine-readable summary\n\n```json\n" + json.dumps(payload, indent=2, ensure_ascii=False) + "\n```"


def _eval_ids(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(row["eval_id"] for row in rows if row.get("eval_id")))


def _labels(items: list[dict]) -> str:
    return ", ".join(dict.fromkeys(item["label"] for item in items))


def _short(text: str, limit: int) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _first_sentence(text: str) -> str:
    text = " ".join((text or "").split())
    match = re.match(r"(.+?[.!?])(?:\s|$)", text)
    return _short(match.group(1) if match else text, 140).rstrip(".")


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")
