"""Write Agents SDK spans as HALO JSONL: one OTel-style line per finished span.

The output contract is the seed notebook's exporter: ids without their SDK
prefixes, fixed-width OTLP timestamps, `status`, `resource.attributes` (with
`service.name`, `service.version` = harness version, `agent.config.version`),
`scope`, attributes per span type and the `inference.*` projection HALO indexes.
One addition: `response` spans also carry the model input and output
(`llm.input_messages` / `llm.output_messages`, JSON, capped in size) so that model
calls can be read in the UI and by HALO.

This module runs inside the agent's child process: no Django imports here.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path
from typing import Any

from agents.tracing import TracingProcessor

EXPORT_SCHEMA_VERSION = 1
SCOPE_NAME = "openai-agents-sdk"
# One JSON attribute (model input or output) is cut to about this many characters.
MAX_ATTRIBUTE_CHARS = 20_000
# Long strings inside a message (tool output, file contents) are shortened first.
_STRING_LIMITS = (4_000, 1_000, 200)
# Generation spans expand the first and the last this many input messages into flat keys.
EXPANDED_INPUT_MESSAGES = 4
EXPANDED_CONTENT_CHARS = 4_000

OBSERVATION_KIND_BY_TYPE = {
    "agent": "AGENT",
    "generation": "LLM",
    "response": "LLM",
    "function": "TOOL",
    "mcp_tools": "TOOL",
    "handoff": "CHAIN",
    "guardrail": "GUARDRAIL",
    "custom": "SPAN",
    "task": "SPAN",
    "turn": "SPAN",
    "transcription": "SPAN",
    "speech": "SPAN",
    "speech_group": "SPAN",
}


@dataclass(frozen=True)
class ExportContext:
    """What every line of one run's trace shares."""

    project_id: str
    service_name: str
    service_version: str | None = None
    deployment_environment: str | None = None
    extra_resource_attributes: Mapping[str, Any] = field(default_factory=dict)

    def resource_attributes(self) -> dict[str, Any]:
        attrs: dict[str, Any] = {"service.name": self.service_name}
        if self.service_version:
            attrs["service.version"] = self.service_version
        if self.deployment_environment:
            attrs["deployment.environment"] = self.deployment_environment
        attrs.update(self.extra_resource_attributes)
        return attrs


class HaloJsonlProcessor(TracingProcessor):
    """A TracingProcessor that appends one HALO JSONL line per finished span."""

    def __init__(self, path: Path, *, ctx: ExportContext) -> None:
        self._path = Path(path)
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._ctx = ctx
        self._lock = threading.Lock()
        self._handle = self._path.open("a", encoding="utf-8")
        self._traces: dict[str, tuple[str | None, str | None, dict[str, Any]]] = {}
        # span id -> parent span id, and the agent name of agent spans: lets every span
        # inside an agent carry `inference.agent_name` (HALO counts spans without one).
        self._parents: dict[str, str | None] = {}
        self._agents: dict[str, str] = {}

    def on_trace_start(self, trace) -> None:  # noqa: ANN001
        data = trace.export() or {}
        metadata = data.get("metadata") if isinstance(data.get("metadata"), dict) else {}
        trace_id = strip_prefix(data.get("id"), "trace_")
        self._traces[trace_id] = (data.get("workflow_name"), data.get("group_id"), metadata)

    def on_trace_end(self, trace) -> None:  # noqa: ANN001
        data = trace.export() or {}
        self._traces.pop(strip_prefix(data.get("id"), "trace_"), None)
        if not self._traces:
            self._parents.clear()
            self._agents.clear()
        self.force_flush()

    def on_span_start(self, span) -> None:  # noqa: ANN001
        self._parents[span.span_id] = span.parent_id
        data = getattr(span, "span_data", None)
        if getattr(data, "type", None) == "agent" and getattr(data, "name", None):
            self._agents[span.span_id] = data.name

    def _enclosing_agent(self, span_id: str | None) -> str | None:
        seen = 0
        while span_id and seen < 1000:
            if span_id in self._agents:
                return self._agents[span_id]
            span_id = self._parents.get(span_id)
            seen += 1
        return None

    def on_span_end(self, span) -> None:  # noqa: ANN001
        raw = span.export() or {}
        workflow_name, group_id, metadata = self._traces.get(
            strip_prefix(raw.get("trace_id"), "trace_"), (None, None, {})
        )
        line = span_to_line(
            span, ctx=self._ctx, workflow_name=workflow_name, group_id=group_id, trace_metadata=metadata,
            agent_name=self._enclosing_agent(raw.get("id")),
        )
        encoded = json.dumps(line, separators=(",", ":"), ensure_ascii=False, default=str)
        with self._lock:
            if not self._handle.closed:
                self._handle.write(encoded + "\n")
                # Flushed per line: if the process is killed, what was written survives.
                self._handle.flush()

    def shutdown(self) -> None:
        with self._lock:
            if not self._handle.closed:
                self._handle.flush()
                self._handle.close()

    def force_flush(self) -> None:
        with self._lock:
            if not self._handle.closed:
                self._handle.flush()


