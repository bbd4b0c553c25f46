"""The agent's webhook: a signed event reaches a real HTTP server on 127.0.0.1 when HALO writes a handoff and
when a version is promoted or refused, sent by its Celery task only after the change commits; a 5xx or a refused
connection is retried with backoff, every try counted on the delivery row, a 4xx is not retried."""

import hashlib
import hmac
import json

import pytest

from reviews import halo
from reviews.models import Optimization
from reviews.tasks import run_optimization_task
from runs import webhooks
from runs.models import Harness, WebhookDelivery
from runs.promotion import PromotionRefused
from runs.tasks import deliver_webhook
from tests.local_server import LocalServer

from .closed_loop_builders import external_agent, report, suite_cycle
from .optimization_builders import queued_optimization

pytestmark = pytest.mark.django_db


class Receiver(LocalServer):
    """A webhook receiver: records each POST (headers, raw body) and answers the next of `statuses` (then 200)."""

    def __init__(self):
        self.posts, self.statuses = [], []
        super().__init__(self.respond, path="/hooks/loopsite")

    def respond(self, headers, body: bytes) -> tuple[int, str, bytes]:
        self.posts.append({"headers": headers, "body": body})
        return (self.statuses.pop(0) if self.statuses else 200), "text/plain", b"ok"


@pytest.fixture
def receiver():
    server = Receiver()
    yield server
    server.close()


@pytest.fixture
def sent(monkeypatch):
    """(delivery id, countdown) of every deliver_webhook task sent; nothing reaches a broker."""
    messages = []
    monkeypatch.setattr(deliver_webhook, "apply_async",
                        lambda args, countdown=None: messages.append((args[0], countdown)))
    return messages


@pytest.fixture
def work_off(sent, django_capture_on_commit_callbacks):
    """Run the sent tasks as a worker would, the retries they send included; returns the countdowns used."""

    def run() -> list:
        countdowns = []
        while sent:
            pk, countdown = sent.pop(0)
            countdowns.append(countdown)
            with django_capture_on_commit_callbacks(execute=True):
                deliver_webhook.apply(args=[pk])
        return countdowns

    return run


@pytest.fixture
def agent(engineer, receiver):
    agent, _ = external_agent(engineer)
    secret = agent.set_webhook(by=engineer, url=receiver.url)
    assert secret.startswith("whsec_") and agent.webhook_secret == secret
    return agent


def verified(post: dict, secret: str) -> dict:
    """The event of one POST, after checking its signature as the README tells a receiver to."""
    headers = post["headers"]
    timestamp = headers["X-Loopsite-Timestamp"]
    expected = "sha256=" + hmac.new(secret.encode(), timestamp.encode() + b"." + post["body"], hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers["X-Loopsite-Signature"], expected)
    assert headers["Content-Type"] == "application/json"
    event = json.loads(post["body"])
    assert headers["X-Loopsite-Event"] == event["event"] and headers["X-Loopsite-Delivery"] == str(event["id"])
    return event


def test_a_written_handoff_is_posted_signed_after_the_task_commits(agent, engineer, approver, receiver, sent, work_off,
                                                                    monkeypatch, django_capture_on_commit_callbacks):
    monkeypatch.setattr(halo, "run_halo", lambda **kwargs: report())
    cycle, _ = suite_cycle(agent, engineer, approver)
    optimization = queued_optimization(cycle)
    with django_capture_on_commit_callbacks(execute=True):
        run_optimization_task.apply(args=[optimization.pk], throw=True)
        assert sent == [] and receiver.posts == []  # nothing inside the task that wrote the handoff
    assert len(sent) == 1  # sent once it committed
    optimization.refresh_from_db()
    assert optimization.status == Optimization.Status.SUCCEEDED, optimization.last_error
    assert work_off() == [None]

    [post] = receiver.posts
    event = verified(post, agent.webhook_secret)
    assert event["event"] == "handoff.written"
    assert event["agent"] == {"slug": "support-bot", "name": "Support bot"}
    handoff = event["data"]["handoff"]
    assert handoff["id"] == optimization.pk and handoff["cycle"] == {"id": cycle.pk, "name": "1.0.0 review"}
    assert handoff["agent_version"] == "1.0.0" and handoff["api"] == "/api/v1/agents/support-bot/handoff"
    assert handoff["created_at"] == optimization.finished_at.isoformat()
    delivery = WebhookDelivery.objects.get()
    assert (delivery.status, delivery.attempts, delivery.response_code, delivery.last_error) == ("succeeded", 1, 200, "")
    # A second message for the same row (a redelivery) sends nothing.
    deliver_webhook.apply(args=[delivery.pk])
    assert len(receiver.posts) == 1


