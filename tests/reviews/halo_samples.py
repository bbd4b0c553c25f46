"""A small optimization context for the HALO tests, from the sample data and the seed's feedback.

Five runs of harness v001 (the sample questions the seed uses), each with three hand-made
spans in the exporter's shape (agent, model response, shell tool call); the seed's human
feedback for those questions; two LLM insights; five eval definitions; and a gate where the
parent-account concentration row and the SOC 2 row fail.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

SAMPLE_DIR = Path(__file__).resolve().parents[2] / "runs" / "sample"


def harness_config() -> dict:
    return json.loads((SAMPLE_DIR / "harness_v001.json").read_text(encoding="utf-8"))


def _hex(text: str, size: int) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:size]


QUESTIONS = [
    ("trace-01", "What do runway and burn tell us about near-term financing risk?"),
    ("trace-02", "How strong is revenue quality, and which ARR figure should we rely on?"),
    ("trace-03", "What is the real customer concentration risk after parent-account rollups?"),
    ("trace-04", "How ready is the company for enterprise security review?"),
    ("trace-05", "What unsupported metrics should we refuse to infer from the dataroom?"),
]
TRACE_IDS = {label: _hex(f"run-{label}", 32) for label, _ in QUESTIONS}
QUESTION_BY_LABEL = dict(QUESTIONS)


def _span(trace_id: str, span_id: str, parent: str, name: str, kind: str, start: str, end: str,
          attributes: dict) -> dict:
    return {
        "trace_id": trace_id,
        "span_id": span_id,
        "parent_span_id": parent,
        "trace_state": "",
        "name": name,
        "kind": "SPAN_KIND_CLIENT" if kind == "LLM" else "SPAN_KIND_INTERNAL",
        "start_time": start,
        "end_time": end,
        "status": {"code": "STATUS_CODE_OK", "message": ""},
        "resource": {"attributes": {"service.name": "financial-diligence-analyst", "service.version": "v001",
                                    "agent.config.version": "v001"}},
        "scope": {"name": "openai-agents-sdk", "version": "0.14.7"},
        "attributes": {
            **attributes,
            "inference.export.schema_version": 1,
            "inference.project_id": "loopsite",
            "inference.observation_kind": kind,
            "inference.agent_name": "Synthetic dataroom diligence analyst",
        },
    }


def run_span_lines() -> list[dict]:
    lines = []
    for number, (label, question) in enumerate(QUESTIONS, start=1):
        trace_id = TRACE_IDS[label]
        root, model, tool = (_hex(f"{label}-{part}", 16) for part in ("agent", "response", "tool"))
        minute = f"2026-11-26T07:{10 + number:02d}"
        lines += [
            _span(trace_id, model, root, "response", "LLM", f"{minute}:01.000000000Z", f"{minute}:03.500000000Z", {
                "openinference.span.kind": "LLM", "llm.provider": "openai", "llm.model_name": "gpt-5.5",
                "llm.input_messages": json.dumps([{"role": "user", "content": question}]),
                "inference.llm.model_name": "gpt-5.5", "inference.llm.input_tokens": 1200,
                "inference.llm.output_tokens": 300,
            }),
            _span(trace_id, tool, root, "exec_command", "TOOL", f"{minute}:04.000000000Z", f"{minute}:04.250000000Z", {
                "openinference.span.kind": "TOOL", "tool.name": "exec_command",
                "input.value": json.dumps({"cmd": "cat data/manifest.json"}), "output.value": "{\"files\": []}",
            }),
            _span(trace_id, root, "", "Synthetic dataroom diligence analyst", "AGENT", f"{minute}:00.000000000Z",
                  f"{minute}:30.000000000Z", {
                      "openinference.span.kind": "AGENT", "agent.name": "Synthetic dataroom diligence analyst",
                  }),
        ]
    return lines


def human_feedback() -> list[dict]:
    specs = {
        "trace-01": ("State both the 11-month runway and rising burn as financing risk, not just a generic red flag.",
                     ["Name the 11-month runway", "Tie burn to near-term financing pressure"],
                     ["Do not imply the company has more than 12 months of runway"], "financial_risk"),
        "trace-02": ("Use the controlled ARR bridge as the reliable figure and preserve the board-versus-finance "
                     "contradiction.",
                     ["Prefer finance ARR over board ARR", "Preserve the ARR contradiction"],
                     ["Do not silently reconcile the ARR gap"], "revenue_quality"),
        "trace-03": ("Roll concentration up to Northstar Holdings. Legal-entity framing understates the real dependency.",
                     ["Mention parent-account concentration", "Use account_hierarchy.csv"],
                     ["Do not stop at legal-entity concentration"], "customer_concentration"),
        "trace-04": ("Be exact about certification status: Type I is complete; Type II is still in progress.",
                     ["Distinguish Type I from Type II", "Treat sales FAQ as weaker evidence"],
                     ["Do not say SOC 2 is simply complete"], "security_readiness"),
    }
    return [
        {"feedback_id": f"human-{label}", "trace_id": TRACE_IDS[label], "trace_label": label,
         "question": QUESTION_BY_LABEL[label], "summary": summary, "theme": theme,
         "required_observations": required, "prohibited_claims": prohibited}
        for label, (summary, required, prohibited, theme) in specs.items()
    ]


def llm_insights() -> list[dict]:
    return [
        {"insight_id": "llm_insight_02", "trace_id": TRACE_IDS["trace-02"], "trace_label": "trace-02",
         "question": QUESTION_BY_LABEL["trace-02"],
         "observations": ["Leads with the board deck ARR of $43.0M and does not cite financials/arr_bridge.csv.",
                          "Cites 3 dataroom file(s) for its claims."]},
        {"insight_id": "llm_insight_05", "trace_id": TRACE_IDS["trace-05"], "trace_label": "trace-05",
         "question": QUESTION_BY_LABEL["trace-05"],
         "observations": ["Reports the 122% NRR management estimate as if it were official."]},
    ]


EVAL_SPECS = [
    ("eval-runway", "trace-01", "Runway and burn must be translated into near-term financing risk",
     "The answer states the 11-month runway and ties burn to near-term financing pressure."),
    ("eval-arr", "trace-02", "Revenue quality assessment must prefer finance-controlled ARR",
     "The answer relies on the finance-controlled ARR bridge and preserves the board ARR contradiction."),
    ("eval-concentration", "trace-03", "Customer concentration must be assessed after parent-account rollups",
     "The answer rolls legal entities up to parent accounts (Northstar Holdings) and does not stop at "
     "legal-entity concentration."),
    ("eval-soc2", "trace-04", "Enterprise security readiness must distinguish SOC 2 Type I from Type II",
     "The answer says SOC 2 Type I is complete and Type II is in progress, and treats the sales FAQ as weaker."),
    ("eval-metrics", "trace-05", "Unsupported metrics must be refused rather than inferred",
     "The answer marks official NRR and CAC payback unsupported; the 122% NRR is an unvalidated management estimate."),
]


def eval_definitions() -> list[dict]:
    return [
        {"eval_id": eval_id, "source_trace_id": TRACE_IDS[label], "source_trace_label": label, "title": title,
         "scoring_method": "hybrid", "expected_behavior": expected,
         "suggested_pass_example": f"Pass: {expected}", "suggested_fail_example": "Fail: the opposite."}
        for eval_id, label, title, expected in EVAL_SPECS
    ]


FAILING = {
    "eval-concentration": "Missing required observation: the answer reports the largest legal entity and never "
                          "rolls up to the parent account.",
    "eval-soc2": "Prohibited claim present: \"SOC 2 complete\".",
}


def gate_rows() -> list[dict]:
    return [
        {"eval_id": eval_id, "title": title, "trace_id": TRACE_IDS[label], "trace_label": label,
         "passed": eval_id not in FAILING, "score": 0.0 if eval_id in FAILING else 1.0,
         "explanation": FAILING.get(eval_id, "All assertions passed")}
        for eval_id, label, title, _ in EVAL_SPECS
    ]


def gate_summary() -> dict:
    rows = gate_rows()
    passed = sum(1 for row in rows if row["passed"])
    return {"total": len(rows), "passed": passed, "failed": len(rows) - passed}


def context_kwargs() -> dict:
    return {
        "run_span_lines": run_span_lines(),
        "harness_config": harness_config(),
        "human_feedback": human_feedback(),
        "llm_insights": llm_insights(),
        "eval_definitions": eval_definitions(),
        "gate_rows": gate_rows(),
        "gate_summary": gate_summary(),
    }