def span_to_line(
    span,  # noqa: ANN001
    *,
    ctx: ExportContext,
    workflow_name: str | None = None,
    group_id: str | None = None,
    trace_metadata: Mapping[str, Any] | None = None,
    agent_name: str | None = None,
) -> dict[str, Any]:
    """The HALO JSONL record for one SDK span (`agent_name`: the agent it ran inside, if any)."""
    raw = span.export() or {}
    data = raw.get("span_data") or {}
    span_type = str(data.get("type") or "custom")
    error = raw.get("error")

    attributes, projection = attributes_for(span_type, data)
    if span_type == "response":
        extra, extra_projection = _response_payload_attrs(getattr(span, "span_data", None))
        for key, value in extra.items():
            # Usage from the export wins; the response object fills what it lacks.
            if key.startswith("llm.token_count.") and key in attributes:
                continue
            attributes[key] = value
        for key, value in extra_projection.items():
            if value is not None and projection.get(key) is None:
                projection[key] = value
    if error and error.get("data"):
        attributes["sdk.error.data"] = capped_json(error.get("data"))
    if workflow_name:
        attributes["agent.workflow.name"] = workflow_name
    if group_id:
        attributes["agent.workflow.group_id"] = group_id
    for key, value in (trace_metadata or {}).items():
        attributes[f"agent.trace_metadata.{key}"] = value if _is_scalar(value) else to_json(value)

    attributes.update({
        "inference.export.schema_version": EXPORT_SCHEMA_VERSION,
        "inference.project_id": ctx.project_id,
        "inference.observation_kind": OBSERVATION_KIND_BY_TYPE.get(span_type, "SPAN"),
        "inference.llm.provider": projection.get("llm_provider"),
        "inference.llm.model_name": projection.get("llm_model_name"),
        "inference.llm.input_tokens": projection.get("input_tokens"),
        "inference.llm.output_tokens": projection.get("output_tokens"),
        "inference.llm.cost.total": projection.get("cost_total"),
        "inference.user_id": projection.get("user_id"),
        "inference.session_id": group_id,
        "inference.agent_name": projection.get("agent_name") or agent_name or "",
    })

    return {
        "trace_id": strip_prefix(raw.get("trace_id"), "trace_"),
        "span_id": strip_prefix(raw.get("id"), "span_"),
        "parent_span_id": strip_prefix(raw.get("parent_id"), "span_"),
        "trace_state": "",
        "name": span_name(span_type, data),
        "kind": "SPAN_KIND_CLIENT" if span_type in {"generation", "response"} else "SPAN_KIND_INTERNAL",
        "start_time": otlp_timestamp(raw.get("started_at")),
        "end_time": otlp_timestamp(raw.get("ended_at")),
        "status": {
            "code": "STATUS_CODE_ERROR" if error else "STATUS_CODE_OK",
            "message": str((error or {}).get("message") or ""),
        },
        "resource": {"attributes": ctx.resource_attributes()},
        "scope": {"name": SCOPE_NAME, "version": sdk_version()},
        "attributes": {key: value for key, value in attributes.items() if value is not None},
    }


# -- attributes per span type -------------------------------------------------