def test_a_failed_halo_run_sends_nothing(agent, engineer, approver, sent, monkeypatch, django_capture_on_commit_callbacks):
    def broken(**kwargs):
        raise halo.HaloError("HALO failed: no model.")

    monkeypatch.setattr(halo, "run_halo", broken)
    cycle, _ = suite_cycle(agent, engineer, approver)
    with django_capture_on_commit_callbacks(execute=True):
        run_optimization_task.apply(args=[queued_optimization(cycle).pk], throw=True)
    assert sent == [] and not WebhookDelivery.objects.exists()


def test_a_promotion_and_a_refusal_are_posted(agent, approver, receiver, sent, work_off,
                                              django_capture_on_commit_callbacks):
    harness = agent.harness_for_version("1.0.0")
    with django_capture_on_commit_callbacks(execute=True):
        with pytest.raises(PromotionRefused):
            harness.promote(by=approver)  # no gate comparison and no override reason
    with django_capture_on_commit_callbacks(execute=True):
        harness.promote(by=approver, override_reason="Hotfix, gated by hand.")
    assert work_off() == [None, None]

    refused, promoted = (verified(post, agent.webhook_secret) for post in receiver.posts)
    assert refused["event"] == "version.refused"
    assert refused["data"]["agent_version"] == "1.0.0" and refused["data"]["version"] == harness.version
    assert refused["data"]["reason"].startswith(f"There is no gate comparison for {harness.version} yet.")
    assert refused["data"]["by"] == "april" and refused["data"]["comparison"] is None
    assert promoted["event"] == "version.promoted"
    assert promoted["data"]["override_reason"] == "Hotfix, gated by hand." and promoted["data"]["retired"] == []
    assert Harness.objects.get(pk=harness.pk).status == Harness.Status.PROMOTED
    assert list(WebhookDelivery.objects.order_by("pk").values_list("event", "status")) == [
        ("version.refused", "succeeded"), ("version.promoted", "succeeded")]


def test_a_500_is_retried_with_backoff_and_both_tries_are_counted(agent, receiver, sent, work_off, settings,
                                                                   django_capture_on_commit_callbacks):
    settings.WEBHOOK_RETRY_SECONDS = 3.0
    receiver.statuses = [500]
    with django_capture_on_commit_callbacks(execute=True):
        delivery = webhooks.notify(agent=agent, event=WebhookDelivery.Event.VERSION_PROMOTED, data={"version": "x"})
    pk, _ = sent[0]
    with django_capture_on_commit_callbacks(execute=True):
        deliver_webhook.apply(args=[pk])
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.response_code) == ("queued", 1, 500)
    assert delivery.last_error == f"{receiver.url} answered HTTP 500: ok"
    assert sent == [(pk, None), (pk, 3.0)]  # the retry waits WEBHOOK_RETRY_SECONDS
    sent.pop(0)
    assert work_off() == [3.0]
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.response_code, delivery.last_error) == ("succeeded", 2, 200, "")
    first, second = receiver.posts
    assert first["body"] == second["body"]  # the same event, signed again for its own timestamp
    assert verified(first, agent.webhook_secret) == verified(second, agent.webhook_secret)


def test_a_retry_waiting_out_its_backoff_is_not_resent_early_by_the_sweep(agent, receiver, sent, settings,
                                                                         django_capture_on_commit_callbacks):
    from datetime import timedelta

    from django.utils import timezone

    settings.WEBHOOK_RETRY_SECONDS, settings.QUEUED_STALE_SECONDS = 600.0, 60
    receiver.statuses = [503]
    with django_capture_on_commit_callbacks(execute=True):
        delivery = webhooks.notify(agent=agent, event=WebhookDelivery.Event.VERSION_PROMOTED, data={"version": "x"})
        deliver_webhook.apply(args=[delivery.pk])
    assert sent[-1] == (delivery.pk, 600.0)
    sent.clear()
    later = timezone.now() + timedelta(seconds=300)  # past QUEUED_STALE_SECONDS, before the retry is due
    with django_capture_on_commit_callbacks(execute=True):
        assert WebhookDelivery.sweep(now=later)["reenqueued"] == 0
    assert sent == []
    lost = timezone.now() + timedelta(seconds=600 + 61)  # due, and its message still not taken: lost
    with django_capture_on_commit_callbacks(execute=True):
        assert WebhookDelivery.sweep(now=lost)["reenqueued"] == 1
    assert sent == [(delivery.pk, None)]


