"""Harness rules: v001 triggers none of them, and each rule sentence turns on exactly its own rule."""

import json
from pathlib import Path

import pytest

from loopsite.standin.rules import RULES, active_rule_ids
from runs.models import Harness

SAMPLE = Path(__file__).resolve().parents[2] / "runs" / "sample"


def v001_instructions() -> str:
    config = json.loads((SAMPLE / "harness_v001.json").read_text(encoding="utf-8"))
    return Harness(**config).build_instructions()


def sdk_sandbox_prompt() -> str:
    from agents.sandbox.runtime_agent_preparation import get_default_sandbox_instructions

    return get_default_sandbox_instructions() or ""


def test_harness_v001_triggers_no_rule():
    instructions = v001_instructions()
    assert "not the final system of record for metrics" in instructions  # the assembled text, not a stub
    for rule in RULES:
        for trigger in rule.triggers:
            assert trigger.lower() not in instructions.lower(), (rule.id, trigger)
    assert active_rule_ids(instructions) == frozenset()


def test_the_sdk_sandbox_prompt_triggers_no_rule():
    prompt = sdk_sandbox_prompt()
    assert "exec_command" in prompt or "apply_patch" in prompt
    assert active_rule_ids(prompt) == frozenset()


@pytest.mark.parametrize("rule", RULES, ids=lambda rule: rule.id)
def test_each_sentence_turns_on_its_own_rule_only(rule):
    assert active_rule_ids(v001_instructions() + "\n- " + rule.sentence) == {rule.id}


def test_rules_are_distinct_readable_instructions():
    assert len(RULES) >= 4
    assert len({rule.id for rule in RULES}) == len(RULES)
    for rule in RULES:
        assert rule.triggers and all(trigger == trigger.strip() and trigger for trigger in rule.triggers)
        assert rule.sentence.endswith(".") and len(rule.sentence.split()) >= 20
        assert rule.sentence[0].isupper()


def test_matching_is_case_insensitive():
    assert active_rule_ids("USE THE FINANCE-CONTROLLED EXPORT") == {"source_of_truth_metrics"}
    assert active_rule_ids("Apply the Parent Account Rollup.") == {"parent_account_rollup"}
