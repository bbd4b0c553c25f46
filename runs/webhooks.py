"""An agent's webhook: Loopsite POSTs a signed JSON event when a handoff is written and when a version is
promoted or its promotion refused, so that an automation (a coding agent's heartbeat) starts at once.

    notify(agent=..., event=..., data=...)   in the transaction that made the change: a WebhookDelivery row,
                                             its task sent once that transaction commits (no URL: nothing)
      -> tasks.deliver_webhook               claims the row (one try), then deliver(delivery=...)
    deliver(delivery=...)                    one POST. 2xx: delivered. A connection error, a 5xx or a 429:
                                             queued again after WEBHOOK_RETRY_SECONDS, doubled per try, up to
                                             WEBHOOK_MAX_ATTEMPTS tries. Anything else (4xx, a redirect): failed.

Every POST carries `X-Loopsite-Event`, `X-Loopsite-Delivery` (the row's id, the same on every try, for
deduplication), `X-Loopsite-Timestamp` (Unix seconds of this try) and `X-Loopsite-Signature: sha256=<hex>`:
the HMAC-SHA256, keyed with the agent's webhook secret, of `<timestamp>.<body>`. A receiver recomputes it over
the raw body, compares in constant time and refuses old timestamps (a replayed request).

reviews/ calls `handoff_written` when HALO's handoff is stored; Harness.promote calls the other two.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import logging
import time
import urllib.error
import urllib.request
from typing import Any

from django.conf import settings

from loopsite import outbound

from .models import Agent, WebhookDelivery

log = logging.getLogger(__name__)

Event = WebhookDelivery.Event
SIGNATURE_HEADER = "X-Loopsite-Signature"
TIMESTAMP_HEADER = "X-Loopsite-Timestamp"


def signature(*, secret: str, timestamp: str, body: bytes) -> str:
    """`sha256=<hex>`: HMAC-SHA256 of `<timestamp>.<body>` keyed with the webhook secret."""
    digest = hmac.new(secret.encode("utf-8"), timestamp.encode("ascii") + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def notify(*, agent: Agent, event: str, data: dict[str, Any]) -> WebhookDelivery | None:
    """Queue `event` for the agent's webhook; sent after the current transaction commits. None without a webhook."""
    if not agent.webhook_url:
        return None
    delivery = WebhookDelivery.objects.create(agent=agent, event=event, data=data, url=agent.webhook_url)
    WebhookDelivery.enqueue_work(delivery.pk)
    return delivery


def _version(harness) -> dict[str, Any]:
    return {"version": harness.version, "agent_version": harness.agent_version or harness.version,
            "url": harness.get_absolute_url()}


def handoff_written(*, agent: Agent, handoff: dict[str, Any]) -> WebhookDelivery | None:
    """`handoff` as the read-only API describes it, without the Markdown (fetch it from `handoff.api`)."""
    return notify(agent=agent, event=Event.HANDOFF_WRITTEN, data={"handoff": handoff})


def version_promoted(*, harness, retired, comparison, override_reason: str, by) -> WebhookDelivery | None:
    return notify(agent=harness.agent, event=Event.VERSION_PROMOTED, data={
        **_version(harness), "retired": [old.version for old in retired], "by": by.get_username(),
        "override_reason": override_reason or None,
        "comparison": comparison.summary() if comparison is not None else None,
    })


def version_refused(*, harness, refused, comparison, by) -> WebhookDelivery | None:
    return notify(agent=harness.agent, event=Event.VERSION_REFUSED, data={
        **_version(harness), "reason": str(refused), "blocking": [row.case_id for row in refused.blocking],
        "by": by.get_username(), "comparison": comparison.summary() if comparison is not None else None,
    })


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # noqa: ANN002, ANN003 - urllib's signature
        return None  # a redirect is answered as it is: an HTTPError with its 3xx code


_opener = urllib.request.build_opener(_NoRedirects)


def _post(url: str, *, body: bytes, headers: dict[str, str]) -> tuple[int | None, str]:
    """(HTTP status or None, what went wrong or "")."""
    request = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with _opener.open(request, timeout=settings.WEBHOOK_TIMEOUT_SECONDS) as response:
            return response.status, ""
    except urllib.error.HTTPError as exc:
        text = exc.read(300).decode("utf-8", "replace").strip()
        return exc.code, f"{url} answered HTTP {exc.code}" + (f": {text}" if text else ".")
    except (OSError, http.client.HTTPException, ValueError) as exc:  # URLError is an OSError
        reason = getattr(exc, "reason", None) or exc
        return None, f"{url} could not be reached: {reason}."


def deliver(*, delivery: WebhookDelivery) -> None:
    """One try of a claimed delivery; its outcome is stored on the row (and a retry sent when one is due)."""
    attempt, agent = delivery.attempts, delivery.agent
    if not agent.webhook_url or not agent.webhook_secret:
        delivery.fail("The webhook was removed before this event could be sent.", attempt=attempt)
        return
    if refused := outbound.refusal(agent.webhook_url):
        delivery.fail(f"{refused} Change the webhook's URL on the agent's page.", attempt=attempt,
                      url=agent.webhook_url)
        return
    body, timestamp = delivery.body(), str(int(time.time()))
    code, error = _post(agent.webhook_url, body=body, headers={
        "Content-Type": "application/json", "User-Agent": "Loopsite-Webhook/1",
        "X-Loopsite-Event": delivery.event, "X-Loopsite-Delivery": str(delivery.pk), TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: signature(secret=agent.webhook_secret, timestamp=timestamp, body=body),
    })
    fields = {"response_code": code, "url": agent.webhook_url}
    if code is not None and 200 <= code < 300:
        delivery.finish(attempt, **fields)
        return
    error = error or f"{agent.webhook_url} answered HTTP {code}."
    if code is not None and code < 500 and code != 429:
        delivery.fail(error, attempt=attempt, **fields)
    elif attempt >= WebhookDelivery.max_attempts():
        delivery.fail(f"{error} Gave up after {attempt} tries.", attempt=attempt, **fields)
    else:
        backoff = settings.WEBHOOK_RETRY_SECONDS * 2 ** (attempt - 1)
        if delivery.try_again(attempt=attempt, error=error, retry_in=backoff, **fields):
            log.info("webhook delivery %s: try %s failed (%s); next try in %.0f s", delivery.pk, attempt, error,
                     backoff)