def attributes_for(span_type: str, data: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(attributes, projection for the inference.* keys) of one exported span_data."""
    handler = {
        "agent": _agent,
        "generation": _generation,
        "response": _response,
        "function": _function,
        "mcp_tools": _mcp_tools,
        "handoff": _handoff,
        "guardrail": _guardrail,
    }.get(span_type)
    if handler is None:
        return _custom(span_type, data)
    return handler(data)


def _agent(data: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    name = data.get("name") or ""
    return drop_none({
        "openinference.span.kind": "AGENT",
        "agent.name": name,
        "agent.handoffs": to_json(data.get("handoffs")),
        "agent.tools": to_json(data.get("tools")),
        "agent.output_type": data.get("output_type"),
    }), {"agent_name": name}


def _generation(data: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    usage = data.get("usage") or {}
    input_messages = list(data.get("input") or [])
    output_messages = list(data.get("output") or [])
    prompt, completion = _token_counts(usage)
    attrs: dict[str, Any] = {
        "openinference.span.kind": "LLM",
        "llm.provider": "openai",
        "llm.model_name": data.get("model"),
        "llm.invocation_parameters": to_json(data.get("model_config")),
        "llm.input_messages": capped_json(input_messages),
        "llm.output_messages": capped_json(output_messages),
        "llm.token_count.prompt": prompt,
        "llm.token_count.completion": completion,
        "llm.token_count.total": as_int(usage.get("total_tokens")),
    }
    attrs.update(expand_messages("llm.input_messages", input_messages, keep_last=EXPANDED_INPUT_MESSAGES))
    attrs.update(expand_messages("llm.output_messages", output_messages))
    return drop_none(attrs), {
        "llm_provider": "openai",
        "llm_model_name": data.get("model"),
        "input_tokens": prompt,
        "output_tokens": completion,
    }


def _response(data: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    usage = data.get("usage") or {}
    prompt, completion = _token_counts(usage)
    return drop_none({
        "openinference.span.kind": "LLM",
        "llm.provider": "openai",
        "llm.response.id": data.get("response_id"),
        "llm.token_count.prompt": prompt,
        "llm.token_count.completion": completion,
        "llm.token_count.total": as_int(usage.get("total_tokens")),
    }), {"llm_provider": "openai", "input_tokens": prompt, "output_tokens": completion}


def _response_payload_attrs(span_data: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Model name, input and output of a response span, read from the span object itself.

    The SDK's export() keeps only the response id and usage; the span data object
    also holds the `input` sent and the `response` received (when the run includes
    sensitive data in traces).
    """
    if span_data is None:
        return {}, {}
    attrs: dict[str, Any] = {}
    projection: dict[str, Any] = {}
    response = getattr(span_data, "response", None)
    model_input = getattr(span_data, "input", None)
    if model_input is not None:
        items = [{"role": "user", "content": model_input}] if isinstance(model_input, str) else model_input
        attrs["llm.input_messages"] = capped_json(to_jsonable(items))
    if response is not None:
        model = getattr(response, "model", None)
        if model:
            attrs["llm.model_name"] = model
            projection["llm_model_name"] = model
        attrs["llm.output_messages"] = capped_json(to_jsonable(getattr(response, "output", None) or []))
        usage = getattr(response, "usage", None)
        if usage is not None:
            prompt = as_int(getattr(usage, "input_tokens", None))
            completion = as_int(getattr(usage, "output_tokens", None))
            attrs["llm.token_count.prompt"] = prompt
            attrs["llm.token_count.completion"] = completion
            attrs["llm.token_count.total"] = as_int(getattr(usage, "total_tokens", None))
            projection["input_tokens"] = prompt
            projection["output_tokens"] = completion
    return drop_none(attrs), projection


def _function(data: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    return drop_none({
        "openinference.span.kind": "TOOL",
        "tool.name": data.get("name"),
        "input.value": cap_text(data.get("input")),
        "output.value": cap_text(data.get("output")),
        "mcp.data": to_json(data.get("mcp_data")),
    }), {}


def _mcp_tools(data: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    return drop_none({
        "openinference.span.kind": "TOOL",
        "mcp.server": data.get("server"),
        "mcp.tools.listed": to_json(data.get("result")),
    }), {}


def _handoff(data: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    return drop_none({
        "openinference.span.kind": "CHAIN",
        "agent.handoff.from": data.get("from_agent"),
        "agent.handoff.to": data.get("to_agent"),
    }), {"agent_name": data.get("to_agent")}


def _guardrail(data: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    return drop_none({
        "openinference.span.kind": "GUARDRAIL",
        "guardrail.name": data.get("name"),
        "guardrail.triggered": bool(data.get("triggered")),
    }), {}


def _custom(span_type: str, data: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    attrs: dict[str, Any] = {"openinference.span.kind": "CHAIN", "sdk.span.type": span_type}
    if data.get("name"):
        attrs["sdk.span.name"] = data.get("name")
    payload = data.get("data") or {}
    if isinstance(payload, Mapping):
        for key, value in payload.items():
            attrs[f"sdk.data.{key}"] = value if _is_scalar(value) else to_json(value)
    if "usage" in data:
        attrs["llm.token_count.total"] = as_int((data.get("usage") or {}).get("total_tokens"))
    return drop_none(attrs), {}


def _token_counts(usage: Mapping[str, Any]) -> tuple[int | None, int | None]:
    prompt = as_int(usage.get("input_tokens") if usage.get("input_tokens") is not None else usage.get("prompt_tokens"))
    completion = as_int(
        usage.get("output_tokens") if usage.get("output_tokens") is not None else usage.get("completion_tokens")
    )
    return prompt, completion


def expand_messages(prefix: str, messages: Iterable[Any], *, keep_last: int | None = None) -> dict[str, Any]:
    """OpenInference flat keys for Chat Completions style messages (generation spans).

    With `keep_last`, only the first message and the last `keep_last` ones are
    expanded (keeping their real indices): each call resends the whole history, and
    the full history is in the capped JSON attribute already.
    """
    attrs: dict[str, Any] = {}
    messages = list(messages or [])
    for index, message in enumerate(messages):
        if keep_last is not None and 0 < index < len(messages) - keep_last:
            continue
        if not isinstance(message, Mapping):
            continue
        base = f"{prefix}.{index}.message"
        if message.get("role") is not None:
            attrs[f"{base}.role"] = message["role"]
        content = message.get("content")
        if isinstance(content, str):
            attrs[f"{base}.content"] = cap_text(content, EXPANDED_CONTENT_CHARS)
        elif content is not None:
            attrs[f"{base}.content"] = capped_json(content, EXPANDED_CONTENT_CHARS)
        for tool_index, tool_call in enumerate(message.get("tool_calls") or []):
            tool_call = tool_call or {}
            function = tool_call.get("function") or {}
            call = f"{base}.tool_calls.{tool_index}.tool_call"
            attrs[f"{call}.id"] = tool_call.get("id")
            attrs[f"{call}.function.name"] = function.get("name")
            attrs[f"{call}.function.arguments"] = cap_text(function.get("arguments"), EXPANDED_CONTENT_CHARS)
        if message.get("tool_call_id"):
            attrs[f"{base}.tool_call_id"] = message["tool_call_id"]
        if message.get("name"):
            attrs[f"{base}.name"] = message["name"]
    return drop_none(attrs)


# -- values -------------------------------------------------------------------

def strip_prefix(value: Any, prefix: str) -> str:
    if not value:
        return ""
    text = str(value)
    return text[len(prefix):] if text.startswith(prefix) else text


def otlp_timestamp(value: str | None) -> str:
    """`2026-11-26T07:19:00.123456000Z`: UTC, nanosecond width, as HALO expects."""
    if not value:
        return ""
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    parsed = parsed.astimezone(timezone.utc)
    return parsed.strftime("%Y-%m-%dT%H:%M:%S.") + f"{parsed.microsecond:06d}000Z"


def span_name(span_type: str, data: Mapping[str, Any]) -> str:
    if data.get("name"):
        return f"{span_type}.{data['name']}"
    if data.get("model"):
        return f"{span_type}.{data['model']}"
    return span_type


def to_jsonable(value: Any) -> Any:
    """Plain JSON values from SDK objects (pydantic models, lists of them, dicts)."""
    if hasattr(value, "model_dump"):
        try:
            return value.model_dump(mode="json", exclude_none=True)
        except Exception:  # noqa: BLE001 - a trace must never break the run
            return str(value)
    if isinstance(value, Mapping):
        return {str(key): to_jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(item) for item in value]
    if _is_scalar(value):
        return value
    return str(value)


def to_json(value: Any) -> str | None:
    if value is None:
        return None
    return json.dumps(value, default=str, separators=(",", ":"), ensure_ascii=False)


def capped_json(value: Any, limit: int = MAX_ATTRIBUTE_CHARS) -> str | None:
    """JSON of `value` in at most about `limit` characters, still valid JSON when possible.

    Long strings are shortened first; for a list, the oldest items after the first
    are then replaced by one `{"type": "truncated", "omitted_items": n}` marker.
    """
    if value is None:
        return None
    value = to_jsonable(value)
    text = to_json(value)
    if len(text) <= limit:
        return text
    for string_limit in _STRING_LIMITS:
        shortened = _shorten_strings(value, string_limit)
        text = to_json(shortened)
        if len(text) <= limit:
            return text
        if isinstance(shortened, list) and len(shortened) > 2:
            head, tail = shortened[:1], shortened[1:]
            while len(tail) > 1:
                tail = tail[1:]
                omitted = len(shortened) - 1 - len(tail)
                text = to_json(head + [{"type": "truncated", "omitted_items": omitted}] + tail)
                if len(text) <= limit:
                    return text
    return text[: limit - 40] + f"...[truncated {len(text) - limit + 40} chars]"


def cap_text(value: Any, limit: int = MAX_ATTRIBUTE_CHARS) -> Any:
    if not isinstance(value, str) or len(value) <= limit:
        return value
    return value[: limit - 40] + f"...[truncated {len(value) - limit + 40} chars]"


def _shorten_strings(value: Any, limit: int) -> Any:
    if isinstance(value, str):
        return value if len(value) <= limit else value[:limit] + f"...[{len(value) - limit} more chars]"
    if isinstance(value, list):
        return [_shorten_strings(item, limit) for item in value]
    if isinstance(value, dict):
        return {key: _shorten_strings(item, limit) for key, item in value.items()}
    return value


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def as_int(value: Any) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def drop_none(values: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in values.items() if value is not None}


_SDK_VERSION: str | None = None


def sdk_version() -> str:
    global _SDK_VERSION
    if _SDK_VERSION is None:
        try:
            _SDK_VERSION = version("openai-agents")
        except Exception:  # noqa: BLE001
            _SDK_VERSION = "unknown"
    return _SDK_VERSION
