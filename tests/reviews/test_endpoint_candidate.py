"""Candidate evaluation of an external agent through its HTTP endpoint: the engineer registers the endpoint on
the agent's page, "Evaluate candidate" makes promptfoo call it once per suite case (a real HTTP server on
127.0.0.1 here), the rows follow its answers, a failed call is an error (not verified) and promotion is refused
while a regression or an unverified case remains."""

import json

import pytest
from django.urls import reverse

from loopsite.models import AuditEvent
from reviews.candidates import comparison, latest_comparison
from reviews.models import Cycle, EvalCase, GateRun
from reviews.tasks import run_gate_task
from runs.ingest import lines_from_otlp_json, store_lines
from runs.models import Agent, Harness, Run
from runs.promotion import ERROR, PromotionRefused
from tests.local_server import LocalServer
from tests.runs.otlp_builders import openinference_trace, request

pytestmark = pytest.mark.django_db

SECRET = "Bearer sk-endpoint-secret-123456"
# (input, the baseline's stored answer, the word each case requires)
CASES = [
    ("Can I return \"worn\" shoes after 45 days?", "No: returns are accepted within 30 days.", "30 days"),
    ("Do you ship to Canada?", "Yes, we ship to Canada in 5 business days.", "Canada"),
    ("Is there a warranty on boots?", "I am not sure.", "two-year warranty"),
    ("Do you match competitor prices?", "Yes, we price match any competitor.", "price match"),
]
# What the endpoint answers the candidate: good, bad (a regression), good (a fix), and a 500 for the last one.
GOOD = {
    "Can I return \"worn\" shoes after 45 days?": "Sorry, returns are accepted within 30 days only.",
    "Do you ship to Canada?": "We only ship within the US.",
    "Is there a warranty on boots?": "Boots come with a two-year warranty.",
}
FIXED = {**GOOD, "Do you ship to Canada?": "Yes, Canada in 5 days.",
         "Do you match competitor prices?": "Yes, we price match."}


class Endpoint(LocalServer):
    """A small agent endpoint: answers `answers[input]` in choices.0.message.content, a 500 for other inputs."""

    def __init__(self, answers):
        self.answers, self.calls = answers, []
        super().__init__(self.respond, path="/chat")

    def respond(self, headers, raw: bytes) -> tuple[int, str, bytes]:
        body = json.loads(raw)
        self.calls.append({"body": body, "auth": headers.get("Authorization")})
        answer = self.answers.get(body.get("message", {}).get("text"))
        if answer is None:
            return 500, "text/plain", b"boom"
        return 200, "application/json", json.dumps({"choices": [{"message": {"content": answer}}]}).encode()


@pytest.fixture
def endpoint():
    server = Endpoint(GOOD)
    yield server
    server.close()


def suite_of(agent, engineer, approver) -> list[EvalCase]:
    """Version 1.0.0's imported runs and one approved deterministic case per input."""
    lines = []
    for index, (question, answer, _) in enumerate(CASES):
        found, rejected = lines_from_otlp_json(request(openinference_trace(f"{index + 1:032x}", question=question,
                                                                           answer=answer)))
        assert rejected == []
        lines += found
    store_lines(agent=agent, lines=lines)
    runs = list(Run.objects.filter(agent=agent).order_by("trace_id"))
    cycle = Cycle.objects.create_from_runs(runs=runs, name="1.0.0", user=engineer)
    return [EvalCase.objects.create(
        cycle=cycle, eval_id=f"case-{index}", title=question, source_run=run, expected_behavior=f"Says {word}.",
        scoring_method=EvalCase.ScoringMethod.DETERMINISTIC,
        deterministic_assertions=[{"type": "icontains", "value": word}], status=EvalCase.Status.APPROVED,
        approved_by=approver) for index, (run, (question, _, word)) in enumerate(zip(runs, CASES, strict=True))]


def register(client, agent, endpoint_url, **extra):
    data = {"url": endpoint_url, "body": '{"message": {"text": "{{input}}"}, "stream": false}',
            "response_path": "choices.0.message.content", "header_name": "Authorization", "header_value": SECRET,
            **extra}
    return client.post(reverse("runs:agent-endpoint", args=[agent.slug]), data)


