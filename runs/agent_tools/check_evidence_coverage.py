#!/usr/bin/env python3
"""Audit whether drafted claims cite files that exist in the dataroom.

Usage (inside the sandbox):
    python data/tools/check_evidence_coverage.py --claims-json outputs/claims.json \
        --dataset-root data --output outputs/evidence_coverage.json

The claims file is a JSON list of objects with `claim`, `claim_type` and
`citations` (a list of dataroom-relative file names). The result, written to
--output and printed, has `supported_claims`, `unsupported_claims`,
`missing_citations`, `recommended_caveats` and `passed`.
"""

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Audit whether drafted claims cite existing dataroom files.")
    parser.add_argument("--claims-json", type=Path, required=True)
    parser.add_argument("--dataset-root", type=Path, default=Path("data"))
    parser.add_argument("--output", type=Path, default=Path("outputs/evidence_coverage.json"))
    args = parser.parse_args(argv)

    try:
        claims = json.loads(args.claims_json.read_text(encoding="utf-8"))
    except FileNotFoundError:
        print(f"error: claims file not found: {args.claims_json}", file=sys.stderr)
        return 2
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        print(f"error: claims file is not valid JSON: {exc}", file=sys.stderr)
        return 2
    if isinstance(claims, dict) and isinstance(claims.get("claims"), list):
        claims = claims["claims"]
    if not isinstance(claims, list):
        print("error: --claims-json must contain a JSON list of claim objects", file=sys.stderr)
        return 2

    result = check_evidence_coverage(claims, args.dataset_root)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))
    return 0


def check_evidence_coverage(claims: list, dataset_root: Path) -> dict:
    supported: list[dict] = []
    unsupported: list[dict] = []
    missing_citations: list[dict] = []

    for raw in claims:
        if not isinstance(raw, dict):
            raw = {"claim": str(raw)}
        claim = str(raw.get("claim") or "").strip()
        claim_type = str(raw.get("claim_type") or "claim")
        citations = [normalize_citation(item) for item in _as_list(raw.get("citations"))]
        citations = [item for item in citations if item]
        row = {"claim": claim, "claim_type": claim_type, "citations": citations}
        if not citations:
            missing_citations.append({**row, "issue": "No citation provided."})
            continue
        missing = [item for item in citations if not cited_file_exists(dataset_root, item)]
        if missing:
            unsupported.append({**row, "issue": f"Missing cited file(s): {', '.join(missing)}"})
        else:
            supported.append(row)

    caveats: list[str] = []
    if not claims:
        caveats.append("No claims were provided: list the material claims with their citations and rerun.")
    if unsupported or missing_citations:
        caveats.append("Add valid source filenames or mark unsupported claims as unknown before final answer.")
    return {
        "supported_claims": supported,
        "unsupported_claims": unsupported,
        "missing_citations": missing_citations,
        "recommended_caveats": caveats,
        "passed": bool(claims) and not unsupported and not missing_citations,
    }


def normalize_citation(value: object) -> str:
    """`data/financials/p_and_l.csv` and `` `./financials/p_and_l.csv` `` both mean financials/p_and_l.csv."""
    text = str(value or "").strip().strip("`'\"").strip()
    while text.startswith("./"):
        text = text[2:]
    return text.removeprefix("data/")


def cited_file_exists(dataset_root: Path, citation: str) -> bool:
    """True for a regular file inside the dataset root (no escaping with `..` or absolute paths)."""
    root = dataset_root.resolve()
    try:
        target = (root / citation).resolve()
    except (OSError, ValueError):
        return False
    return target.is_relative_to(root) and target.is_file()


def _as_list(value: object) -> list:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, str):
        return [part for part in value.replace(",", ";").split(";")]
    return [value]


if __name__ == "__main__":
    sys.exit(main())
