"""The two runtime validators, run as the agent runs them: `python <tool>.py ...`."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from runs.agent_tools import TOOLS_DIR, tool_sources

REQUIRED = [
    "summary_answer.md", "investment_memo.md", "risk_register.json",
    "open_questions.md", "citations.json", "evidence_table.csv",
]


def run_tool(name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TOOLS_DIR / name), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=30)


@pytest.fixture
def workspace(tmp_path):
    """A sandbox-like workspace: data/ with two files, empty outputs/."""
    data = tmp_path / "data"
    (data / "financials").mkdir(parents=True)
    (data / "financials" / "p_and_l.csv").write_text("metric,value\nburn,2.9\n")
    (data / "board_deck.md").write_text("# Board\n")
    (tmp_path / "outputs").mkdir()
    (tmp_path / "secret.txt").write_text("outside the dataroom")
    return tmp_path


def write_good_outputs(outputs: Path) -> None:
    (outputs / "summary_answer.md").write_text("# Summary\nBurn is $2.9M.\n")
    (outputs / "investment_memo.md").write_text("# Memo\n")
    (outputs / "risk_register.json").write_text(json.dumps(
        [{"id": "R-001", "risk": "Runway", "evidence": ["financials/p_and_l.csv", "data/board_deck.md"]}]))
    (outputs / "open_questions.md").write_text("- Cash balance?\n")
    (outputs / "citations.json").write_text(json.dumps(
        [{"claim_id": "C-001", "claim": "Burn is $2.9M", "sources": ["financials/p_and_l.csv"]}]))
    (outputs / "evidence_table.csv").write_text("claim_id,claim,sources\nC-001,Burn,financials/p_and_l.csv\n")


def contract(workspace: Path) -> dict:
    proc = run_tool("validate_output_contract.py", "--outputs", "outputs", "--dataset-root", "data",
                    "--output", "outputs/output_contract_validation.json", cwd=workspace)
    assert proc.returncode == 0, proc.stderr
    written = json.loads((workspace / "outputs" / "output_contract_validation.json").read_text())
    assert json.loads(proc.stdout) == written
    return written


def coverage(workspace: Path, claims) -> tuple[subprocess.CompletedProcess, dict | None]:
    (workspace / "outputs" / "claims.json").write_text(json.dumps(claims))
    proc = run_tool("check_evidence_coverage.py", "--claims-json", "outputs/claims.json", "--dataset-root", "data",
                    "--output", "outputs/evidence_coverage.json", cwd=workspace)
    path = workspace / "outputs" / "evidence_coverage.json"
    return proc, json.loads(path.read_text()) if path.exists() else None


def test_tool_sources_are_the_two_validators():
    assert sorted(tool_sources()) == ["check_evidence_coverage.py", "validate_output_contract.py"]


def test_validators_use_only_the_standard_library():
    for name, source in tool_sources().items():
        imports = {line.split()[1].split(".")[0] for line in source.splitlines()
                   if line.startswith(("import ", "from "))}
        assert imports <= {"argparse", "csv", "json", "sys", "pathlib"}, (name, imports)


def test_contract_passes_for_complete_outputs(workspace):
    write_good_outputs(workspace / "outputs")
    result = contract(workspace)
    assert result == {"passed": True, "issues": [], "required_files": REQUIRED}


def test_contract_reports_every_missing_artifact(workspace):
    result = contract(workspace)
    assert result["passed"] is False
    assert [issue["file"] for issue in result["issues"]] == REQUIRED
    assert {issue["issue"] for issue in result["issues"]} == {"missing required artifact"}


def test_contract_reports_empty_and_malformed_artifacts(workspace):
    outputs = workspace / "outputs"
    write_good_outputs(outputs)
    (outputs / "open_questions.md").write_text("  \n")
    (outputs / "citations.json").write_text("[{not json")
    (outputs / "risk_register.json").write_text(json.dumps({"risks": []}))
    (outputs / "evidence_table.csv").write_text("id,text\n1,x\n")
    issues = {(i["file"], i["issue"].split(":")[0]) for i in contract(workspace)["issues"]}
    assert issues == {
        ("open_questions.md", "empty required artifact"),
        ("citations.json", "malformed JSON"),
        ("risk_register.json", "must be a JSON list"),
        ("evidence_table.csv", "must include claim_id, claim, and sources columns"),
    }


def test_contract_checks_cited_files_exist_inside_the_dataroom(workspace):
    outputs = workspace / "outputs"
    write_good_outputs(outputs)
    (outputs / "risk_register.json").write_text(json.dumps([
        {"risk": "a", "evidence": ["financials/missing.csv"]},
        {"risk": "b"},
        {"risk": "c", "evidence": ["../secret.txt"]},
    ]))
    (outputs / "citations.json").write_text(json.dumps([
        {"claim": "x", "sources": []},
        {"claim": "y", "sources": ["financials"]},
    ]))
    issues = contract(workspace)["issues"]
    assert issues == [
        {"file": "risk_register.json", "risk_index": 0, "issue": "missing evidence file(s): financials/missing.csv"},
        {"file": "risk_register.json", "risk_index": 1, "issue": "risk lacks evidence"},
        {"file": "risk_register.json", "risk_index": 2, "issue": "missing evidence file(s): ../secret.txt"},
        {"file": "citations.json", "citation_index": 0, "issue": "citation lacks sources"},
        {"file": "citations.json", "citation_index": 1, "issue": "missing source file(s): financials"},
    ]


def test_coverage_sorts_claims_into_supported_unsupported_and_uncited(workspace):
    proc, result = coverage(workspace, [
        {"claim": "Burn is $2.9M", "claim_type": "metric", "citations": ["data/financials/p_and_l.csv"]},
        {"claim": "NRR is 120%", "citations": ["financials/nrr.csv"]},
        {"claim": "Escapes", "citations": ["../secret.txt"]},
        {"claim": "No source"},
    ])
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == result
    assert result["passed"] is False
    assert result["supported_claims"] == [
        {"claim": "Burn is $2.9M", "claim_type": "metric", "citations": ["financials/p_and_l.csv"]}]
    assert [c["claim"] for c in result["unsupported_claims"]] == ["NRR is 120%", "Escapes"]
    assert result["unsupported_claims"][0]["issue"] == "Missing cited file(s): financials/nrr.csv"
    assert result["missing_citations"] == [
        {"claim": "No source", "claim_type": "claim", "citations": [], "issue": "No citation provided."}]
    assert result["recommended_caveats"]


def test_coverage_passes_when_every_claim_cites_real_files(workspace):
    _, result = coverage(workspace, [{"claim": "Burn", "claim_type": "metric",
                                      "citations": ["financials/p_and_l.csv", "board_deck.md"]}])
    assert result["passed"] is True
    assert result["unsupported_claims"] == result["missing_citations"] == []
    assert set(result) == {"supported_claims", "unsupported_claims", "missing_citations",
                           "recommended_caveats", "passed"}


def test_coverage_fails_with_no_claims(workspace):
    _, result = coverage(workspace, [])
    assert result["passed"] is False
    assert "No claims" in result["recommended_caveats"][0]


def test_coverage_rejects_a_claims_file_that_is_not_a_list(workspace):
    proc, result = coverage(workspace, {"claim": "x"})
    assert proc.returncode == 2
    assert "JSON list" in proc.stderr
    assert result is None


def test_coverage_reports_a_missing_claims_file(workspace):
    proc = run_tool("check_evidence_coverage.py", "--claims-json", "outputs/none.json", cwd=workspace)
    assert proc.returncode == 2
    assert "not found" in proc.stderr
