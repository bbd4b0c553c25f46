"""The suite as a promptfoo config, and that promptfoo (the project's, offline) runs it as downloaded."""

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.urls import reverse

from reviews import suite

from .gen_builders import PENDING_REASON, proposed_cases

pytestmark = pytest.mark.django_db

PROMPTFOO = Path(django_settings.BASE_DIR) / "node_modules" / ".bin" / "promptfoo"


@pytest.fixture
def approved(standin, reviewer, approver):
    cases = proposed_cases(reviewer, approver, count=4)
    for label in ("trace-01", "trace-04"):
        cases[label].approve(by=approver, reason=PENDING_REASON)  # their back-tests are still queued
    cases["trace-02"].reject(by=approver, reason="Duplicate.")
    return cases


def download(client) -> tuple[str, dict]:
    response = client.get(reverse("reviews:suite-download"))
    assert response.status_code == 200
    assert response["Content-Type"] == "application/yaml; charset=utf-8"
    assert response["Content-Disposition"].startswith('attachment; filename="loopsite-suite-')
    text = response.content.decode()
    comment, _, document = text.partition("\n")
    assert comment.startswith("# Run: ./node_modules/.bin/promptfoo eval -c THIS_FILE")
    return text, json.loads(document)  # JSON is YAML: promptfoo reads the whole file as YAML


def test_the_config_carries_stored_answers_echo_and_the_judge(client_for, engineer, approved, standin):
    _, config = download(client_for(engineer))
    assert config["prompts"] == ["{{answer}}"]
    assert config["providers"] == [{"id": "echo", "label": "stored-answer"}]
    tests = {test["metadata"]["eval_id"]: test for test in config["tests"]}
    assert sorted(tests) == ["financial-risk-trace-01", "security-readiness-trace-04"]  # approved only
    security = tests["security-readiness-trace-04"]
    case, run = approved["trace-04"], approved["trace-04"].source_run
    assert security["vars"]["answer"] == run.final_answer
    assert security["vars"]["trace_id"] == run.trace_id
    assert security["metadata"] == {
        "eval_id": case.eval_id, "case_id": case.pk, "cycle": "v001 review", "cycle_id": case.cycle_id,
        "source_run": run.pk, "source_trace_id": run.trace_id, "scoring_method": "hybrid",
    }
    assert security["assert"][:-1] == case.deterministic_assertions
    assert security["assert"][-1] == {
        "type": "llm-rubric", "value": case.rubric, "threshold": 0.8,
        "provider": {"id": "openai:chat:gpt-5.5", "config": {"maxRetries": 1, "apiBaseUrl": standin}},
    }


def test_the_default_openai_endpoint_is_not_written(client_for, engineer, approved, settings):
    settings.STANDIN_IN_USE = False
    settings.OPENAI_BASE_URL = suite.OPENAI_DEFAULT_BASE_URL
    settings.OPENAI_API_KEY = "sk-test-not-used"
    _, config = download(client_for(engineer))
    rubric = config["tests"][0]["assert"][-1]
    assert rubric["provider"] == {"id": "openai:chat:gpt-5.5", "config": {"maxRetries": 1}}


@pytest.mark.skipif(not PROMPTFOO.exists(), reason="promptfoo is not installed (make node-deps)")
def test_promptfoo_runs_the_downloaded_suite(client_for, engineer, approved, standin, tmp_path):
    text, _ = download(client_for(engineer))
    config = tmp_path / "loopsite-suite.yaml"
    config.write_text(text, encoding="utf-8")
    env = {
        "PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path),
        "PROMPTFOO_DISABLE_TELEMETRY": "1", "PROMPTFOO_DISABLE_UPDATE": "1", "PROMPTFOO_DISABLE_SHARING": "1",
        "PROMPTFOO_CONFIG_DIR": str(tmp_path / ".promptfoo"), "PROMPTFOO_DISABLE_WAL_MODE": "1",
        "OPENAI_API_KEY": "standin-no-key", "METADATA_SERVER_DETECTION": "none", "OPENAI_BASE_URL": standin,
    }
    started = time.monotonic()
    process = subprocess.run(
        [str(PROMPTFOO), "eval", "-c", str(config), "-o", str(tmp_path / "out.json"), "--no-cache", "--no-table"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180,
    )
    seconds = time.monotonic() - started
    assert (tmp_path / "out.json").exists(), process.stdout[-3000:] + process.stderr[-3000:]
    assert process.returncode == 100  # promptfoo's exit code when a test fails
    rows = {row["testCase"]["metadata"]["eval_id"]: row for row in json.loads((tmp_path / "out.json").read_text())
            ["results"]["results"]}
    passing, failing = rows["financial-risk-trace-01"], rows["security-readiness-trace-04"]
    assert passing["success"] is True and passing["response"]["output"] == approved["trace-01"].source_run.final_answer
    assert failing["success"] is False
    components = {c["assertion"]["type"]: c for c in failing["gradingResult"]["componentResults"]
                  if c["assertion"]["type"] == "llm-rubric"}
    assert components["llm-rubric"]["pass"] is False
    assert "says “SOC 2 is complete”" in components["llm-rubric"]["reason"]
    rubric_ok = [c for c in passing["gradingResult"]["componentResults"] if c["assertion"]["type"] == "llm-rubric"]
    assert rubric_ok[0]["pass"] is True and rubric_ok[0]["reason"].startswith("All 3 rubric checks met")
    assert seconds < 60
