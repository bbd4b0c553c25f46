"""Candidate evaluation through an external agent's HTTP endpoint (runs.models.Agent.endpoint_*).

    evaluate_candidate(candidate=<version of an agent with an endpoint>, baseline, user)   (reviews.candidates)
      -> a candidate GateRun (config via=endpoint) on a new cycle without runs, naming the baseline's gate run
      -> tasks.run_gate_task -> gate.run_gate -> run_endpoint_gate(gate_run)
    run_endpoint_gate                promptfoo's HTTP provider POSTs every suite case's input to the endpoint
                                     (the agent's body template, its extra header) and takes the answer from the
                                     response field; the case's checks and rubric judge it as in the gate; one
                                     GateRow per case, without a run.


A call that failed (an HTTP error status, no answer at the response field, a refused connection) is a row with an
error: no verdict, so "not verified" in the comparison, which blocks promotion. Only a judge that did not answer
fails the whole gate run (as in the gate). The extra header's value is written only into the promptfoo config
in the gate run's scratch directory; the config kept on the gate run shows it masked.
"""

from __future__ import annotations

import json
from typing import Any

from django.conf import settings

from loopsite import outbound
from runs.models import Agent

from .gate import GateError, Plan, _fail, _promptfoo, _store
from .models import GateRun
from .promptfoo import JUDGE_ERROR, judge_errors
from .suite import promptfoo_test, suite_cases

MASK = "********"
ENDPOINT_VIA = "endpoint"  # GateRun.config["via"] of a candidate gate run whose answers come from the endpoint


def is_endpoint_gate(gate_run: GateRun) -> bool:
    return gate_run.kind == GateRun.Kind.CANDIDATE and (gate_run.config or {}).get("via") == ENDPOINT_VIA


def response_transform(path: str) -> str:
    """promptfoo's transformResponse for a dotted path: the field's text, or an error naming the path."""
    keys = [int(part) if part.isdigit() else part for part in path.split(".")]
    return ("(json, text) => { let v = json; for (const k of " + json.dumps(keys) + ") { "
            "if (v === null || v === undefined) break; v = v[k]; } "
            "if (v === null || v === undefined) throw new Error(" + json.dumps(f"The response has no field {path}.")
            + "); return { output: typeof v === 'string' ? v : JSON.stringify(v) }; }")


def http_provider(agent: Agent, *, masked: bool = False) -> dict[str, Any]:
    """promptfoo's HTTP provider for the agent's endpoint: POST the body template, {{input}} rendered per test."""
    headers = {"Content-Type": "application/json"}
    if agent.endpoint_header_name:
        headers[agent.endpoint_header_name] = MASK if masked else agent.endpoint_header_value
    return {
        "id": agent.endpoint_url,
        "label": f"{agent.name} endpoint",
        "config": {
            "method": "POST",
            "headers": headers,
            "body": json.loads(agent.endpoint_body),
            "transformResponse": response_transform(agent.endpoint_response_path),
            "maxRetries": 0,  # one call per case: a failed call is that case's error, not a retry loop
        },
    }


def scrubbed(value: Any, agent: Agent) -> Any:
    """`value` (promptfoo's results or log) with the extra header's value masked wherever promptfoo echoed it."""
    secret = agent.endpoint_header_value
    if not secret or value is None:
        return value
    if isinstance(value, str):
        return value.replace(secret, MASK)
    text = json.dumps(value, ensure_ascii=False)
    return json.loads(text.replace(json.dumps(secret, ensure_ascii=False)[1:-1], MASK))


def endpoint_tests(cases) -> list[dict[str, Any]]:
    """One promptfoo test per case: the case's checks (reviews.suite.promptfoo_test) on the endpoint's answer to
    the case's input."""
    tests = []
    for index, case in enumerate(cases):
        test = promptfoo_test(case)
        test["vars"] = {"input": case.source_run.question.text}
        test["metadata"].update(test_index=index, source_run=case.source_run_id)
        tests.append(test)
    return tests


def plan_endpoint_gate(gate_run: GateRun) -> Plan:
    """The candidate's agent's suite: every case is called through the endpoint."""
    cases = list(suite_cases(agent=gate_run.harness.agent).select_related("source_run__question"))
    return Plan(tested=cases, order={case.pk: index for index, case in enumerate(cases)})


def run_endpoint_gate(gate_run: GateRun) -> None:
    """Call the endpoint for every case of the agent's suite through promptfoo and store one row per case."""
    agent = Agent.objects.get(pk=gate_run.harness.agent_id)
    if not agent.has_endpoint:
        raise GateError(f"{agent.name} has no HTTP endpoint registered any more: register it on the agent's page, "
                        f"then re-run this gate run.")
    if refused := outbound.refusal(agent.endpoint_url):
        raise GateError(f"{refused} Register another endpoint on the agent's page, then re-run this gate run.")
    plan = plan_endpoint_gate(gate_run)
    if not plan.tested:
        raise GateError(f"Nothing to evaluate: the regression suite has no approved case of {agent.name}.")
    tests = endpoint_tests(plan.tested)
    config = {"description": f"Loopsite candidate {gate_run.harness.version}: {len(tests)} case(s) through "
                             f"{agent.endpoint_url}",
              "prompts": ["{{input}}"], "providers": [http_provider(agent)], "tests": tests}
    stored_config = {**config, "providers": [http_provider(agent, masked=True)], "skipped": plan.skipped,
                     "via": ENDPOINT_VIA}
    outcome = _promptfoo(gate_run, config=config, answers={}, what="the candidate's evaluation",
                         prefix=f"loopsite-endpoint-{gate_run.pk}-")
    outcome.data, outcome.log_tail = scrubbed(outcome.data, agent), scrubbed(outcome.log_tail, agent)
    common = dict(config=stored_config, log_tail=outcome.log_tail, returncode=outcome.returncode)
    if outcome.data is None:
        _fail(gate_run, outcome.error, **common, results=None)
        return
    error = outcome.error
    if not error and (judge := judge_errors([item for item in outcome.rows if item["error"]])):
        error = (f"The judge ({settings.OPENAI_JUDGE_MODEL}) did not answer for {len(judge)} of {len(outcome.rows)} "
                 f"test(s): {judge[0]['error'][len(JUDGE_ERROR):][:500]} Check the model endpoint, then re-run.")
    # Any other error is the agent's endpoint failing for that case: that row's error, never a pass.
    _store(gate_run, plan=plan, parsed=outcome.rows, error=error, results=outcome.data, **common)
