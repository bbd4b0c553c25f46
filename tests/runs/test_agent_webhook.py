"""The webhook form on an agent's page: an engineer sets an http(s) URL and sees the signing secret once; a bad URL
is refused with the field named; changes are audited without the secret; only engineers may change it."""

import json

import pytest
from django.urls import reverse

from loopsite.admin import admin_snapshot
from loopsite.models import AuditEvent
from runs.models import Agent

pytestmark = pytest.mark.django_db

URL = "https://automation.example.com/hooks/loopsite"


@pytest.fixture
def agent(engineer):
    return Agent.create_external(by=engineer, name="Support bot")[0]


def post(client, agent, **data):
    return client.post(reverse("runs:agent-webhook", args=[agent.slug]), data)


def test_setting_a_webhook_shows_its_secret_once(client_for, engineer, agent):
    client = client_for(engineer)
    response = post(client, agent, url=URL)
    assert response.status_code == 200
    agent.refresh_from_db()
    secret = agent.webhook_secret
    assert agent.webhook_url == URL and secret.startswith("whsec_") and len(secret) > 40
    html = response.content.decode()
    assert 'data-testid="new-webhook-secret"' in html and secret in html

    page = client.get(agent.get_absolute_url()).content.decode()
    assert URL in page and secret not in page and agent.webhook_secret_hint in page
    event = AuditEvent.objects.get(action="agent.webhook")
    assert event.actor == engineer and event.after["url"] == URL and event.before["url"] == ""
    assert secret not in json.dumps([event.before, event.after, event.summary])
    assert admin_snapshot(agent)["webhook_secret"] == "(hidden)"

    # Saved again: the same secret; asked for: a new one, shown once.
    assert post(client, agent, url=URL + "/v2").status_code == 302
    agent.refresh_from_db()
    assert agent.webhook_secret == secret and agent.webhook_url == URL + "/v2"
    rotated = post(client, agent, url=URL, new_secret="on")
    agent.refresh_from_db()
    assert agent.webhook_secret != secret and agent.webhook_secret in rotated.content.decode()
    assert AuditEvent.objects.filter(action="agent.webhook").count() == 3


@pytest.mark.parametrize(("url", "message"), [
    ("ftp://automation.example.com/hook", "Webhook URL: only http:// and https:// URLs can be called."),
    ("not a url", "Webhook URL: enter a full http:// or https:// URL."),
    ("", "Webhook URL: enter the URL Loopsite should POST events to."),
    ("http://169.254.169.254/latest/meta-data/", "Webhook URL: Loopsite does not call "
     "http://169.254.169.254/latest/meta-data/: 169.254.169.254 is a link-local address"),
    ("http://[::ffff:169.254.169.254]/", "is a link-local address"),
    ("http://[fe80::1]/hook", "fe80::1 is a link-local address"),
    ("http://0.0.0.0:8000/hook", "0.0.0.0 is not an address a call can go to"),
])
def test_a_bad_url_is_refused_with_the_field_named(client_for, engineer, agent, url, message):
    response = post(client_for(engineer), agent, url=url)
    assert response.status_code == 400
    html = response.content.decode()
    assert message in html and 'id="agent-webhook"' in html
    agent.refresh_from_db()
    assert agent.webhook_url == "" and agent.webhook_secret == ""
    assert not AuditEvent.objects.filter(action="agent.webhook").exists()


def test_the_webhook_can_be_removed(client_for, engineer, agent):
    client = client_for(engineer)
    post(client, agent, url=URL)
    assert post(client, agent, op="remove").status_code == 302
    agent.refresh_from_db()
    assert agent.webhook_url == "" and agent.webhook_secret == ""
    event = AuditEvent.objects.filter(action="agent.webhook").latest("pk")
    assert event.summary == "Removed the webhook of Support bot" and event.after == {"url": "", "secret": ""}
    assert "No webhook: nothing is sent" in client.get(agent.get_absolute_url()).content.decode()


def test_only_engineers_change_it(client_for, reviewer, approver, agent):
    for user in (reviewer, approver):
        assert post(client_for(user), agent, url=URL).status_code == 403
    agent.refresh_from_db()
    assert agent.webhook_url == ""
    page = client_for(reviewer).get(agent.get_absolute_url()).content.decode()
    assert 'data-testid="agent-webhook"' in page and 'action="/agents/support-bot/webhook/"' not in page


def test_the_built_in_agent_has_none(client_for, engineer):
    builtin = Agent.builtin()
    assert post(client_for(engineer), builtin, url=URL).status_code == 404
    assert 'data-testid="agent-webhook"' not in client_for(engineer).get(builtin.get_absolute_url()).content.decode()