def evaluate(client, candidate, baseline) -> GateRun:
    response = client.post(reverse("reviews:harness-evaluate", args=[candidate.version]), {"baseline": baseline.version})
    assert response.status_code in (200, 302), response.content.decode()[:2000]
    gate_run = GateRun.objects.filter(harness=candidate, kind=GateRun.Kind.CANDIDATE).latest("pk")
    for pending in (gate_run.baseline, gate_run):
        if pending.status != GateRun.Status.SUCCEEDED:
            run_gate_task.apply(args=[pending.pk], throw=True)
    gate_run.refresh_from_db()
    gate_run.baseline.refresh_from_db()
    assert gate_run.baseline.status == GateRun.Status.SUCCEEDED, gate_run.baseline.last_error
    assert gate_run.status == GateRun.Status.SUCCEEDED, (gate_run.last_error, gate_run.log_tail)
    return gate_run


def test_a_candidate_is_evaluated_through_the_agents_http_endpoint(client_for, engineer, approver, endpoint):
    agent = Agent.create_external(by=engineer, name="Support bot")[0]
    cases = suite_of(agent, engineer, approver)
    baseline = Harness.objects.get(agent=agent, agent_version="1.0.0")
    candidate = agent.harness_for_version("2.0.0")

    response = register(client_for(engineer), agent, endpoint.url)
    assert response.status_code == 302, response.content.decode()[:2000]
    agent.refresh_from_db()
    assert agent.endpoint_url == endpoint.url and agent.endpoint_header_value == SECRET
    page = client_for(engineer).get(agent.get_absolute_url()).content.decode()
    assert "Loopsite will call this URL" in page and endpoint.url in page and SECRET not in page
    event = AuditEvent.objects.get(action="agent.endpoint")
    assert SECRET not in json.dumps(event.after) and event.after["url"] == endpoint.url

    harness_page = client_for(engineer).get(candidate.get_absolute_url()).content.decode()
    assert 'data-testid="evaluate-through-endpoint"' in harness_page and endpoint.url in harness_page
    gate_run = evaluate(client_for(engineer), candidate, baseline)
    compare_page = client_for(approver).get(reverse("reviews:gate-compare", args=[gate_run.pk]))
    assert compare_page.status_code == 200 and "500" in compare_page.content.decode()
    assert client_for(approver).get(gate_run.get_absolute_url()).status_code == 200

    # One call per case, with the case's input in the body template and the extra header.
    assert sorted(call["body"]["message"]["text"] for call in endpoint.calls) == sorted(q for q, _, _ in CASES)
    assert all(call["body"]["stream"] is False and call["auth"] == SECRET for call in endpoint.calls)
    assert gate_run.cycle.runs.count() == 0 and gate_run.baseline.harness == baseline

    rows = {row.eval_case_id: row for row in gate_run.rows.all()}
    assert set(rows) == {case.pk for case in cases}
    returns, shipping, warranty, prices = (rows[case.pk] for case in cases)
    assert returns.passed and not returns.error
    assert not shipping.passed and not shipping.error
    assert warranty.passed and not warranty.error
    assert not prices.passed and "500" in prices.error
    assert (gate_run.total, gate_run.passed, gate_run.failed, gate_run.errors) == (4, 2, 1, 1)
    assert SECRET not in json.dumps(gate_run.config) and SECRET not in json.dumps(gate_run.results)

    result = comparison(gate_run.baseline, gate_run)
    assert [row.case_id for row in result.regressions] == ["case-1"]
    assert [row.case_id for row in result.unverified] == ["case-3"]
    assert result.unverified[0].candidate_state == ERROR
    assert [row.case_id for row in result.fixes] == ["case-2"]
    with pytest.raises(PromotionRefused):
        candidate.promote(by=approver, comparison=latest_comparison(candidate))
    refused = client_for(approver).post(reverse("reviews:gate-promote", args=[gate_run.pk]), {})
    candidate.refresh_from_db()
    assert refused.status_code in (200, 302, 400) and candidate.status == Harness.Status.DRAFT

    # The endpoint fixed: every case verified, no regression, and the candidate can be promoted.
    endpoint.answers, endpoint.calls = FIXED, []
    again = evaluate(client_for(engineer), candidate, baseline)
    assert again.baseline_id == gate_run.baseline_id and len(endpoint.calls) == len(CASES)
    result = latest_comparison(candidate)
    assert not result.regressions and not result.unverified
    candidate.promote(by=approver, comparison=result)
    candidate.refresh_from_db()
    assert candidate.status == Harness.Status.PROMOTED


