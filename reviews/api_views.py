"""Closed-loop mode's read-only JSON API: what an automation (a coding agent's heartbeat) reads with its agent's
ingest token, `Authorization: Bearer lsk_...` (the token `POST /v1/traces` takes). A token reads its own agent only.

    GET /api/v1/agents/<slug>/handoff                   the newest handoff: its Markdown, its recommendations
                                                        (the machine-readable summary's top_priorities), which one
    GET /api/v1/agents/<slug>/suite                     the approved suite as the promptfoo config the suite page
                                                        downloads
    GET /api/v1/agents/<slug>/versions/<version>/gate   the latest finished gate run of one version (the version as
                                                        the traces name it, or its label here)

Each answer has an ETag; a request with `If-None-Match: <it>` gets 304 and no body while nothing changed, so
polling is cheap. Errors are JSON `{"status": ..., "message": ...}`: 401 without a valid token (a revoked one
included), 403 for another agent's URL, 404 while there is nothing yet, 405 for anything but GET and HEAD.
"""

from __future__ import annotations

import hashlib
import json
from functools import wraps
from typing import Any

from django.contrib.auth.decorators import login_not_required
from django.core.serializers.json import DjangoJSONEncoder
from django.http import HttpResponse, JsonResponse
from django.utils.cache import get_conditional_response, patch_vary_headers
from django.views.decorators.csrf import csrf_exempt

from runs.models import Agent, Harness

from . import halo
from .candidates import comparison
from .models import GateRun
from .optimization import handoff_facts, handoff_file, latest_agent_handoff
from .suite import promptfoo_config, suite_cases


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def _error(status: int, message: str) -> JsonResponse:
    response = JsonResponse({"status": status, "message": message}, status=status)
    if status == 401:
        response["WWW-Authenticate"] = 'Bearer realm="loopsite"'
    return response


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:40]


def _answer(request, payload: dict[str, Any], *, etag: str | None = None) -> HttpResponse:
    """`payload` as JSON with its ETag (by default a strong one of the body), or 304 when If-None-Match has it."""
    body = json.dumps(payload, indent=2, ensure_ascii=False, cls=DjangoJSONEncoder).encode("utf-8")
    response = HttpResponse(body, content_type="application/json")
    response["ETag"] = etag or f'"{_digest(body)}"'
    response["Cache-Control"] = "private, no-cache"
    patch_vary_headers(response, ["Authorization"])
    return get_conditional_response(request, etag=response["ETag"], response=response)


def api_view(view):
    """The token check every endpoint shares; the view gets the token's agent and may raise ApiError."""

    @csrf_exempt  # no session, no cookies: a write is refused below with a JSON 405, not a CSRF page
    @login_not_required
    @wraps(view)
    def wrapper(request, slug: str, **kwargs):
        if request.method not in ("GET", "HEAD"):
            response = _error(405, f"{request.method} is not allowed: this API is read-only (GET).")
            response["Allow"] = "GET, HEAD"
            return response
        agent = Agent.for_authorization(request.headers.get("Authorization"))
        if agent is None:
            return _error(401, "A valid agent token is needed: Authorization: Bearer <token> (it may be revoked).")
        if agent.slug != slug:
            return _error(403, f"This token is agent {agent.slug}'s: it reads /api/v1/agents/{agent.slug}/… only.")
        try:
            return view(request, agent, **kwargs)
        except ApiError as exc:
            return _error(exc.status, exc.message)

    return wrapper


@api_view
def api_handoff(request, agent: Agent):
    optimization = latest_agent_handoff(agent)
    if optimization is None:
        raise ApiError(404, f"No handoff for {agent.name} yet: HALO writes one after a cycle of its runs is gated.")
    return _answer(request, {
        **handoff_facts(optimization),
        "markdown": handoff_file(optimization),
        "recommendations": halo.top_priorities(optimization.handoff),
        "missing_sections": optimization.missing_sections,
    })


@api_view
def api_suite(request, agent: Agent):
    cases = list(suite_cases(agent=agent))
    if not cases:
        raise ApiError(404, f"{agent.name} has no approved eval cases yet, so there is no suite.")
    config = promptfoo_config(cases=cases)
    # The description names the export time, so the ETag is of the rest: weak, it changes with the suite only.
    unchanging = json.dumps({key: value for key, value in config.items() if key != "description"}, sort_keys=True,
                            cls=DjangoJSONEncoder)
    return _answer(request, config, etag=f'W/"{_digest(unchanging.encode("utf-8"))}"')


def _gate_row(row) -> dict[str, Any]:
    return {
        "eval_id": row.eval_id, "title": row.title,
        "verdict": "error" if row.error else "pass" if row.passed else "fail",
        "score": row.score, "reason": row.reason, "error": row.error, "flaky": row.flaky,
        "trace_id": row.run.trace_id if row.run else None,
    }


@api_view
def api_gate(request, agent: Agent, version: str):
    harness = (Harness.objects.filter(agent=agent, agent_version=version).first()
               or Harness.objects.filter(agent=agent, version=version).first())
    if harness is None:
        raise ApiError(404, f"{agent.name} has no version {version!r}.")
    gate_run = (GateRun.objects.filter(harness=harness, status__in=GateRun.FINISHED_STATUSES)
                .select_related("baseline__harness").order_by("-finished_at", "-pk").first())
    if gate_run is None:
        raise ApiError(404, f"Version {version} of {agent.name} has no finished gate run yet.")
    compared = None
    if gate_run.kind == GateRun.Kind.CANDIDATE and gate_run.baseline and gate_run.baseline.status == GateRun.Status.SUCCEEDED:
        result = comparison(gate_run.baseline, gate_run)
        compared = {**result.summary(), "promotable": not result.override_needed}
    succeeded = gate_run.status == GateRun.Status.SUCCEEDED
    return _answer(request, {
        "id": gate_run.pk, "version": harness.version, "agent_version": harness.agent_version or harness.version,
        "kind": gate_run.kind, "status": gate_run.status, "finished_at": gate_run.finished_at,
        "passed": succeeded and gate_run.total > 0 and gate_run.passed == gate_run.total,
        "error": gate_run.last_error,
        "counts": {"total": gate_run.total, "passed": gate_run.passed, "failed": gate_run.failed,
                   "errors": gate_run.errors, "flaky": gate_run.flaky},
        "rows": [_gate_row(row) for row in gate_run.rows.select_related("run")],
        "comparison": compared,
        "url": gate_run.get_absolute_url(),
    })


@csrf_exempt
@login_not_required
def api_not_found(request, rest: str):
    return _error(404, "No such API endpoint. There are /api/v1/agents/<slug>/handoff, /api/v1/agents/<slug>/suite "
                       "and /api/v1/agents/<slug>/versions/<version>/gate.")
