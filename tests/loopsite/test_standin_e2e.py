"""A real Agents SDK SandboxAgent answers the sample questions against the stand-in.

Harness v001 makes the seed's known mistakes; the same harness with the rule
sentences from loopsite/standin/rules.py appended does measurably better.
"""

import asyncio
import json
import re
import shutil
import sys
from pathlib import Path

import pytest

from loopsite.standin.rules import RULES
from runs.models import Harness
from runs.prompts import build_user_prompt

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "runs" / "sample"
TOOLS = ROOT / "runs" / "agent_tools"
ARTIFACTS = ["summary_answer.md", "investment_memo.md", "risk_register.json", "open_questions.md",
             "citations.json", "evidence_table.csv"]
QUESTIONS = json.loads((SAMPLE / "questions.json").read_text(encoding="utf-8"))["questions"]


def harness(with_rules: bool) -> Harness:
    config = json.loads((SAMPLE / "harness_v001.json").read_text(encoding="utf-8"))
    if with_rules:
        config["system_prompt"] += "\n\nDiligence rules:\n" + "\n".join(f"- {rule.sentence}" for rule in RULES)
    return Harness(**config)


@pytest.fixture
def dataroom(tmp_path, monkeypatch):
    """A staged copy of the sample dataroom with the validators in data/tools/."""
    staged = tmp_path / "dataroom"
    shutil.copytree(SAMPLE / "dataroom", staged)
    (staged / "tools").mkdir()
    for tool in ("check_evidence_coverage.py", "validate_output_contract.py"):
        shutil.copy(TOOLS / tool, staged / "tools" / tool)
    # The sandbox shell inherits this environment: make `python` this interpreter.
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent) + ":" + __import__("os").environ["PATH"])
    return staged


@pytest.fixture
def sdk(standin_server):
    """The stand-in's URL; the SDK's default client and tracing switch are put back afterwards."""
    from agents import set_tracing_disabled
    from agents.models import _openai_shared

    previous = _openai_shared.get_default_openai_client()
    yield standin_server
    _openai_shared.set_default_openai_client(previous)
    set_tracing_disabled(False)


async def _run(base_url: str, dataroom: Path, question: str, config: Harness) -> tuple[str, dict[str, str]]:
    from agents import Runner, set_default_openai_client, set_tracing_disabled
    from openai import AsyncOpenAI
    from agents.run import RunConfig
    from agents.sandbox import Manifest, SandboxAgent, SandboxPathGrant, SandboxRunConfig
    from agents.sandbox.entries import Dir, LocalDir
    from agents.sandbox.sandboxes import UnixLocalSandboxClient

    agent = SandboxAgent(
        name="Synthetic dataroom diligence analyst",
        model=config.agent_model,
        instructions=config.build_instructions(),
        default_manifest=Manifest(
            entries={"data": LocalDir(src=dataroom), "outputs": Dir()},
            extra_path_grants=(SandboxPathGrant(path=str(dataroom), read_only=True),),
        ),
    )
    set_tracing_disabled(True)
    # Made inside this event loop: an async client cannot outlive the loop it first ran in.
    set_default_openai_client(AsyncOpenAI(base_url=base_url, api_key="standin-test", max_retries=0),
                              use_for_tracing=False)
    client = UnixLocalSandboxClient()
    session = await client.create(manifest=agent.default_manifest)
    outputs: dict[str, str] = {}
    try:
        async with session:
            result = await Runner.run(
                agent, build_user_prompt(question, harness_version=config.version),
                run_config=RunConfig(sandbox=SandboxRunConfig(session=session)), max_turns=30,
            )
            for name in ARTIFACTS + ["evidence_coverage.json", "output_contract_validation.json"]:
                with await session.read(Path("outputs") / name) as handle:
                    outputs[name] = handle.read().decode("utf-8")
    finally:
        await client.delete(session)
    return str(result.final_output), outputs


def run_agent(base_url: str, dataroom: Path, question: str, *, with_rules: bool) -> tuple[str, dict[str, str]]:
    return asyncio.run(_run(base_url, dataroom, question, harness(with_rules)))


def first_money(text: str) -> str:
    return re.search(r"\$\d[\d.,]*M", text).group(0)


