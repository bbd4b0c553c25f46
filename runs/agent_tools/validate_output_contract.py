#!/usr/bin/env python3
"""Check that the required output artifacts exist, are well formed and cite real files.

Usage (inside the sandbox):
    python data/tools/validate_output_contract.py --outputs outputs \
        --dataset-root data --output outputs/output_contract_validation.json

The result, written to --output and printed, has `passed`, `issues` (each with
`file` and `issue`, plus `risk_index` / `citation_index` where it applies) and
`required_files`.
"""

import argparse
import csv
import json
import sys
from pathlib import Path

REQUIRED_FILES = [
    "summary_answer.md",
    "investment_memo.md",
    "risk_register.json",
    "open_questions.md",
    "citations.json",
    "evidence_table.csv",
]
EVIDENCE_TABLE_COLUMNS = {"claim_id", "claim", "sources"}
_MISSING = object()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Validate diligence output artifacts before final answer.")
    parser.add_argument("--outputs", type=Path, default=Path("outputs"))
    parser.add_argument("--dataset-root", type=Path, default=Path("data"))
    parser.add_argument("--output", type=Path, default=Path("outputs/output_contract_validation.json"))
    args = parser.parse_args(argv)

    result = validate_output_contract(args.outputs, args.dataset_root)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))
    return 0


def validate_output_contract(outputs: Path, dataset_root: Path) -> dict:
    issues: list[dict] = []
    for filename in REQUIRED_FILES:
        path = outputs / filename
        if not path.is_file():
            issues.append({"file": filename, "issue": "missing required artifact"})
        elif not path.read_bytes().strip():
            issues.append({"file": filename, "issue": "empty required artifact"})

    risks = _read_json_list(outputs / "risk_register.json", issues)
    for index, risk in enumerate(risks):
        evidence = _as_list(risk.get("evidence")) if isinstance(risk, dict) else []
        if not evidence:
            issues.append({"file": "risk_register.json", "risk_index": index, "issue": "risk lacks evidence"})
            continue
        missing = [item for item in map(normalize_source, evidence) if not source_exists(dataset_root, item)]
        if missing:
            issues.append({
                "file": "risk_register.json",
                "risk_index": index,
                "issue": f"missing evidence file(s): {', '.join(missing)}",
            })

    citations = _read_json_list(outputs / "citations.json", issues)
    for index, citation in enumerate(citations):
        sources = _as_list(citation.get("sources")) if isinstance(citation, dict) else []
        if not sources:
            issues.append({"file": "citations.json", "citation_index": index, "issue": "citation lacks sources"})
            continue
        missing = [item for item in map(normalize_source, sources) if not source_exists(dataset_root, item)]
        if missing:
            issues.append({
                "file": "citations.json",
                "citation_index": index,
                "issue": f"missing source file(s): {', '.join(missing)}",
            })

    table = outputs / "evidence_table.csv"
    if table.is_file():
        try:
            with table.open(newline="", encoding="utf-8") as handle:
                header = next(csv.reader(handle), [])
        except (UnicodeDecodeError, csv.Error) as exc:
            issues.append({"file": "evidence_table.csv", "issue": f"unreadable CSV: {exc}"})
        else:
            columns = {column.strip() for column in header}
            if header and not EVIDENCE_TABLE_COLUMNS.issubset(columns):
                issues.append({"file": "evidence_table.csv", "issue": "must include claim_id, claim, and sources columns"})

    return {"passed": not issues, "issues": issues, "required_files": REQUIRED_FILES}


def _read_json_list(path: Path, issues: list[dict]) -> list:
    """The JSON list in `path`; a missing file gives [] (already reported), anything else an issue."""
    if not path.is_file():
        return []
    text = path.read_text(encoding="utf-8", errors="replace")
    if not text.strip():
        return []
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        issues.append({"file": path.name, "issue": f"malformed JSON: {exc}"})
        return []
    if not isinstance(value, list):
        issues.append({"file": path.name, "issue": "must be a JSON list"})
        return []
    return value


def normalize_source(value: object) -> str:
    text = str(value or "").strip().strip("`'\"").strip()
    while text.startswith("./"):
        text = text[2:]
    return text.removeprefix("data/")


def source_exists(dataset_root: Path, source: str) -> bool:
    """True for a regular file inside the dataset root (no escaping with `..` or absolute paths)."""
    if not source:
        return False
    root = dataset_root.resolve()
    try:
        target = (root / source).resolve()
    except (OSError, ValueError):
        return False
    return target.is_relative_to(root) and target.is_file()


def _as_list(value: object) -> list:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [item for item in value if str(item or "").strip()]
    if isinstance(value, str):
        return [part for part in value.split(";") if part.strip()]
    return [value]


if __name__ == "__main__":
    sys.exit(main())
