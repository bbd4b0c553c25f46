"""Ways in for external agents' traces: the OTLP/HTTP endpoint and the agents pages (token, upload, endpoint,
webhook)."""

import json
import logging
import threading
import zlib

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_not_required
from django.core.exceptions import PermissionDenied
from django.db import DatabaseError
from django.db.models import Count, Max
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods, require_POST
# Imported with the views (once, in the preloading web master), not by a worker's first export: ~65 ms.
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest  # noqa: F401
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from loopsite.roles import APPROVER, ENGINEER, REVIEWER, has_role, role_required

from .forms import AgentEndpointForm, AgentForm, AgentWebhookForm, TraceUploadForm
from .ingest import (IngestError, import_trace_file, lines_from_otlp_json, lines_from_otlp_protobuf, no_nul_escapes,
                     store_lines)
from .models import Agent

log = logging.getLogger(__name__)

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
reader_required = role_required(REVIEWER, APPROVER, ENGINEER)
DELIVERIES_SHOWN = 5  # the agent page's latest webhook deliveries


# ---------------------------------------------------------------- OTLP/HTTP


class _TooLarge(Exception):
    pass


class _IngestSlots:
    """At most INGEST_MAX_CONCURRENT exports in this process at once; `take()` never waits."""

    def __init__(self):
        self._lock = threading.Lock()
        self.busy = 0

    def take(self) -> bool:
        with self._lock:
            if self.busy >= settings.INGEST_MAX_CONCURRENT:
                return False
            self.busy += 1
            return True

    def give_back(self) -> None:
        with self._lock:
            self.busy -= 1


ingest_slots = _IngestSlots()


def _rpc_status(code: int, message: str) -> bytes:
    """A google.rpc.Status in protobuf (field 1 code, field 2 message), written by hand: two fields."""

    def varint(value: int) -> bytes:
        out = bytearray()
        while True:
            byte = value & 0x7F
            value >>= 7
            out.append(byte | (0x80 if value else 0))
            if not value:
                return bytes(out)

    text = message.encode("utf-8")
    return b"\x08" + varint(code) + b"\x12" + varint(len(text)) + text


def _otlp_error(status: int, message: str, *, protobuf: bool, retry_after: int | None = None) -> HttpResponse:
    """An OTLP error reply in the request's encoding (a google.rpc.Status), or JSON when it had none we speak."""
    grpc_code = {400: 3, 401: 16, 413: 8, 415: 3, 429: 8, 503: 14}.get(status, 2)
    if protobuf:
        response = HttpResponse(_rpc_status(grpc_code, message), status=status, content_type=PROTOBUF)
    else:
        response = HttpResponse(json.dumps({"code": grpc_code, "message": message}), status=status, content_type=JSON)
    if retry_after is not None:
        response["Retry-After"] = str(retry_after)
    return response


def _read_body(request, limit: int) -> bytes:
    """The request body, decompressed when gzip, refusing more than `limit` bytes before or after."""
    declared = request.META.get("CONTENT_LENGTH")
    try:
        if declared and int(declared) > limit:
            raise _TooLarge(f"The body is {int(declared):,} bytes; the limit is {limit:,}.")
    except ValueError:
        pass
    body = request.read(limit + 1)
    if len(body) > limit:
        raise _TooLarge(f"The body is over the limit of {limit:,} bytes.")
    encoding = (request.headers.get("Content-Encoding") or "identity").strip().lower()
    if encoding == "gzip":
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            data = inflater.decompress(body, limit + 1)
        except zlib.error as exc:
            raise IngestError(f"The body is not valid gzip ({exc}).") from exc
        if len(data) > limit or inflater.unconsumed_tail:
            raise _TooLarge(f"The body unpacks to more than the limit of {limit:,} bytes.")
        if not inflater.eof:
            raise IngestError("The gzip body is cut off.")
        return data
    if encoding not in ("identity", ""):
        raise IngestError(f"Content-Encoding {encoding} is not supported: send gzip or none.")
    return body


