"""Closed-loop mode's read-only API: the agent's ingest token reads its newest handoff, its suite as a promptfoo
config and a version's gate result, with ETags; another agent's token, a revoked or a bad one is refused."""

import json

import pytest
from django.urls import reverse

from reviews import halo
from runs.models import Harness

from .closed_loop_builders import PRIORITIES, external_agent, gate_run, report, suite_cycle
from .optimization_builders import finished_optimization

pytestmark = pytest.mark.django_db


def urls(slug: str) -> dict[str, str]:
    return {"handoff": f"/api/v1/agents/{slug}/handoff", "suite": f"/api/v1/agents/{slug}/suite",
            "gate": f"/api/v1/agents/{slug}/versions/1.0.0/gate"}


def get(client, url: str, token: str | None = None, **headers):
    if token:
        headers["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    return client.get(url, **headers)


@pytest.fixture
def loop(engineer, approver):
    """Support bot with a suite, a gate run of 1.0.0 and a handoff; its token."""
    agent, token = external_agent(engineer)
    cycle, cases = suite_cycle(agent, engineer, approver)
    gate_run(cycle.harness, cases, [True, False], cycle=cycle)
    optimization = finished_optimization(cycle, report())
    return {"agent": agent, "token": token, "cycle": cycle, "cases": cases, "handoff": optimization}


def test_a_missing_bad_or_revoked_token_gets_401(client, engineer, loop):
    agent, token = loop["agent"], loop["token"]
    for url in urls(agent.slug).values():
        for header in (None, f"Bearer {token}x", "Bearer lsk_nope", f"Basic {token}", token):
            response = client.get(url, **({"HTTP_AUTHORIZATION": header} if header else {}))
            assert response.status_code == 401, (url, header)
            assert response["Content-Type"] == "application/json"
            assert response.json() == {"status": 401, "message": "A valid agent token is needed: Authorization: "
                                                                 "Bearer <token> (it may be revoked)."}
            assert response["WWW-Authenticate"].startswith("Bearer")
    assert get(client, urls(agent.slug)["handoff"], token).status_code == 200
    agent.revoke_token(by=engineer)
    assert get(client, urls(agent.slug)["handoff"], token).status_code == 401


def test_a_token_reads_only_its_own_agent(client, engineer, loop):
    _, other_token = external_agent(engineer, name="Other bot")
    for url in urls(loop["agent"].slug).values():
        response = get(client, url, other_token)
        assert response.status_code == 403
        assert response.json()["message"] == "This token is agent other-bot's: it reads /api/v1/agents/other-bot/… only."
    # The slug of an agent that does not exist answers the same: nothing tells which agents exist.
    assert get(client, urls("no-such-bot")["handoff"], other_token).status_code == 403


def test_an_agent_with_nothing_yet_gets_404s_that_say_why(client, engineer):
    agent, token = external_agent(engineer)
    expected = {
        "handoff": "No handoff for Support bot yet: HALO writes one after a cycle of its runs is gated.",
        "suite": "Support bot has no approved eval cases yet, so there is no suite.",
        "gate": "Support bot has no version '1.0.0'.",
    }
    for name, url in urls(agent.slug).items():
        response = get(client, url, token)
        assert response.status_code == 404 and response.json() == {"status": 404, "message": expected[name]}
    assert get(client, "/api/v1/agents/support-bot/handoffs", token).json()["message"].startswith("No such API endpoint")


def test_it_is_read_only(client, loop):
    response = client.post(urls(loop["agent"].slug)["handoff"], HTTP_AUTHORIZATION=f"Bearer {loop['token']}")
    assert response.status_code == 405 and response["Allow"] == "GET, HEAD"
    assert "read-only" in response.json()["message"]


def test_the_newest_handoff_comes_with_its_recommendations(client, client_for, engineer, loop):
    cycle, older = loop["cycle"], loop["handoff"]
    newer = finished_optimization(cycle, report("Quote the shipping policy"))
    response = get(client, urls(loop["agent"].slug)["handoff"], loop["token"])
    assert response.status_code == 200
    body = response.json()
    newer.refresh_from_db()
    assert body["id"] == newer.pk != older.pk
    assert body["cycle"] == {"id": cycle.pk, "name": "1.0.0 review"}
    assert (body["version"], body["agent_version"]) == (cycle.harness.version, "1.0.0")
    assert body["created_at"] == newer.finished_at.isoformat()
    assert body["recommendations"] == PRIORITIES == halo.top_priorities(newer.handoff)
    assert body["markdown"].startswith("## Executive summary") and "Quote the shipping policy" in body["markdown"]
    download = client_for(engineer).get(reverse("reviews:handoff-download", args=[newer.pk]))
    assert body["markdown"] == download.content.decode()
    assert body["url"] == reverse("reviews:handoff", args=[newer.pk])
    assert body["missing_sections"] == []


def test_polling_with_the_etag_gets_304_until_a_new_handoff(client, loop):
    url, token = urls(loop["agent"].slug)["handoff"], loop["token"]
    first = get(client, url, token)
    etag = first["ETag"]
    assert etag.startswith('"') and not etag.startswith("W/")  # strong: the same bytes
    assert first["Cache-Control"] == "private, no-cache" and "Authorization" in first["Vary"]
    again = get(client, url, token, HTTP_IF_NONE_MATCH=etag)
    assert again.status_code == 304 and again.content == b"" and again["ETag"] == etag
    assert get(client, url, token, HTTP_IF_NONE_MATCH='"something-else"').status_code == 200

    finished_optimization(loop["cycle"], report("Quote the shipping policy"))
    changed = get(client, url, token, HTTP_IF_NONE_MATCH=etag)
    assert changed.status_code == 200 and changed["ETag"] != etag
    assert "Quote the shipping policy" in changed.json()["markdown"]


def test_the_suite_is_the_suite_pages_download(client, client_for, engineer, loop):
    agent = loop["agent"]
    response = get(client, urls(agent.slug)["suite"], loop["token"])
    assert response.status_code == 200
    config = response.json()
    text = client_for(engineer).get(reverse("reviews:suite-download") + f"?agent={agent.slug}").content.decode()
    downloaded = json.loads(text.partition("\n")[2])
    # Equal but for the export minute in the description.
    assert {**config, "description": ""} == {**downloaded, "description": ""}
    assert config["description"].startswith("Loopsite regression suite: 2 approved case(s), exported ")
    assert [test["metadata"]["eval_id"] for test in config["tests"]] == ["case-0", "case-1"]

    etag = response["ETag"]
    assert etag.startswith('W/"')  # weak: the description's export time may differ, the suite does not
    assert get(client, urls(agent.slug)["suite"], loop["token"], HTTP_IF_NONE_MATCH=etag).status_code == 304
    loop["cases"][1].retire(by=loop["cases"][1].approved_by)
    changed = get(client, urls(agent.slug)["suite"], loop["token"], HTTP_IF_NONE_MATCH=etag)
    assert changed.status_code == 200 and len(changed.json()["tests"]) == 1


def test_the_gate_result_of_a_version(client, engineer, approver, loop):
    agent, token, cases = loop["agent"], loop["token"], loop["cases"]
    body = get(client, urls(agent.slug)["gate"], token).json()
    baseline = loop["cycle"].harness
    assert (body["version"], body["agent_version"], body["kind"], body["status"]) == (
        baseline.version, "1.0.0", "baseline", "succeeded")
    assert body["passed"] is False
    assert body["counts"] == {"total": 2, "passed": 1, "failed": 1, "errors": 0, "flaky": 0}
    assert [(row["eval_id"], row["verdict"]) for row in body["rows"]] == [("case-0", "pass"), ("case-1", "fail")]
    assert body["rows"][0]["trace_id"] == cases[0].source_run.trace_id and body["comparison"] is None
    # The version's label works as well as the name its traces give it.
    by_label = get(client, f"/api/v1/agents/{agent.slug}/versions/{baseline.version}/gate", token).json()
    assert by_label["id"] == body["id"]

    # A candidate: its latest finished gate run, with the comparison promotion reads.
    candidate = agent.harness_for_version("2.0.0")
    candidate_cycle = loop["cycle"].__class__.objects.create(harness=candidate, name="2.0.0 candidate")
    baseline_gate = baseline.gate_runs.get()
    gate_run(candidate, cases, [False, True], cycle=candidate_cycle, baseline=baseline_gate)
    result = get(client, f"/api/v1/agents/{agent.slug}/versions/2.0.0/gate", token).json()
    assert (result["kind"], result["passed"], result["counts"]["passed"]) == ("candidate", False, 1)
    assert result["comparison"]["regressions"] == ["case-0"] and result["comparison"]["fixes"] == ["case-1"]
    assert result["comparison"]["promotable"] is False
    assert get(client, f"/api/v1/agents/{agent.slug}/versions/3.0.0/gate", token).status_code == 404
    agent.harness_for_version("3.0.0")
    missing = get(client, f"/api/v1/agents/{agent.slug}/versions/3.0.0/gate", token)
    assert missing.status_code == 404
    assert missing.json()["message"] == "Version 3.0.0 of Support bot has no finished gate run yet."
    assert Harness.objects.filter(agent=agent).count() == 3