def test_the_agent_writes_six_cited_artifacts_and_passes_the_validators(sdk, dataroom):
    answer, outputs = run_agent(sdk, dataroom, QUESTIONS[1], with_rules=False)

    assert all(outputs[name].strip() for name in ARTIFACTS)
    risks = json.loads(outputs["risk_register.json"])
    assert risks and all({"id", "risk", "severity", "rationale", "evidence", "open_questions"} <= set(r) for r in risks)
    citations = json.loads(outputs["citations.json"])
    assert citations and all({"claim_id", "claim", "sources"} <= set(c) for c in citations)
    sources = {source for c in citations for source in c["sources"]} | {e for r in risks for e in r["evidence"]}
    assert sources and all((dataroom / source).is_file() for source in sources)
    assert outputs["evidence_table.csv"].startswith("claim_id,claim,sources\n")
    assert json.loads(outputs["evidence_coverage.json"])["passed"] is True
    assert json.loads(outputs["output_contract_validation.json"])["passed"] is True
    cited = set(re.findall(r"`([\w./-]+\.(?:md|csv|json))`", answer))
    assert "board_deck.md" in cited and all((dataroom / path).is_file() for path in cited)


def test_arr_v001_leads_with_the_board_figure_and_the_rule_with_the_finance_export(sdk, dataroom):
    baseline, _ = run_agent(sdk, dataroom, QUESTIONS[1], with_rules=False)
    assert first_money(baseline) == "$43.0M"
    assert "$36.9M" not in baseline and "conflict" not in baseline

    improved, _ = run_agent(sdk, dataroom, QUESTIONS[1], with_rules=True)
    assert first_money(improved) == "$36.9M"
    assert "$43.0M" in improved and "should not be silently reconciled" in improved
    assert "`financials/arr_bridge.csv`" in improved


def test_concentration_v001_stops_at_the_legal_entity_and_the_rule_rolls_up(sdk, dataroom):
    baseline, _ = run_agent(sdk, dataroom, QUESTIONS[2], with_rules=False)
    assert "Northstar Bank, is $7.8M or 21.1%" in baseline and "Northstar Holdings" not in baseline

    improved, _ = run_agent(sdk, dataroom, QUESTIONS[2], with_rules=True)
    assert "Northstar Holdings at $12.4M, 33.6% (about 34%)" in improved
    assert "`customers/account_hierarchy.csv`" in improved


def test_security_v001_repeats_the_sales_wording_and_the_rule_is_exact(sdk, dataroom):
    baseline, _ = run_agent(sdk, dataroom, QUESTIONS[4], with_rules=False)
    assert '"SOC 2 complete"' in baseline and "Type II" not in baseline

    improved, _ = run_agent(sdk, dataroom, QUESTIONS[4], with_rules=True)
    assert "SOC 2 Type I is complete" in improved and "Type II report has not been issued" in improved
    assert "weaker evidence" in improved


def test_nrr_v001_reports_the_estimate_and_the_rule_marks_it_unsupported(sdk, dataroom):
    baseline, _ = run_agent(sdk, dataroom, QUESTIONS[6], with_rules=False)
    assert "net revenue retention (NRR) is 122%" in baseline and "not an official metric" not in baseline
    assert "Cac payback months is unknown" in baseline  # v001 already says absent metrics are unknown

    improved, _ = run_agent(sdk, dataroom, QUESTIONS[6], with_rules=True)
    assert "Official net revenue retention (NRR) is unsupported" in improved
    assert "not an official metric" in improved


def test_a_streamed_run_gives_the_same_answer(sdk, dataroom):
    from agents import Runner
    from agents.run import RunConfig
    from agents.sandbox import Manifest, SandboxAgent, SandboxPathGrant, SandboxRunConfig
    from agents.sandbox.entries import Dir, LocalDir
    from agents.sandbox.sandboxes import UnixLocalSandboxClient

    async def streamed() -> str:
        from agents import set_default_openai_client, set_tracing_disabled
        from openai import AsyncOpenAI

        set_tracing_disabled(True)
        set_default_openai_client(AsyncOpenAI(base_url=sdk, api_key="standin-test", max_retries=0),
                                  use_for_tracing=False)
        config = harness(False)
        agent = SandboxAgent(name="analyst", model=config.agent_model, instructions=config.build_instructions(),
                             default_manifest=Manifest(
                                 entries={"data": LocalDir(src=dataroom), "outputs": Dir()},
                                 extra_path_grants=(SandboxPathGrant(path=str(dataroom), read_only=True),)))
        client = UnixLocalSandboxClient()
        session = await client.create(manifest=agent.default_manifest)
        try:
            async with session:
                result = Runner.run_streamed(agent, build_user_prompt(QUESTIONS[0], harness_version="v001"),
                                             run_config=RunConfig(sandbox=SandboxRunConfig(session=session)),
                                             max_turns=30)
                async for _ in result.stream_events():
                    pass
                return str(result.final_output)
        finally:
            await client.delete(session)

    answer = asyncio.run(streamed())
    assert "Runway: 11 months in the `runway_months FY2025` export" in answer
    assert answer == run_agent(sdk, dataroom, QUESTIONS[0], with_rules=False)[0]
