"""The stand-in's insight writer, eval generator and rubric judge, and its fault modes, over HTTP."""

import json
import subprocess
import sys
import urllib.request

import pytest

from loopsite.standin import eval_generator, faults, insight_writer, judge
from loopsite.standin.server import StandinServer
from loopsite.standin.textrules import negative_literal, positive_literal
from reviews import generation

TRACE = {"trace_id": "a" * 32, "trace_label": "trace-01", "question": "How risky is the runway?",
         "answer": "Runway is 11 months; see `finance/runway.csv`. CAC payback is not provided.",
         "artifacts": [{"name": "summary_answer.md", "bytes": 10, "excerpt": "x"}], "missing_artifacts": ["citations.json"],
         "validators": {"evidence_coverage_passed": True, "output_contract_passed": False}}
FEEDBACK = {"feedback_id": "human-trace-01-1", "trace_id": "a" * 32, "trace_label": "trace-01",
            "question": TRACE["question"], "source_type": "human_feedback", "theme": "financial_risk",
            "summary": "Name the runway. Then the burn.", "required_observations": ["Name the 11-month runway"],
            "prohibited_claims": ["SOC 2 is complete", "Do not stop at legal entities"]}


def post(base_url: str, path: str, body: dict) -> dict:
    request = urllib.request.Request(base_url + path, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def responses_text(base_url: str, messages: list[dict]) -> str:
    data = post(base_url, "/responses", {"model": "gpt-5.5", "input": messages})
    return "".join(part["text"] for item in data["output"] if item["type"] == "message" for part in item["content"])


def test_the_app_and_the_stand_in_agree_on_the_markers():
    assert insight_writer.MARKER == generation.INSIGHTS_MARKER
    assert eval_generator.MARKER == generation.EVALS_MARKER
    assert insight_writer.REPAIR_MARKER == faults.REPAIR_MARKER == generation.REPAIR_MARKER


def test_the_insight_writer_derives_observations_from_the_trace(standin_server):
    text = responses_text(standin_server, [{"role": "user", "content": generation.insights_prompt([TRACE])}])
    [insight] = json.loads(text)
    assert insight["trace_id"] == "a" * 32 and insight["source_type"] == "llm_insight"
    assert insight["observations"] == [
        "Cites 1 dataroom file(s) for its claims: finance/runway.csv.",
        "Anchors its conclusion on figures: 11 months.",
        "Runtime checks: evidence coverage passed; output contract failed; 1 artifact(s) written, missing citations.json.",
        "Flags gaps instead of inferring them (“not provided”).",
    ]


def test_the_eval_generator_turns_feedback_into_positive_and_negative_checks(standin_server):
    feedback = dict(FEEDBACK, required_observations=["Name the 11-month runway", "Tie burn to near-term financing pressure"])
    prompt = generation.evals_prompt([TRACE], [feedback], [])
    [item] = json.loads(responses_text(standin_server, [{"role": "user", "content": prompt}]))
    assert item["eval_id"] == "financial-risk-trace-01"
    assert item["source_trace_id"] == "a" * 32
    # The answer already names the runway ("11 months" is the 11-month runway), so no literal check on the figure:
    # it could not catch this answer and would fail a right one written "11 months". It never says "SOC 2 is
    # complete" either. What it lacks, the burn and the financing consequence, is left to the rubric.
    assert item["scoring_method"] == "llm_judge"
    assert item["deterministic_assertions"] == []
    assert item["rubric"].splitlines() == [
        "The answer passes only if it meets every requirement below and makes none of the prohibited claims.",
        "Requirements:",
        '- Name the 11-month runway (names "11-month").',
        "- Tie burn to near-term financing pressure.",
        "The answer must not:",
        '- Claim that "SOC 2 is complete".',
        "- Stop at legal entities.",
    ]
    assert item["title"] == "Financial Risk: Name the Runway"
    assert item["expected_behavior"] == (
        "Name the runway. Then the burn. A passing answer must name the 11-month runway and tie burn to near-term "
        "financing pressure. It must not claim that SOC 2 is complete or stop at legal entities.")
    verdict = judge.grade(output=TRACE["answer"], rubric=item["rubric"])
    assert verdict["pass"] is False and "Tie burn to near-term financing pressure" in verdict["reason"]
    assert judge.grade(output=item["suggested_pass_example"], rubric=item["rubric"])["pass"] is True
    assert judge.grade(output=item["suggested_fail_example"], rubric=item["rubric"])["pass"] is False
    assert set(item) == {"eval_id", "title", "scoring_method", "expected_behavior", "source_trace_id", "rubric",
                         "deterministic_assertions", "suggested_pass_example", "suggested_fail_example"}


@pytest.mark.parametrize("output,passed,score", [
    ("Runway is 11 months.", True, 1.0),
    ("Runway is 11 months and SOC 2 is complete.", False, 0.5),
    ("Runway is long.", False, 0.5),
])
def test_the_judge_answers_promptfoos_chat_request_with_pass_score_reason(standin_server, output, passed, score):
    rubric = 'Requirements:\n- Name the runway: mentions "11 months".\nThe answer must not:\n- says "SOC 2 is complete".'
    data = post(standin_server, "/chat/completions", {"model": "gpt-5.5", "messages": [
        {"role": "system", "content": judge.PROMPTFOO_SYSTEM + ". You respond with a JSON object..."},
        {"role": "user", "content": f"<Output>\n{output}\n</Output>\n<Rubric>\n{rubric}\n</Rubric>"},
    ]})
    verdict = json.loads(data["choices"][0]["message"]["content"])
    assert set(verdict) == {"pass", "score", "reason"}
    assert verdict["pass"] is passed and verdict["score"] == score


def test_the_judge_decides_edge_cases_by_its_rules():
    verdict = judge.grade(output="", rubric="")
    assert verdict == {"reason": "The output is empty.", "pass": False, "score": 0.0}
    assert judge.grade(output="hi", rubric="Be nice.")["pass"] is False  # "nice" is not in the output
    assert judge.grade(output="hi", rubric="Pass.")["pass"] is True  # nothing to check


@pytest.mark.parametrize("text,literal", [
    ('Quote "Northstar Holdings"', "Northstar Holdings"), ("Use account_hierarchy.csv", "account_hierarchy.csv"),
    ("Name the $36.9M figure", "$36.9M"), ("Mention parent-account concentration", ""),
])
def test_positive_literals(text, literal):
    assert positive_literal(text) == literal


@pytest.mark.parametrize("text,literal", [
    ("SOC 2 is complete", "SOC 2 is complete"), ("Do not say SOC 2 is done", "SOC 2 is done"),
    ("Don't claim 'official NRR'", "official NRR"), ("Do not stop at legal-entity concentration", ""),
])
def test_negative_literals(text, literal):
    assert negative_literal(text) == literal


def test_broken_json_once_breaks_the_first_answer_and_repairs_on_request(standin_broken_once_server):
    prompt = generation.insights_prompt([TRACE])
    first = responses_text(standin_broken_once_server, [{"role": "user", "content": prompt}])
    with pytest.raises(json.JSONDecodeError):
        json.loads(first)
    repaired = responses_text(standin_broken_once_server, [
        {"role": "user", "content": prompt}, {"role": "assistant", "content": first},
        {"role": "user", "content": generation.REPAIR_MARKER + "\nfix it"}])
    assert json.loads(repaired)[0]["trace_id"] == "a" * 32


def test_faults_leave_non_json_roles_alone(standin_broken_server):
    text = responses_text(standin_broken_server, [{"role": "user", "content": "Hello"}])
    assert text.startswith("Offline stand-in model: no role rule matched")


def test_an_unknown_fault_is_refused():
    with pytest.raises(ValueError, match="Unknown fault 'sometimes'"):
        StandinServer(("127.0.0.1", 0), fault="sometimes")


def test_the_command_line_takes_a_fault_mode():
    process = subprocess.Popen([sys.executable, "-m", "loopsite.standin", "--port", "0", "--fault", "broken-json"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = process.stdout.readline()
        assert "fault broken-json" in line
        base_url = line.split("listening on ")[1].split(" ")[0]
        text = responses_text(base_url, [{"role": "user", "content": generation.insights_prompt([TRACE])}])
        assert text.startswith("Here is the JSON you asked for:")
    finally:
        process.terminate()
        process.wait(timeout=10)