def test_it_gives_up_after_the_last_try_and_never_retries_a_4xx(agent, receiver, sent, work_off, settings,
                                                                 refused_url, django_capture_on_commit_callbacks):
    settings.WEBHOOK_MAX_ATTEMPTS = 3
    receiver.statuses = [503, 429, 502]
    with django_capture_on_commit_callbacks(execute=True):
        lost = webhooks.notify(agent=agent, event=WebhookDelivery.Event.VERSION_PROMOTED, data={})
    assert work_off() == [None, 5.0, 10.0]  # doubled per try
    lost.refresh_from_db()
    assert (lost.status, lost.attempts, lost.response_code) == ("failed", 3, 502)
    assert lost.last_error.endswith("Gave up after 3 tries.")

    receiver.statuses = [404]
    with django_capture_on_commit_callbacks(execute=True):
        wrong = webhooks.notify(agent=agent, event=WebhookDelivery.Event.VERSION_REFUSED, data={})
    assert work_off() == [None]
    wrong.refresh_from_db()
    assert (wrong.status, wrong.attempts, wrong.response_code) == ("failed", 1, 404)

    # A connection that is refused is retried like a 5xx.
    WebhookDelivery.objects.all().delete()
    type(agent).objects.filter(pk=agent.pk).update(webhook_url=refused_url)
    with django_capture_on_commit_callbacks(execute=True):
        down = webhooks.notify(agent=agent, event=WebhookDelivery.Event.VERSION_REFUSED, data={})
    assert work_off() == [None, 5.0, 10.0]
    down.refresh_from_db()
    assert (down.status, down.attempts, down.response_code) == ("failed", 3, None)
    assert "could not be reached" in down.last_error


def test_without_a_webhook_nothing_is_queued(engineer, approver, sent, django_capture_on_commit_callbacks):
    agent, _ = external_agent(engineer)
    with django_capture_on_commit_callbacks(execute=True):
        agent.harness_for_version("1.0.0").promote(by=approver, override_reason="First version.")
    assert sent == [] and not WebhookDelivery.objects.exists()


def test_the_agent_page_lists_the_last_deliveries(agent, client_for, engineer, receiver, work_off,
                                                  django_capture_on_commit_callbacks):
    receiver.statuses = [410]
    with django_capture_on_commit_callbacks(execute=True):
        webhooks.notify(agent=agent, event=WebhookDelivery.Event.VERSION_REFUSED, data={})
    work_off()
    page = client_for(engineer).get(agent.get_absolute_url()).content.decode()
    assert 'data-testid="deliveries"' in page and "version.refused" in page and "HTTP 410" in page
    assert agent.webhook_secret not in page and agent.webhook_secret_hint in page


def test_a_name_that_resolves_to_a_refused_address_is_not_called(agent, receiver, sent, work_off, settings,
                                                                  django_capture_on_commit_callbacks):
    """Checked as the call is made, after resolving the name: `localhost` is 127.0.0.1, refused once loopback
    addresses are (OUTBOUND_ALLOW_PRIVATE=0). Nothing is POSTed and nothing is retried."""
    settings.OUTBOUND_ALLOW_PRIVATE = False
    local = receiver.url.replace("127.0.0.1", "localhost")
    type(agent).objects.filter(pk=agent.pk).update(webhook_url=local)
    with django_capture_on_commit_callbacks(execute=True):
        refused = webhooks.notify(agent=agent, event=WebhookDelivery.Event.VERSION_PROMOTED, data={})
    assert work_off() == [None]
    refused.refresh_from_db()
    assert (refused.status, refused.attempts, refused.response_code) == ("failed", 1, None)
    assert f"Loopsite does not call {local}: localhost resolves to 127.0.0.1, a loopback" in refused.last_error
    assert receiver.posts == []

    settings.OUTBOUND_ALLOW_PRIVATE = True  # the default: an automation beside Loopsite is reached
    with django_capture_on_commit_callbacks(execute=True):
        allowed = webhooks.notify(agent=agent, event=WebhookDelivery.Event.VERSION_PROMOTED, data={})
    work_off()
    allowed.refresh_from_db()
    assert allowed.status == "succeeded" and len(receiver.posts) == 1