@pytest.mark.parametrize(("extra", "message"), [
    ({"endpoint_url": "ftp://example.com/agent"}, "Endpoint URL: only http:// and https://"),
    ({"endpoint_url": "not a url"}, "Endpoint URL: enter a full"),
    ({"endpoint_url": "http://169.254.169.254/agent"}, "Endpoint URL: Loopsite does not call "
     "http://169.254.169.254/agent: 169.254.169.254 is a link-local address"),
    ({"body": '{"input": "{{input}"'}, "JSON body template: not valid JSON"),
    ({"body": '{"input": "hello"}'}, "put {{input}} in a string value"),
    ({"response_path": "choices[0]"}, "Answer field"),
    ({"header_value": ""}, "Extra header value"),
])
def test_a_bad_endpoint_is_refused_with_the_field_named(client_for, engineer, extra, message):
    agent = Agent.create_external(by=engineer, name="Support bot")[0]
    response = register(client_for(engineer), agent, **{"endpoint_url": "https://agent.example.com/chat", **extra})
    assert response.status_code == 400 and message in response.content.decode()
    agent.refresh_from_db()
    assert agent.endpoint_url == "" and not AuditEvent.objects.filter(action="agent.endpoint").exists()


def test_only_engineers_register_an_endpoint(client_for, reviewer):
    agent = Agent.objects.create(name="Other bot", slug="other-bot")
    response = register(client_for(reviewer), agent, "https://agent.example.com/chat")
    assert response.status_code == 403
    agent.refresh_from_db()
    assert agent.endpoint_url == ""


def test_the_endpoint_keeps_its_header_value_and_can_be_removed(client_for, engineer):
    agent = Agent.create_external(by=engineer, name="Support bot")[0]
    client = client_for(engineer)
    assert register(client, agent, "https://agent.example.com/chat").status_code == 302
    # Saved again without a value: the stored value stays (it is never sent back to the browser).
    assert register(client, agent, "https://agent.example.com/v2", header_value="").status_code == 302
    agent.refresh_from_db()
    assert (agent.endpoint_url, agent.endpoint_header_value) == ("https://agent.example.com/v2", SECRET)
    page = client.get(agent.get_absolute_url()).content.decode()
    assert SECRET not in page and "Authorization: Bear…" in page
    response = client.post(reverse("runs:agent-endpoint", args=[agent.slug]), {"op": "remove"})
    assert response.status_code == 302
    agent.refresh_from_db()
    assert not agent.has_endpoint and agent.endpoint_header_value == "" and agent.endpoint_header_name == ""
    assert AuditEvent.objects.filter(action="agent.endpoint").count() == 3


def test_an_endpoint_whose_name_resolves_to_a_refused_address_is_not_called(engineer, settings):
    """Checked when the candidate is evaluated, after resolving the name (`localhost`: 127.0.0.1, refused once
    loopback addresses are): the gate run fails with the reason before promptfoo calls anything."""
    from types import SimpleNamespace

    from reviews.endpoint import run_endpoint_gate
    from reviews.gate import GateError

    agent = Agent.create_external(by=engineer, name="Support bot")[0]
    agent.set_endpoint(by=engineer, url="http://localhost:9/chat", body='{"input": "{{input}}"}',
                       response_path="output")
    settings.OUTBOUND_ALLOW_PRIVATE = False
    gate_run = SimpleNamespace(harness=SimpleNamespace(agent_id=agent.pk))
    with pytest.raises(GateError, match=r"Loopsite does not call http://localhost:9/chat: localhost resolves to "
                                        r"127\.0\.0\.1, a loopback or private address"):
        run_endpoint_gate(gate_run)