@csrf_exempt
@login_not_required
def otlp_traces(request):
    """OTLP/HTTP trace export: `POST /v1/traces` with `Authorization: Bearer <agent token>`.

    Protobuf or JSON, optionally gzip; answered in the request's encoding. Spans that cannot be taken
    (bad ids) are counted in `partial_success` with the reason; the rest are stored before the reply."""
    content_type = (request.content_type or "").lower()
    protobuf = content_type == PROTOBUF
    if request.method != "POST":
        response = _otlp_error(405, "Use POST.", protobuf=protobuf)
        response["Allow"] = "POST"
        return response
    agent = Agent.for_authorization(request.headers.get("Authorization"))
    if agent is None:
        return _otlp_error(401, "A valid agent token is needed: Authorization: Bearer <token> (it may be revoked).",
                           protobuf=protobuf)
    if content_type not in (PROTOBUF, JSON):
        return _otlp_error(415, f"Content-Type {content_type or '(none)'} is not supported: send {PROTOBUF} or {JSON}.",
                           protobuf=False)
    if not ingest_slots.take():
        return _otlp_error(429, f"{settings.INGEST_MAX_CONCURRENT} exports are being stored at once; nothing was "
                                "read from this one. Retry after the time in Retry-After.", protobuf=protobuf,
                           retry_after=1)
    try:
        return _ingest(request, agent, protobuf=protobuf)
    finally:
        ingest_slots.give_back()


def _ingest(request, agent: Agent, *, protobuf: bool) -> HttpResponse:
    try:
        body = _read_body(request, settings.TRACE_MAX_UPLOAD_BYTES)
        if protobuf:
            lines, rejected = lines_from_otlp_protobuf(body)
        else:
            try:
                document = json.loads(no_nul_escapes(body.decode("utf-8")))
            except (UnicodeDecodeError, ValueError) as exc:
                raise IngestError(f"The body is not JSON ({exc}).") from exc
            lines, rejected = lines_from_otlp_json(document)
    except _TooLarge as exc:
        return _otlp_error(413, str(exc), protobuf=protobuf)
    except IngestError as exc:
        return _otlp_error(400, str(exc), protobuf=protobuf)
    try:
        outcome = store_lines(agent=agent, lines=lines)
    except DatabaseError:
        log.exception("OTLP ingest for agent %s could not be stored", agent.slug)
        return _otlp_error(503, "The spans could not be stored just now; nothing was kept. Retry.", protobuf=protobuf,
                           retry_after=2)
    outcome.rejected[:0] = rejected
    return _export_response(protobuf=protobuf, rejected=outcome.rejected_count, message=outcome.rejection_message())


def _export_response(*, protobuf: bool, rejected: int, message: str) -> HttpResponse:
    if protobuf:
        reply = ExportTraceServiceResponse()
        if rejected:
            reply.partial_success.rejected_spans = rejected
            reply.partial_success.error_message = message
        return HttpResponse(reply.SerializeToString(), content_type=PROTOBUF)
    body = {"partialSuccess": {"rejectedSpans": str(rejected), "errorMessage": message}} if rejected else {}
    return HttpResponse(json.dumps(body), content_type=JSON)


# ---------------------------------------------------------------- agents pages


def _agent_context(agent: Agent, request, **extra) -> dict:
    runs = agent.runs.aggregate(count=Count("id"), last=Max("created_at"))
    return {
        "agent": agent, "run_count": runs["count"], "last_run": runs["last"],
        "versions": agent.harnesses.annotate(run_count=Count("runs")).order_by("-created_at")[:50],
        "is_engineer": has_role(request.user, ENGINEER),
        "endpoint": request.build_absolute_uri(reverse("runs:otlp-traces")),
        "upload_form": TraceUploadForm(), "limit": settings.TRACE_MAX_UPLOAD_BYTES,
        "endpoint_form": extra.pop("endpoint_form", None) or _endpoint_form(agent),
        "webhook_form": extra.pop("webhook_form", None) or AgentWebhookForm(
            initial={"url": agent.webhook_url} if agent.webhook_url else None),
        "deliveries": agent.deliveries.all()[:DELIVERIES_SHOWN], **extra,
    }


def _endpoint_form(agent: Agent) -> AgentEndpointForm:
    initial = {"url": agent.endpoint_url, "body": agent.endpoint_body, "response_path": agent.endpoint_response_path,
               "header_name": agent.endpoint_header_name} if agent.endpoint_url else None
    return AgentEndpointForm(initial=initial, agent=agent)


@role_required(ENGINEER)
@require_POST
def agent_endpoint(request, slug):
    """Register, change or (op=remove) remove the HTTP endpoint Loopsite calls to evaluate a candidate version."""
    agent = get_object_or_404(Agent, slug=slug, kind=Agent.Kind.EXTERNAL)
    if request.POST.get("op") == "remove":
        agent.set_endpoint(by=request.user, url="", body="", response_path="")
        messages.success(request, f"Removed the HTTP endpoint of {agent.name}.")
        return redirect(agent)
    form = AgentEndpointForm(request.POST, agent=agent)
    if not form.is_valid():
        return render(request, "runs/agent_detail.html", _agent_context(agent, request, endpoint_form=form), status=400)
    data = form.cleaned_data
    agent.set_endpoint(by=request.user, url=data["url"], body=data["body"], response_path=data["response_path"],
                       header_name=data["header_name"], header_value=data["header_value"] or None)
    messages.success(request, f"Saved: Loopsite will call {agent.endpoint_url} to evaluate candidate versions.")
    return redirect(agent)


