"""Send an OpenAI Agents SDK program's traces to Loopsite, with the model messages and tool calls.

The SDK's own exporter sends `response` spans with only the response id and usage. This processor
reads each span in the process that ran it (as the built-in analyst's exporter, runs/tracing.py,
does), so model input and output, tool arguments and results reach Loopsite. Two lines in your
program:

    from runs.agents_sdk import LoopsiteProcessor
    agents.add_trace_processor(LoopsiteProcessor("http://loopsite:8000", token="lsk_...", version="1.4.0"))

(`set_trace_processors([...])` instead to stop sending to OpenAI.) Spans go as OTLP JSON to
`/v1/traces` with the agent's token, one request per finished trace (or per 512 spans), from a
background thread; `shutdown()` (called by the SDK at exit) sends what is left.

Needs only the Agents SDK and the standard library: copy this file and runs/tracing.py into your
project if Loopsite itself is not installed there. No Django imports here.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import urllib.request
from datetime import datetime, timezone
from typing import Any

from agents.tracing import TracingProcessor

from .tracing import ExportContext, span_to_line, strip_prefix

log = logging.getLogger(__name__)

MAX_BATCH = 512


def _nanos(value: str) -> str:
    if not value:
        return "0"
    text = value.rstrip("Z")
    head, _, fraction = text.partition(".")
    moment = datetime.fromisoformat(head).replace(tzinfo=timezone.utc)
    return str(int(moment.timestamp()) * 1_000_000_000 + int((fraction or "0")[:9].ljust(9, "0")))


def any_value(value: Any) -> dict[str, Any]:
    """A value as an OTLP JSON AnyValue (an object as its JSON text)."""
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}
    if isinstance(value, float):
        return {"doubleValue": value}
    if isinstance(value, (list, tuple)):
        return {"arrayValue": {"values": [any_value(item) for item in value]}}
    if isinstance(value, dict):
        return {"stringValue": json.dumps(value, ensure_ascii=False, default=str)}
    return {"stringValue": "" if value is None else str(value)}


def otlp_attributes(values: dict[str, Any]) -> list[dict[str, Any]]:
    """A dict as OTLP JSON attributes (a list of key/value pairs)."""
    return [{"key": key, "value": any_value(value)} for key, value in values.items()]


def _otlp_id(sdk_id: str, width: int) -> str:
    """OTLP ids are 16 bytes (trace) and 8 bytes (span) in hex; SDK span ids carry 24 hex digits."""
    text = "".join(ch for ch in (sdk_id or "").lower() if ch in "0123456789abcdef")
    return text[:width].rjust(width, "0") if text else ""


def line_to_otlp_span(line: dict[str, Any]) -> dict[str, Any]:
    """One HALO line (runs/tracing.py) as an OTLP JSON span."""
    status = line.get("status") or {}
    return {
        "traceId": _otlp_id(line.get("trace_id"), 32), "spanId": _otlp_id(line.get("span_id"), 16),
        "parentSpanId": _otlp_id(line.get("parent_span_id"), 16) if line.get("parent_span_id") else "",
        "name": line.get("name") or "", "kind": 3 if line.get("kind") == "SPAN_KIND_CLIENT" else 1,
        "startTimeUnixNano": _nanos(line.get("start_time") or ""), "endTimeUnixNano": _nanos(line.get("end_time") or ""),
        "attributes": otlp_attributes(line.get("attributes") or {}),
        "status": {"code": 2 if status.get("code") == "STATUS_CODE_ERROR" else 1, "message": status.get("message") or ""},
    }


class LoopsiteProcessor(TracingProcessor):
    """An Agents SDK TracingProcessor that exports spans, with messages and tool calls, to Loopsite."""

    def __init__(self, base_url: str, *, token: str, service_name: str = "agents-sdk-app", version: str | None = None,
                 timeout: float = 10.0) -> None:
        self._url = base_url.rstrip("/") + ("" if base_url.rstrip("/").endswith("/v1/traces") else "/v1/traces")
        self._token = token
        self._timeout = timeout
        self._ctx = ExportContext(project_id=service_name, service_name=service_name, service_version=version)
        self._resource = otlp_attributes(self._ctx.resource_attributes())
        self._lock = threading.Lock()
        self._pending: list[dict[str, Any]] = []
        self._workflows: dict[str, str | None] = {}
        self._parents: dict[str, str | None] = {}
        self._agents: dict[str, str] = {}
        self._queue: queue.Queue[list[dict[str, Any]] | None] = queue.Queue()
        self._sender = threading.Thread(target=self._send_loop, name="loopsite-exporter", daemon=True)
        self._sender.start()

    # -- TracingProcessor

    def on_trace_start(self, trace) -> None:  # noqa: ANN001
        data = trace.export() or {}
        self._workflows[strip_prefix(data.get("id"), "trace_")] = data.get("workflow_name")

    def on_trace_end(self, trace) -> None:  # noqa: ANN001
        data = trace.export() or {}
        self._workflows.pop(strip_prefix(data.get("id"), "trace_"), None)
        self.force_flush(wait=False)

    def on_span_start(self, span) -> None:  # noqa: ANN001
        self._parents[span.span_id] = span.parent_id
        data = getattr(span, "span_data", None)
        if getattr(data, "type", None) == "agent" and getattr(data, "name", None):
            self._agents[span.span_id] = data.name

    def on_span_end(self, span) -> None:  # noqa: ANN001
        raw = span.export() or {}
        line = span_to_line(span, ctx=self._ctx,
                            workflow_name=self._workflows.get(strip_prefix(raw.get("trace_id"), "trace_")),
                            agent_name=self._enclosing_agent(raw.get("id")))
        with self._lock:
            self._pending.append(line_to_otlp_span(line))
            full = len(self._pending) >= MAX_BATCH
        if full:
            self.force_flush(wait=False)

    def force_flush(self, wait: bool = True) -> None:
        with self._lock:
            batch, self._pending = self._pending, []
        if batch:
            self._queue.put(batch)
        if wait:
            self._queue.join()

    def shutdown(self) -> None:
        self.force_flush(wait=True)
        self._queue.put(None)
        self._sender.join(timeout=self._timeout + 1)

    # -- sending

    def _enclosing_agent(self, span_id: str | None) -> str | None:
        for _ in range(1000):
            if not span_id:
                return None
            if span_id in self._agents:
                return self._agents[span_id]
            span_id = self._parents.get(span_id)
        return None

    def _send_loop(self) -> None:
        while True:
            batch = self._queue.get()
            try:
                if batch is None:
                    return
                self._post(batch)
            except Exception:  # noqa: BLE001 - tracing must never break the agent
                log.warning("Loopsite: could not send %d span(s) to %s", len(batch or []), self._url, exc_info=True)
            finally:
                self._queue.task_done()

    def _post(self, spans: list[dict[str, Any]]) -> None:
        body = json.dumps({"resourceSpans": [{"resource": {"attributes": self._resource}, "scopeSpans": [
            {"scope": {"name": "loopsite.agents_sdk", "version": "1"}, "spans": spans}]}]}).encode("utf-8")
        request = urllib.request.Request(self._url, data=body, method="POST", headers={
            "Content-Type": "application/json", "Authorization": f"Bearer {self._token}"})
        with urllib.request.urlopen(request, timeout=self._timeout) as response:  # noqa: S310 - the configured URL
            reply = json.loads(response.read() or b"{}")
        rejected = (reply.get("partialSuccess") or {}).get("rejectedSpans")
        if rejected and int(rejected):
            log.warning("Loopsite rejected %s span(s): %s", rejected, reply["partialSuccess"].get("errorMessage"))
