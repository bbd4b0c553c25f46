"""Server-Timing: signed-in users' responses carry the request's time in Django and in SQL; anonymous ones don't."""

import re

import pytest

from runs.models import Agent

pytestmark = pytest.mark.django_db

TIMING = re.compile(r'^app;dur=\d+\.\d, db;dur=\d+\.\d;desc="(\d+) queries"$')


def test_a_signed_in_page_names_its_time_and_queries(client_for, reviewer):
    response = client_for(reviewer).get("/inbox/")
    assert response.status_code == 200
    match = TIMING.match(response["Server-Timing"])
    assert match and int(match.group(1)) > 0


def test_signing_in_gets_it_on_the_answer_that_signs_in(client, reviewer):
    response = client.post("/accounts/login/", {"username": "rita", "password": "pw-rita"})
    assert response.status_code == 302 and TIMING.match(response["Server-Timing"])


@pytest.mark.parametrize("method, url", [("get", "/accounts/login/"), ("get", "/inbox/"), ("post", "/v1/traces"),
                                         ("get", "/api/v1/agents/x/handoff")])
def test_anonymous_callers_do_not_get_it(client, engineer, method, url):
    Agent.create_external(by=engineer, name="Support bot")
    response = getattr(client, method)(url)
    assert response.status_code in (200, 302, 401), response.status_code
    assert "Server-Timing" not in response