@role_required(ENGINEER)
@require_POST
def agent_webhook(request, slug):
    """Set or change (op=remove: remove) the webhook; a new signing secret is shown in this response only."""
    agent = get_object_or_404(Agent, slug=slug, kind=Agent.Kind.EXTERNAL)
    if request.POST.get("op") == "remove":
        agent.set_webhook(by=request.user, url="")
        messages.success(request, f"Removed the webhook of {agent.name}: no more events are sent.")
        return redirect(agent)
    form = AgentWebhookForm(request.POST)
    if not form.is_valid():
        return render(request, "runs/agent_detail.html", _agent_context(agent, request, webhook_form=form), status=400)
    secret = agent.set_webhook(by=request.user, url=form.cleaned_data["url"], new_secret=form.cleaned_data["new_secret"])
    if secret:
        return render(request, "runs/agent_detail.html", _agent_context(agent, request, new_webhook_secret=secret))
    messages.success(request, f"Saved: events go to {agent.webhook_url}, signed with the same secret.")
    return redirect(agent)


@reader_required
@require_http_methods(["GET", "POST"])
def agent_list(request):
    is_engineer = has_role(request.user, ENGINEER)
    form = AgentForm(request.POST or None) if is_engineer else None
    if request.method == "POST":
        if not is_engineer:
            raise PermissionDenied("This needs the engineer role.")
        if form.is_valid():
            agent, token = Agent.create_external(by=request.user, name=form.cleaned_data["name"],
                                                 version_attribute=form.cleaned_data["version_attribute"])
            # The token is shown in this response only; it is never stored in clear.
            return render(request, "runs/agent_detail.html", _agent_context(agent, request, new_token=token))
    agents = Agent.objects.annotate(run_count=Count("runs"), last_run=Max("runs__created_at")).order_by("kind", "name")
    return render(request, "runs/agent_list.html", {"agents": agents, "form": form, "is_engineer": is_engineer})


@reader_required
def agent_detail(request, slug):
    agent = get_object_or_404(Agent, slug=slug)
    return render(request, "runs/agent_detail.html", _agent_context(agent, request))


@role_required(ENGINEER)
@require_POST
def agent_rotate(request, slug):
    agent = get_object_or_404(Agent, slug=slug, kind=Agent.Kind.EXTERNAL)
    token = agent.rotate_token(by=request.user)
    return render(request, "runs/agent_detail.html", _agent_context(agent, request, new_token=token))


@role_required(ENGINEER)
@require_POST
def agent_revoke(request, slug):
    agent = get_object_or_404(Agent, slug=slug, kind=Agent.Kind.EXTERNAL)
    agent.revoke_token(by=request.user)
    messages.success(request, f"The ingest token of {agent.name} is revoked: exports with it are refused from now on.")
    return redirect(agent)


@role_required(ENGINEER)
@require_http_methods(["GET", "POST"])
def agent_upload(request, slug):
    agent = get_object_or_404(Agent, slug=slug, kind=Agent.Kind.EXTERNAL)
    form = TraceUploadForm(request.POST or None, request.FILES or None)
    if request.method == "POST" and form.is_valid():
        upload = form.cleaned_data["file"]
        try:
            outcome = import_trace_file(agent=agent, data=upload.read(), name=upload.name, user=request.user)
        except IngestError as exc:
            form.add_error("file", str(exc))
        except DatabaseError:
            log.exception("trace upload %s for agent %s could not be stored", upload.name, agent.slug)
            form.add_error("file", f"{upload.name} could not be stored just now (the database refused the write); "
                                   "nothing of it was kept. Try again in a moment.")
            return render(request, "runs/agent_detail.html", _agent_context(agent, request, upload_form=form),
                          status=503)
        else:
            messages.success(request, f"Imported {outcome.spans_stored} span(s) from {upload.name}: "
                                      f"{outcome.runs_created} new run(s), {outcome.runs_updated} updated"
                                      + (f", {outcome.duplicates} already stored" if outcome.duplicates else "") + ".")
            return redirect(reverse("runs:list") + f"?agent={agent.slug}")
    context = _agent_context(agent, request, upload_form=form)
    return render(request, "runs/agent_detail.html", context, status=400 if request.method == "POST" else 200)

