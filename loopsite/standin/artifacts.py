"""The six output artifacts (plus the claim audit input) and the shell command that writes them."""

from __future__ import annotations

import csv
import io
import json

from .evidence import cite
from .findings import Analysis, Claim

ARTIFACTS = (
    "summary_answer.md",
    "investment_memo.md",
    "risk_register.json",
    "open_questions.md",
    "citations.json",
    "evidence_table.csv",
)
CLAIM_AUDIT_INPUT = "claim_audit_input.json"
HEREDOC_END = "STANDIN_EOF"
WRITE_PREFIX = "mkdir -p outputs && cat > outputs/summary_answer.md"
RISK_SECTIONS = ("Financial", "Legal", "Customer concentration")


def numbered_claims(analysis: Analysis) -> list[tuple[str, Claim]]:
    return [(f"C-{index:03d}", claim) for index, claim in enumerate(analysis.claims, start=1)]


def summary_answer(analysis: Analysis) -> str:
    lines = ["# Summary Answer", "", analysis.lead, ""]
    if analysis.supporting:
        lines += ["## Supporting evidence", ""]
        lines += [f"- {fact.text} {cite(fact.source)}" for fact in analysis.supporting]
        lines.append("")
    return "\n".join(lines)


def investment_memo(analysis: Analysis) -> str:
    lines = [f"# Investment Memo: {analysis.question.text}", "", "## Bottom Line", ""]
    lines += [f"- {finding.lead}" for finding in analysis.findings] or [f"- {analysis.lead}"]
    lines += ["", "## Evidence", ""]
    lines += [f"- {claim.text} {cite(*claim.sources)}" for claim in analysis.claims]
    lines += ["", "## Risks", ""]
    lines += [f"- **{risk.severity}** ({risk.category}): {risk.described} {cite(*risk.evidence)}"
              for risk in analysis.risks]
    lines += ["", "## Open Questions", ""]
    lines += [f"- {claim.text} {cite(*claim.sources)}" for claim in analysis.open_questions]
    lines += ["", "## Diligence View", ""]
    top = analysis.risks[0] if analysis.risks else None
    if top:
        lines.append(f"- Most severe issue: {top.risk} ({top.severity}).")
    lines.append(f"- Sources read: {', '.join(f'`{path}`' for path in analysis.evidence.files)}.")
    return "\n".join(lines) + "\n"


def risk_register(analysis: Analysis) -> list[dict]:
    return [
        {
            "id": f"R-{index:03d}",
            "risk": risk.risk,
            "severity": risk.severity,
            "category": risk.category,
            "rationale": risk.rationale,
            "evidence": list(risk.evidence),
            "open_questions": risk.open_questions,
        }
        for index, risk in enumerate(analysis.risks, start=1)
    ]


def open_questions(analysis: Analysis) -> str:
    lines = ["# Open Questions", ""]
    lines += [f"- {claim.text} {cite(*claim.sources)}" for claim in analysis.open_questions]
    return "\n".join(lines) + "\n"


def citations(analysis: Analysis) -> list[dict]:
    return [{"claim_id": claim_id, "claim": claim.text, "sources": list(claim.sources)}
            for claim_id, claim in numbered_claims(analysis)]


def evidence_table(analysis: Analysis) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["claim_id", "claim", "sources"])
    for claim_id, claim in numbered_claims(analysis):
        writer.writerow([claim_id, claim.text, "; ".join(claim.sources)])
    return buffer.getvalue()


def claim_audit_input(analysis: Analysis) -> list[dict]:
    """The evidence check's input: the claims of citations.json, one for one. The app checks a run's
    evidence from that file (runs/runner.py, claims_from_citations), so the number of supported claims the
    answer reports is the number the run's evidence-coverage check shows. (Open questions are not claims
    the answer makes; they have their own file.)"""
    return [{"claim": row["claim"], "claim_type": claim.claim_type, "citations": row["sources"]}
            for row, (_, claim) in zip(citations(analysis), numbered_claims(analysis))]


def artifact_texts(analysis: Analysis) -> dict[str, str]:
    return {
        "summary_answer.md": summary_answer(analysis),
        "investment_memo.md": investment_memo(analysis),
        "risk_register.json": json.dumps(risk_register(analysis), indent=2, ensure_ascii=False) + "\n",
        "open_questions.md": open_questions(analysis),
        "citations.json": json.dumps(citations(analysis), indent=2, ensure_ascii=False) + "\n",
        "evidence_table.csv": evidence_table(analysis),
        CLAIM_AUDIT_INPUT: json.dumps(claim_audit_input(analysis), indent=2, ensure_ascii=False) + "\n",
    }


def write_command(analysis: Analysis) -> str:
    """One shell command: `cat > outputs/<name> <<'STANDIN_EOF'` per file (quoted heredocs expand nothing)."""
    parts = ["mkdir -p outputs"]
    for name, text in artifact_texts(analysis).items():
        body = "\n".join(line for line in text.rstrip("\n").split("\n") if line != HEREDOC_END)
        parts.append(f"cat > outputs/{name} <<'{HEREDOC_END}'\n{body}\n{HEREDOC_END}")
    command = " && ".join(parts[:2]) + "\n" + "\n".join(parts[2:])
    return command + "\necho \"wrote " + " ".join(artifact_texts(analysis)) + "\"\n"
