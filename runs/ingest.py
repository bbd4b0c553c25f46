"""Trace ingest: OTLP (protobuf and JSON), HALO JSONL and Agents SDK span exports become runs and spans.

Every span is turned into one HALO JSONL line (the schema the built-in runs store, see runs/tracing.py)
that keeps all of its raw attributes and gains the normalised keys the run page, the span detail and
HALO read: `llm.input_messages` / `llm.output_messages` (JSON lists of chat messages built from
OpenInference flat keys, OTel GenAI `gen_ai.input.messages` / `gen_ai.prompt.N.*`), `llm.model_name`,
`llm.token_count.*`, `tool.name`, `input.value`, `output.value` and the `inference.*` projection.
A key the span already has is never overwritten.

Each trace is one Run of its agent (keyed by agent + trace id): spans of a trace that arrive over
several requests are appended and the run's summary (input, output, model, tokens, timings, errors,
version) is recomputed. `store_lines` writes everything in one transaction.
"""

from __future__ import annotations

import base64
import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone as dt_timezone
from functools import lru_cache
from typing import Any, Iterable

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import Max
from django.template.defaultfilters import filesizeformat

from loopsite.models import AuditEvent

from .display import as_int
from .models import UNVERSIONED, Agent, Question, Run, Span

# An imported run's input is stored as a Question; very long inputs are cut (the full text stays in the spans).
MAX_QUESTION_BYTES = 2_000
MAX_ID_CHARS = 64

SPAN_KINDS = ("SPAN_KIND_UNSPECIFIED", "SPAN_KIND_INTERNAL", "SPAN_KIND_SERVER", "SPAN_KIND_CLIENT",
              "SPAN_KIND_PRODUCER", "SPAN_KIND_CONSUMER")
STATUS_CODES = ("STATUS_CODE_UNSET", "STATUS_CODE_OK", "STATUS_CODE_ERROR")

OPENINFERENCE_KINDS = {"LLM", "TOOL", "AGENT", "CHAIN", "RETRIEVER", "EMBEDDING", "RERANKER", "GUARDRAIL",
                       "EVALUATOR", "PROMPT"}
GENAI_OPERATION_KINDS = {
    "chat": "LLM", "text_completion": "LLM", "generate_content": "LLM", "completion": "LLM", "responses": "LLM",
    "execute_tool": "TOOL", "invoke_agent": "AGENT", "create_agent": "AGENT", "embeddings": "EMBEDDING",
}


class IngestError(Exception):
    """Input that cannot be taken at all (a broken body or file line); names the line and field."""


@dataclass
class Rejected:
    where: str
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}" if self.where else self.reason


@dataclass
class Outcome:
    spans_stored: int = 0
    duplicates: int = 0
    runs_created: int = 0
    runs_updated: int = 0
    rejected: list[Rejected] = field(default_factory=list)
    run_ids: list[int] = field(default_factory=list)

    @property
    def rejected_count(self) -> int:
        return len(self.rejected)

    def rejection_message(self, limit: int = 5) -> str:
        if not self.rejected:
            return ""
        shown = "; ".join(str(item) for item in self.rejected[:limit])
        more = len(self.rejected) - limit
        return shown + (f"; and {more} more" if more > 0 else "")


# ---------------------------------------------------------------- values


def otlp_time(nanos: int | str | None) -> str:
    """`2026-11-26T07:19:00.123456789Z` from Unix nanoseconds, the fixed width HALO reads."""
    try:
        nanos = int(nanos or 0)
    except (TypeError, ValueError):
        return ""
    if nanos <= 0:
        return ""
    seconds, rest = divmod(nanos, 1_000_000_000)
    second = _second_text(seconds)
    return f"{second}.{rest:09d}Z" if second else ""


@lru_cache(maxsize=4096)
def _second_text(seconds: int) -> str:
    """`2026-11-26T07:19:00` (UTC); cached, since the spans of an export mostly share their seconds."""
    try:
        return datetime.fromtimestamp(seconds, tz=dt_timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    except (OverflowError, OSError, ValueError):
        return ""


def parse_time(value: Any) -> datetime | None:
    """A span time (`otlp_time`, runs/tracing.py's `otlp_timestamp`, or ISO with an offset) as an aware datetime;
    nanoseconds are cut to microseconds. None when it is not one."""
    if not value or not isinstance(value, str):
        return None
    text = value.strip().removesuffix("Z")
    if "." in text:
        head, fraction = text.split(".", 1)
        tz = ""
        for sign in ("+", "-"):
            if sign in fraction:
                fraction, tz = fraction.split(sign, 1)
                tz = sign + tz
        text = f"{head}.{fraction[:6].ljust(6, '0')}{tz}"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed.replace(tzinfo=dt_timezone.utc) if parsed.tzinfo is None else parsed


def _json_any(value: Any) -> Any:
    """An OTLP JSON AnyValue as a plain value."""
    if not isinstance(value, dict):
        return value
    if "stringValue" in value:
        return _no_nul(value["stringValue"])
    if "intValue" in value:
        try:
            return int(value["intValue"])
        except (TypeError, ValueError):
            return value["intValue"]
    if "doubleValue" in value:
        return value["doubleValue"]
    if "boolValue" in value:
        return bool(value["boolValue"])
    if "arrayValue" in value:
        return [_json_any(item) for item in _object(value["arrayValue"]).get("values") or []]
    if "kvlistValue" in value:
        return {str(kv.get("key")): _json_any(kv.get("value")) for kv in _object(value["kvlistValue"]).get("values") or []
                if isinstance(kv, dict)}
    if "bytesValue" in value:
        return value["bytesValue"]
    return None


def _object(value: Any) -> dict:
    """A JSON value that should be an object, or {} when it is something else."""
    return value if isinstance(value, dict) else {}


def _json_attributes(items: Any) -> dict[str, Any]:
    if not isinstance(items, list):
        return {}
    return {str(kv.get("key")): _json_any(kv.get("value")) for kv in items if isinstance(kv, dict) and kv.get("key")}


def _proto_any(value) -> Any:  # noqa: ANN001 - an opentelemetry.proto AnyValue
    which = value.WhichOneof("value")
    if which == "string_value":
        return _no_nul(value.string_value)
    if which == "int_value":
        return value.int_value
    if which == "double_value":
        return value.double_value
    if which == "bool_value":
        return value.bool_value
    if which == "array_value":
        return [_proto_any(item) for item in value.array_value.values]
    if which == "kvlist_value":
        return {kv.key: _proto_any(kv.value) for kv in value.kvlist_value.values}
    if which == "bytes_value":
        return base64.b64encode(value.bytes_value).decode("ascii")
    return None


def _proto_attributes(items) -> dict[str, Any]:  # noqa: ANN001
    out = {}
    for kv in items:
        value = kv.value
        # Most attributes are strings: taken here without a call per attribute.
        out[_no_nul(kv.key)] = (_no_nul(value.string_value) if value.WhichOneof("value") == "string_value"
                                else _proto_any(value))
    return out


def _no_nul(text: str) -> str:
    """PostgreSQL cannot store NUL in text or jsonb: it becomes U+FFFD."""
    return text.replace("\x00", "\ufffd") if "\x00" in text else text


def no_nul_escapes(text: str) -> str:
    """The same for JSON text before it is parsed (NUL is always written escaped in JSON)."""
    return text.replace("\\u0000", "\\ufffd") if "\\u0000" in text else text


def _hex_id(value: Any) -> str:
    """An OTLP JSON id: hex (the OTLP spec), or base64 as some proto3 JSON encoders write it."""
    if not value or not isinstance(value, str):
        return ""
    text = value.strip()
    if all(ch in "0123456789abcdefABCDEF" for ch in text):
        return text.lower()
    try:
        return base64.b64decode(text, validate=True).hex()
    except ValueError:
        return text


# ---------------------------------------------------------------- decoding OTLP


def _otlp_line(*, trace_id: str, span_id: str, parent: str, name: str, kind: Any, start: Any, end: Any,
               status_code: Any, status_message: str, resource: dict, scope_name: str, scope_version: str,
               attributes: dict, trace_state: str = "") -> dict[str, Any]:
    if isinstance(kind, int):
        kind = SPAN_KINDS[kind] if 0 <= kind < len(SPAN_KINDS) else SPAN_KINDS[0]
    if isinstance(status_code, int):
        status_code = STATUS_CODES[status_code] if 0 <= status_code < len(STATUS_CODES) else STATUS_CODES[0]
    return {
        "trace_id": trace_id, "span_id": span_id, "parent_span_id": parent, "trace_state": trace_state or "",
        "name": name, "kind": str(kind or SPAN_KINDS[0]), "start_time": otlp_time(start), "end_time": otlp_time(end),
        "status": {"code": str(status_code or STATUS_CODES[0]), "message": status_message or ""},
        "resource": {"attributes": resource}, "scope": {"name": scope_name or "", "version": scope_version or ""},
        "attributes": attributes,
    }


def _check_ids(line: dict[str, Any], where: str, *, strict: bool) -> Rejected | None:
    trace_id, span_id = line["trace_id"], line["span_id"]
    if not trace_id:
        return Rejected(where, "trace_id is missing")
    if not span_id:
        return Rejected(where, "span_id is missing")
    if strict and (len(trace_id) != 32 or len(span_id) != 16):
        return Rejected(where, "trace_id must be 16 bytes and span_id 8 bytes")
    if len(trace_id) > MAX_ID_CHARS or len(span_id) > MAX_ID_CHARS or len(line.get("parent_span_id") or "") > MAX_ID_CHARS:
        return Rejected(where, f"ids longer than {MAX_ID_CHARS} characters")
    if strict and set(trace_id) == {"0"}:
        return Rejected(where, "trace_id is all zeros")
    return None


def lines_from_otlp_protobuf(body: bytes) -> tuple[list[dict[str, Any]], list[Rejected]]:
    """HALO lines from an ExportTraceServiceRequest in protobuf; raises IngestError when it does not parse."""
    from google.protobuf.message import DecodeError
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    request = ExportTraceServiceRequest()
    try:
        request.ParseFromString(body)
    except (DecodeError, ValueError) as exc:
        raise IngestError(f"The body is not an OTLP ExportTraceServiceRequest in protobuf ({exc}).") from exc
    lines: list[dict[str, Any]] = []
    rejected: list[Rejected] = []
    for r_index, resource_spans in enumerate(request.resource_spans):
        resource = _proto_attributes(resource_spans.resource.attributes)
        for s_index, scope_spans in enumerate(resource_spans.scope_spans):
            scope = scope_spans.scope
            for index, span in enumerate(scope_spans.spans):
                line = _otlp_line(
                    trace_id=span.trace_id.hex(), span_id=span.span_id.hex(), parent=span.parent_span_id.hex(),
                    name=_no_nul(span.name), kind=int(span.kind), start=span.start_time_unix_nano, end=span.end_time_unix_nano,
                    status_code=int(span.status.code), status_message=span.status.message, resource=resource,
                    scope_name=scope.name, scope_version=scope.version,
                    attributes=_proto_attributes(span.attributes), trace_state=span.trace_state,
                )
                where = f"resourceSpans[{r_index}].scopeSpans[{s_index}].spans[{index}]"
                problem = _check_ids(line, where, strict=True)
                if problem:
                    rejected.append(problem)
                else:
                    lines.append(line)
    return lines, rejected


def lines_from_otlp_json(document: Any, *, where: str = "") -> tuple[list[dict[str, Any]], list[Rejected]]:
    """HALO lines from an ExportTraceServiceRequest in OTLP JSON (ids hex, enums as numbers or names)."""
    if not isinstance(document, dict) or not isinstance(document.get("resourceSpans", document.get("resource_spans")), list):
        raise IngestError(f"{where or 'The body'}: resourceSpans is missing: not an OTLP ExportTraceServiceRequest.")
    lines: list[dict[str, Any]] = []
    rejected: list[Rejected] = []
    prefix = f"{where} " if where else ""
    for r_index, resource_spans in enumerate(document.get("resourceSpans", document.get("resource_spans")) or []):
        if not isinstance(resource_spans, dict):
            rejected.append(Rejected(f"{prefix}resourceSpans[{r_index}]", "not an object"))
            continue
        if not isinstance(resource_spans.get("resource") or {}, dict):
            rejected.append(Rejected(f"{prefix}resourceSpans[{r_index}].resource", "not an object"))
            continue
        resource = _json_attributes(_object(resource_spans.get("resource")).get("attributes"))
        for s_index, scope_spans in enumerate(resource_spans.get("scopeSpans", resource_spans.get("scope_spans")) or []):
            scope_path = f"{prefix}resourceSpans[{r_index}].scopeSpans[{s_index}]"
            if not isinstance(scope_spans, dict):
                rejected.append(Rejected(scope_path, "not an object"))
                continue
            if not isinstance(scope_spans.get("scope") or {}, dict):
                rejected.append(Rejected(f"{scope_path}.scope", "not an object"))
                continue
            scope = _object(scope_spans.get("scope"))
            for index, span in enumerate(scope_spans.get("spans") or []):
                path = f"{scope_path}.spans[{index}]"
                if not isinstance(span, dict):
                    rejected.append(Rejected(path, "not an object"))
                    continue
                status = span.get("status") or {}
                line = _otlp_line(
                    trace_id=_hex_id(span.get("traceId", span.get("trace_id"))),
                    span_id=_hex_id(span.get("spanId", span.get("span_id"))),
                    parent=_hex_id(span.get("parentSpanId", span.get("parent_span_id"))),
                    name=str(span.get("name") or ""), kind=span.get("kind", 0),
                    start=span.get("startTimeUnixNano", span.get("start_time_unix_nano")),
                    end=span.get("endTimeUnixNano", span.get("end_time_unix_nano")),
                    status_code=status.get("code", 0) if isinstance(status, dict) else 0,
                    status_message=str(status.get("message") or "") if isinstance(status, dict) else "",
                    resource=resource, scope_name=str(scope.get("name") or ""), scope_version=str(scope.get("version") or ""),
                    attributes=_json_attributes(span.get("attributes")), trace_state=str(span.get("traceState") or ""),
                )
                problem = _check_ids(line, path, strict=True)
                if problem:
                    rejected.append(problem)
                else:
                    lines.append(line)
    return lines, rejected


# ---------------------------------------------------------------- decoding files


def line_from_record(record: Any, *, where: str) -> dict[str, Any]:
    """One JSONL record that is a HALO span line or an Agents SDK `span.export()`; IngestError otherwise."""
    if not isinstance(record, dict):
        raise IngestError(f"{where}: expected a JSON object.")
    if "span_data" in record:
        return _line_from_agents_sdk(record, where=where)
    for key in ("trace_id", "span_id", "name"):
        if not isinstance(record.get(key), str) or not record.get(key):
            raise IngestError(f"{where}: field `{key}` is missing or not a string.")
    if record.get("parent_span_id") is not None and not isinstance(record["parent_span_id"], str):
        raise IngestError(f"{where}: field `parent_span_id` must be a string.")
    if "attributes" in record and not isinstance(record["attributes"], dict):
        raise IngestError(f"{where}: field `attributes` must be an object.")
    resource = record.get("resource")
    if resource is not None and not (isinstance(resource, dict) and isinstance(resource.get("attributes") or {}, dict)):
        raise IngestError(f"{where}: field `resource` must be an object with an `attributes` object.")
    for key in ("start_time", "end_time"):
        if record.get(key) and parse_time(record[key]) is None:
            raise IngestError(f"{where}: field `{key}` is not an ISO timestamp.")
    status = record.get("status")
    if status is not None and not isinstance(status, dict):
        raise IngestError(f"{where}: field `status` must be an object with code and message.")
    line = dict(record)
    line.setdefault("parent_span_id", "")
    line["parent_span_id"] = line["parent_span_id"] or ""
    line.setdefault("attributes", {})
    line.setdefault("status", {"code": STATUS_CODES[0], "message": ""})
    line.setdefault("resource", {"attributes": {}})
    problem = _check_ids(line, where, strict=False)
    if problem:
        raise IngestError(str(problem))
    return line


def _line_from_agents_sdk(record: dict[str, Any], *, where: str) -> dict[str, Any]:
    """An Agents SDK `span.export()` dict (id, trace_id, parent_id, started_at, ended_at, span_data, error)."""
    from .tracing import attributes_for, otlp_timestamp, span_name, strip_prefix

    data = record.get("span_data")
    if not isinstance(data, dict):
        raise IngestError(f"{where}: field `span_data` must be an object.")
    span_type = str(data.get("type") or "custom")
    attributes, projection = attributes_for(span_type, data)
    error = record.get("error") if isinstance(record.get("error"), dict) else None
    try:
        start, end = otlp_timestamp(record.get("started_at")), otlp_timestamp(record.get("ended_at"))
    except (TypeError, ValueError) as exc:
        raise IngestError(f"{where}: field `started_at`/`ended_at` is not an ISO timestamp.") from exc
    for key, value in (("inference.llm.model_name", projection.get("llm_model_name")),
                       ("inference.llm.input_tokens", projection.get("input_tokens")),
                       ("inference.llm.output_tokens", projection.get("output_tokens")),
                       ("inference.agent_name", projection.get("agent_name"))):
        if value is not None:
            attributes[key] = value
    attributes["sdk.span.type"] = span_type
    line = {
        "trace_id": strip_prefix(record.get("trace_id"), "trace_"), "span_id": strip_prefix(record.get("id"), "span_"),
        "parent_span_id": strip_prefix(record.get("parent_id"), "span_"), "trace_state": "",
        "name": span_name(span_type, data),
        "kind": "SPAN_KIND_CLIENT" if span_type in {"generation", "response"} else "SPAN_KIND_INTERNAL",
        "start_time": start, "end_time": end,
        "status": {"code": "STATUS_CODE_ERROR" if error else "STATUS_CODE_OK", "message": str((error or {}).get("message") or "")},
        "resource": {"attributes": {}}, "scope": {"name": "openai-agents-sdk", "version": ""},
        "attributes": attributes,
    }
    problem = _check_ids(line, where, strict=False)
    if problem:
        raise IngestError(str(problem))
    return line


def lines_from_jsonl(text: str) -> list[dict[str, Any]]:
    """Every span of a JSONL file: HALO lines, Agents SDK span exports, or one OTLP JSON request per line.

    All or nothing: the first bad line raises IngestError naming its number and field."""
    lines: list[dict[str, Any]] = []
    text = no_nul_escapes(text)
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        where = f"Line {number}"
        try:
            record = json.loads(raw)
        except ValueError as exc:
            raise IngestError(f"{where}: not valid JSON ({exc.msg} at column {getattr(exc, 'colno', '?')}).") from exc
        if isinstance(record, dict) and ("resourceSpans" in record or "resource_spans" in record):
            found, rejected = lines_from_otlp_json(record, where=where)
            if rejected:
                raise IngestError(str(rejected[0]))
            lines.extend(found)
        else:
            lines.append(line_from_record(record, where=where))
    if not lines:
        raise IngestError("The file holds no spans.")
    return lines


# ---------------------------------------------------------------- normalising attributes


def _indexed(attrs: dict[str, Any], prefix: str) -> dict[int, dict[str, Any]]:
    """`prefix.N.rest` keys grouped by N: {N: {rest: value}}."""
    groups: dict[int, dict[str, Any]] = {}
    start = len(prefix) + 1
    for key, value in attrs.items():
        if not key.startswith(prefix) or len(key) <= start or key[start - 1] != ".":
            continue
        index, _, rest = key[start:].partition(".")
        if index.isdigit() and rest:
            groups.setdefault(int(index), {})[rest] = value
    return groups


def _openinference_messages(attrs: dict[str, Any], prefix: str) -> list[dict[str, Any]]:
    messages = []
    for _, fields in sorted(_indexed(attrs, prefix).items()):
        message: dict[str, Any] = {}
        if fields.get("message.role") is not None:
            message["role"] = fields["message.role"]
        if fields.get("message.content") is not None:
            message["content"] = fields["message.content"]
        else:
            parts = _indexed(fields, "message.contents")
            texts = [part.get("message_content.text") for _, part in sorted(parts.items())
                     if part.get("message_content.text") is not None]
            if texts:
                message["content"] = "\n\n".join(str(text) for text in texts)
        calls = []
        for _, call in sorted(_indexed(fields, "message.tool_calls").items()):
            calls.append({"id": call.get("tool_call.id"), "type": "function",
                          "function": {"name": call.get("tool_call.function.name"),
                                       "arguments": call.get("tool_call.function.arguments")}})
        if calls:
            message["tool_calls"] = calls
        for source, target in (("message.tool_call_id", "tool_call_id"), ("message.name", "name")):
            if fields.get(source):
                message[target] = fields[source]
        if message:
            messages.append(message)
    return messages


def _genai_old_messages(attrs: dict[str, Any], prefix: str) -> list[dict[str, Any]]:
    """The older OTel GenAI form: gen_ai.prompt.N.role/content, gen_ai.completion.N.tool_calls.M.name/arguments."""
    messages = []
    for _, fields in sorted(_indexed(attrs, prefix).items()):
        message = {key: fields[key] for key in ("role", "content", "tool_call_id", "name") if fields.get(key) is not None}
        calls = [{"id": call.get("id"), "type": "function",
                  "function": {"name": call.get("name"), "arguments": call.get("arguments")}}
                 for _, call in sorted(_indexed(fields, "tool_calls").items())]
        if calls:
            message["tool_calls"] = calls
        if message:
            messages.append(message)
    return messages


def _genai_parts_messages(raw: Any) -> list[dict[str, Any]]:
    """The current OTel GenAI form: JSON [{"role", "parts": [{"type": "text"|"tool_call"|"tool_call_response", ...}]}]."""
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            return [{"role": "user", "content": raw}]
    if not isinstance(raw, list):
        return []
    messages = []
    for item in raw:
        if not isinstance(item, dict):
            continue
        if "parts" not in item:
            messages.append(item)
            continue
        message: dict[str, Any] = {"role": item.get("role") or ""}
        texts, calls = [], []
        for part in item.get("parts") or []:
            if not isinstance(part, dict):
                continue
            kind = part.get("type")
            if kind == "tool_call":
                arguments = part.get("arguments")
                calls.append({"id": part.get("id"), "type": "function", "function": {
                    "name": part.get("name"),
                    "arguments": arguments if isinstance(arguments, str) or arguments is None else json.dumps(arguments)}})
            elif kind == "tool_call_response":
                message["tool_call_id"] = part.get("id")
                response = part.get("response", part.get("result"))
                texts.append(response if isinstance(response, str) else json.dumps(response, ensure_ascii=False))
            elif part.get("content") is not None:
                content = part["content"]
                texts.append(content if isinstance(content, str) else json.dumps(content, ensure_ascii=False))
        if texts:
            message["content"] = "\n\n".join(texts)
        if calls:
            message["tool_calls"] = calls
        if item.get("finish_reason"):
            message["finish_reason"] = item["finish_reason"]
        messages.append(message)
    return messages


_MESSAGE_PREFIXES = (("llm.input_messages.", "input", "oi"), ("llm.output_messages.", "output", "oi"),
                     ("gen_ai.prompt.", "input", "genai"), ("gen_ai.completion.", "output", "genai"))


def _message_sources(attrs: dict[str, Any]) -> set[tuple[str, str]]:
    """Which (side, convention) flat message keys the span has: one pass over its keys."""
    found: set[tuple[str, str]] = set()
    for key in attrs:
        if key.startswith(("llm.", "gen_ai.")):
            for prefix, side, convention in _MESSAGE_PREFIXES:
                if key.startswith(prefix):
                    found.add((side, convention))
                    break
    return found


def _messages_for(attrs: dict[str, Any], side: str, sources: set[tuple[str, str]] | None = None) -> list[dict[str, Any]] | None:
    """The span's input or output messages from whichever convention it uses, or None."""
    sources = _message_sources(attrs) if sources is None else sources
    if (side, "oi") in sources:
        messages = _openinference_messages(attrs, f"llm.{side}_messages")
        if messages:
            return messages
    genai_key = "gen_ai.input.messages" if side == "input" else "gen_ai.output.messages"
    if attrs.get(genai_key) is not None:
        return _genai_parts_messages(attrs[genai_key])
    if (side, "genai") in sources:
        return _genai_old_messages(attrs, "gen_ai.prompt" if side == "input" else "gen_ai.completion") or None
    return None


def _int_or_none(value: Any) -> int | None:
    """A token count as int (display.as_int), where a boolean is not a count."""
    return None if isinstance(value, bool) else as_int(value)


def observation_kind(attrs: dict[str, Any]) -> str:
    kind = str(attrs.get("openinference.span.kind") or "").upper()
    if kind in OPENINFERENCE_KINDS:
        return kind
    operation = str(attrs.get("gen_ai.operation.name") or "").lower()
    if operation in GENAI_OPERATION_KINDS:
        return GENAI_OPERATION_KINDS[operation]
    stored = str(attrs.get("inference.observation_kind") or "").upper()
    if stored:
        return stored
    if any(key.startswith(("llm.input_messages", "gen_ai.prompt", "gen_ai.input.messages", "llm.token_count"))
           for key in attrs) or "gen_ai.usage.input_tokens" in attrs:
        return "LLM"
    if "tool.name" in attrs or "gen_ai.tool.name" in attrs:
        return "TOOL"
    return "SPAN"


def normalise_attributes(attrs: dict[str, Any], *, project_id: str, agent_name: str) -> dict[str, Any]:
    """The raw attributes plus the keys Loopsite and HALO read (never overwriting one that is there)."""
    out = dict(attrs)

    def put(key: str, value: Any) -> None:
        if value is not None and value != "" and out.get(key) in (None, ""):
            out[key] = value

    kind = observation_kind(attrs)
    sources = _message_sources(attrs)
    for side in ("input", "output"):
        key = f"llm.{side}_messages"
        if not isinstance(attrs.get(key), str):
            messages = _messages_for(attrs, side, sources)
            if messages:
                if key in out:  # a non-string value under the list key itself: keep it under another name
                    out[f"{key}.raw"] = out.pop(key)
                out[key] = json.dumps(messages, ensure_ascii=False, default=str)
    put("llm.model_name", attrs.get("gen_ai.response.model") or attrs.get("gen_ai.request.model"))
    prompt = _int_or_none(attrs.get("llm.token_count.prompt"))
    if prompt is None:
        prompt = _int_or_none(attrs.get("gen_ai.usage.input_tokens", attrs.get("gen_ai.usage.prompt_tokens")))
    completion = _int_or_none(attrs.get("llm.token_count.completion"))
    if completion is None:
        completion = _int_or_none(attrs.get("gen_ai.usage.output_tokens", attrs.get("gen_ai.usage.completion_tokens")))
    total = _int_or_none(attrs.get("llm.token_count.total"))
    if total is None:
        total = _int_or_none(attrs.get("gen_ai.usage.total_tokens"))
    if total is None and (prompt is not None or completion is not None):
        total = (prompt or 0) + (completion or 0)
    put("llm.token_count.prompt", prompt)
    put("llm.token_count.completion", completion)
    put("llm.token_count.total", total)
    put("tool.name", attrs.get("gen_ai.tool.name"))
    arguments = attrs.get("gen_ai.tool.call.arguments")
    put("input.value", arguments if isinstance(arguments, str) or arguments is None else json.dumps(arguments))
    result = attrs.get("gen_ai.tool.call.result")
    put("output.value", result if isinstance(result, str) or result is None else json.dumps(result))

    put("inference.project_id", project_id)
    put("inference.observation_kind", kind)
    put("openinference.span.kind", kind if kind in OPENINFERENCE_KINDS else None)
    put("inference.llm.model_name", out.get("llm.model_name"))
    put("inference.llm.input_tokens", prompt)
    put("inference.llm.output_tokens", completion)
    put("inference.agent_name", attrs.get("agent.name") or attrs.get("gen_ai.agent.name") or agent_name)
    return out


def normalise_line(line: dict[str, Any], *, agent: Agent) -> dict[str, Any]:
    attrs = line.get("attributes") if isinstance(line.get("attributes"), dict) else {}
    line["attributes"] = normalise_attributes(attrs, project_id=agent.slug, agent_name=agent.name)
    return line


# ---------------------------------------------------------------- run summaries


def _text_of(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [part.get("text") or part.get("content") for part in content if isinstance(part, dict)]
        texts = [text for text in texts if isinstance(text, str)]
        if texts:
            return "\n\n".join(texts)
    return json.dumps(content, ensure_ascii=False, default=str)


def _loaded_messages(attrs: dict[str, Any], key: str) -> list[Any]:
    raw = attrs.get(key)
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            return []
    return raw if isinstance(raw, list) else []


def _plain_value(value: Any) -> str:
    """input.value / output.value as text: a JSON string value unwrapped, an object left as JSON."""
    if value is None:
        return ""
    if isinstance(value, str):
        stripped = value.strip()
        if stripped.startswith('"'):
            try:
                loaded = json.loads(stripped)
            except ValueError:
                return value
            return loaded if isinstance(loaded, str) else value
        return value
    return json.dumps(value, ensure_ascii=False, default=str)


@dataclass
class Summary:
    input_text: str
    final_answer: str
    model_name: str
    input_tokens: int
    output_tokens: int
    total_tokens: int
    model_calls: int
    tool_calls: int
    started_at: datetime | None
    finished_at: datetime | None
    failed: bool
    error: str
    version: str


def summarise(lines: list[dict[str, Any]], *, version_attribute: str) -> Summary:
    """A run's summary from all of its spans' HALO lines."""
    ids = {line.get("span_id") for line in lines}
    ordered = sorted(lines, key=lambda line: (line.get("start_time") or "", line.get("end_time") or ""))
    roots = [line for line in ordered if not line.get("parent_span_id") or line.get("parent_span_id") not in ids]
    root = roots[0] if roots else (ordered[0] if ordered else {})
    root_attrs = root.get("attributes") or {}
    llm = [line for line in ordered if (line.get("attributes") or {}).get("inference.observation_kind") == "LLM"]

    input_text = ""
    for line in llm:
        for message in _loaded_messages(line["attributes"], "llm.input_messages"):
            if isinstance(message, dict) and message.get("role") == "user":
                input_text = _text_of(message.get("content"))
                break
        if input_text:
            break
    if not input_text:
        input_text = _plain_value(root_attrs.get("input.value"))
    if not input_text:
        for line in ordered:
            value = (line.get("attributes") or {}).get("input.value")
            if value:
                input_text = _plain_value(value)
                break

    final_answer = _plain_value(root_attrs.get("output.value"))
    if not final_answer:
        for line in sorted(llm, key=lambda line: line.get("end_time") or "", reverse=True):
            for message in reversed(_loaded_messages(line["attributes"], "llm.output_messages")):
                if isinstance(message, dict) and message.get("content"):
                    final_answer = _text_of(message.get("content"))
                    break
            if final_answer:
                break

    models = Counter()
    input_tokens = output_tokens = total_tokens = tool_calls = 0
    for line in ordered:
        attrs = line.get("attributes") or {}
        kind = attrs.get("inference.observation_kind")
        if kind == "LLM":
            prompt = _int_or_none(attrs.get("llm.token_count.prompt")) or 0
            completion = _int_or_none(attrs.get("llm.token_count.completion")) or 0
            input_tokens += max(prompt, 0)
            output_tokens += max(completion, 0)
            total_tokens += max(_int_or_none(attrs.get("llm.token_count.total")) or prompt + completion, 0)
            if attrs.get("llm.model_name"):
                models[str(attrs["llm.model_name"])] += 1
        elif kind == "TOOL":
            tool_calls += 1

    starts = _times(line.get("start_time") for line in ordered)
    ends = _times(line.get("end_time") for line in ordered)
    errors = [line for line in ordered if (line.get("status") or {}).get("code") == "STATUS_CODE_ERROR"]
    error = ""
    if errors:
        first = errors[0]
        error = f"{first.get('name')}: {(first.get('status') or {}).get('message') or 'error'}"

    version = ""
    for line in [root, *ordered]:
        for source in ((line.get("resource") or {}).get("attributes") or {}, line.get("attributes") or {}):
            if source.get(version_attribute) not in (None, ""):
                version = str(source[version_attribute])
                break
        if version:
            break

    return Summary(
        input_text=input_text.strip(), final_answer=final_answer, model_name=models.most_common(1)[0][0] if models else "",
        input_tokens=input_tokens, output_tokens=output_tokens, total_tokens=total_tokens, model_calls=len(llm),
        tool_calls=tool_calls, started_at=min(starts) if starts else None, finished_at=max(ends) if ends else None,
        failed=(root.get("status") or {}).get("code") == "STATUS_CODE_ERROR", error=error, version=version,
    )


def _times(values: Iterable[Any]) -> list[datetime]:
    """Parsed times; only the earliest and latest when all are in the fixed-width UTC form (which sorts as text)."""
    values = [value for value in values if value]
    if values and all(isinstance(value, str) and len(value) == 30 and value[-1] == "Z" for value in values):
        values = [min(values), max(values)]
    return [moment for moment in map(parse_time, values) if moment]


def _question_text(text: str) -> str:
    text = text or "(no input recorded)"
    if len(text.encode("utf-8")) > MAX_QUESTION_BYTES:
        # PostgreSQL's unique index on the text holds at most about 2.7 KB per entry.
        text = text.encode("utf-8")[: MAX_QUESTION_BYTES - 3].decode("utf-8", errors="ignore") + "…"
    return text


def _questions_for(texts: Iterable[str]) -> dict[str, Question]:
    """The Question row of each input text (as cut by _question_text), made when missing: three statements
    for a whole request however many traces it holds. Another request making the same one is no conflict."""
    texts = list(texts)
    wanted = {_question_text(text) for text in texts}
    found = {question.text: question for question in Question.objects.filter(text__in=wanted)}
    if missing := wanted - set(found):
        Question.objects.bulk_create([Question(text=text, imported=True) for text in missing], ignore_conflicts=True)
        found.update((question.text, question) for question in Question.objects.filter(text__in=missing))
    return {text: found[_question_text(text)] for text in texts}


# ---------------------------------------------------------------- storing


_SPAN_COLUMNS = ("run_id", "position", "span_id", "parent_span_id", "name", "observation_kind", "start_time",
                 "end_time", "is_error", "data")


def _span_row(run_id: int, position: int, line: dict[str, Any]) -> tuple:
    """One runs_span row as insert parameters (the columns of _SPAN_COLUMNS)."""
    status = line.get("status") or {}
    return (
        run_id, position, str(line.get("span_id") or "")[:64], str(line.get("parent_span_id") or "")[:64],
        str(line.get("name") or "")[:300], str(line["attributes"].get("inference.observation_kind") or "")[:40],
        _db_time(line.get("start_time")), _db_time(line.get("end_time")),
        status.get("code") == "STATUS_CODE_ERROR", json.dumps(line, ensure_ascii=False, separators=(",", ":"), default=str),
    )


def _db_time(value: Any) -> Any:
    """A span time as the database takes it; the fixed-width UTC form (`otlp_time`) without a datetime."""
    if isinstance(value, str) and len(value) == 30 and value[10] == "T" and value[19] == "." and value[-1] == "Z":
        if connection.vendor == "sqlite":  # Django's SQLite form: naive UTC, microseconds
            return f"{value[:10]} {value[11:26]}"
        if connection.vendor == "postgresql":
            return f"{value[:26]}+00:00"
    return connection.ops.adapt_datetimefield_value(parse_time(value))


def _insert_spans(rows: list[tuple]) -> None:
    """Many span rows at once, their JSON already serialised: COPY on PostgreSQL (a third less time than
    INSERTs), one executemany elsewhere. (The ORM's bulk_create spent most of the ingest time building its
    statement.)"""
    if not rows:
        return
    quote = connection.ops.quote_name
    table, columns = quote(Span._meta.db_table), ", ".join(quote(c) for c in _SPAN_COLUMNS)
    if connection.vendor == "postgresql":
        # psycopg's own cursor, so its errors are turned into Django's here (DatabaseError and kin).
        with connection.cursor() as cursor, connection.wrap_database_errors, cursor.cursor.copy(
                f"COPY {table} ({columns}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        return
    with connection.cursor() as cursor:
        cursor.executemany(f"INSERT INTO {table} ({columns}) VALUES ({', '.join(['%s'] * len(_SPAN_COLUMNS))})",
                           rows)


def store_lines(*, agent: Agent, lines: Iterable[dict[str, Any]], user=None) -> Outcome:  # noqa: ANN001
    """Normalise and store spans (HALO lines) of `agent`, one run per trace, in one transaction.

    Spans already stored (same run and span id, e.g. an exporter's retry) are skipped."""
    outcome = Outcome()
    by_trace: dict[str, list[dict[str, Any]]] = {}
    for line in lines:
        by_trace.setdefault(str(line["trace_id"]), []).append(normalise_line(line, agent=agent))
    if not by_trace:
        return outcome

    with transaction.atomic():
        existing = {run.trace_id: run for run in Run.objects.select_for_update(of=("self",)).select_related("harness")
                    .filter(agent=agent, trace_id__in=list(by_trace))}
        stored_lines: dict[int, list[dict[str, Any]]] = {}
        next_position: dict[int, int] = {}
        if existing:
            run_ids = [run.pk for run in existing.values()]
            for run_id, data in Span.objects.filter(run_id__in=run_ids).values_list("run_id", "data"):
                stored_lines.setdefault(run_id, []).append(data)
            next_position = dict(Span.objects.filter(run_id__in=run_ids).values("run_id")
                                 .annotate(top=Max("position")).values_list("run_id", "top"))

        rows: list[tuple] = []
        harnesses: dict[str, Any] = {}
        touched: list[tuple[Run, Summary, bool]] = []
        pending = []
        for trace_id, new_lines in by_trace.items():
            run = existing.get(trace_id)
            old = stored_lines.get(run.pk, []) if run else []
            fresh = _fresh(old, new_lines, outcome)
            if fresh:
                pending.append((trace_id, run, old, fresh,
                                summarise(old + fresh, version_attribute=agent.version_attribute)))
        questions = _questions_for(summary.input_text for *_, summary in pending)
        created_runs = _create_runs(agent=agent, user=user, harnesses=harnesses, questions=questions,
                                    new=[(trace_id, summary) for trace_id, run, _, _, summary in pending if run is None])
        for trace_id, run, old, fresh, summary in pending:
            created = False
            if run is None and trace_id in created_runs:
                run, created = created_runs[trace_id], True
            elif run is None:
                run, created = _create_run(agent=agent, trace_id=trace_id, summary=summary, user=user,
                                           harnesses=harnesses, question=questions[summary.input_text])
                if not created:  # another request stored this trace meanwhile: append to what it stored
                    old = list(Span.objects.filter(run_id=run.pk).values_list("data", flat=True))
                    fresh = _fresh(old, fresh, outcome)
                    summary = summarise(old + fresh, version_attribute=agent.version_attribute)
                    next_position[run.pk] = Span.objects.filter(run_id=run.pk).aggregate(top=Max("position"))["top"]
            position = 0 if created else (next_position.get(run.pk) if next_position.get(run.pk) is not None else -1) + 1
            for line in fresh:
                rows.append(_span_row(run.pk, position, line))
                position += 1
            touched.append((run, summary, created))
        _insert_spans(rows)
        outcome.spans_stored = len(rows)
        for run, summary, created in touched:
            if created:
                outcome.runs_created += 1
            else:
                _apply_summary(run, summary, agent=agent, question=questions.get(summary.input_text))
                outcome.runs_updated += 1
            outcome.run_ids.append(run.pk)
    return outcome


def _fresh(old: list[dict[str, Any]], new: list[dict[str, Any]], outcome: Outcome) -> list[dict[str, Any]]:
    """The spans of `new` not stored yet (by span id), in start order."""
    seen = {line.get("span_id") for line in old}
    fresh = []
    for line in sorted(new, key=lambda line: line.get("start_time") or ""):
        if line["span_id"] in seen:
            outcome.duplicates += 1
            continue
        seen.add(line["span_id"])
        fresh.append(line)
    return fresh


def _summary_fields(summary: Summary) -> dict[str, Any]:
    seconds = None
    if summary.started_at and summary.finished_at:
        seconds = max((summary.finished_at - summary.started_at).total_seconds(), 0.0)
    return {
        "final_answer": summary.final_answer, "model_name": summary.model_name[:120],
        "input_tokens": summary.input_tokens, "output_tokens": summary.output_tokens,
        "total_tokens": summary.total_tokens, "model_calls": summary.model_calls, "tool_calls": summary.tool_calls,
        "started_at": summary.started_at, "finished_at": summary.finished_at, "agent_seconds": seconds,
        "status": Run.Status.FAILED if summary.failed else Run.Status.SUCCEEDED,
        "last_error": summary.error[:2000],
    }


def _new_run(*, agent: Agent, trace_id: str, summary: Summary, user, harnesses: dict,  # noqa: ANN001
             question: Question) -> Run:
    harness = harnesses.get(summary.version)
    if harness is None:
        harness = harnesses[summary.version] = agent.harness_for_version(summary.version)
    return Run(agent=agent, harness=harness, question=question, source=Run.Source.IMPORTED, trace_id=trace_id,
               label=f"trace-{trace_id[:8]}", created_by=user, attempts=1, **_summary_fields(summary))


def _create_runs(*, agent: Agent, user, harnesses: dict, questions: dict[str, Question],  # noqa: ANN001
                 new: list[tuple[str, Summary]]) -> dict[str, Run]:
    """The runs of traces not stored yet, in one INSERT: {trace id: run}. Empty when another request
    stored one of them meanwhile (the unique agent + trace id refuses the INSERT); the caller then
    takes them one at a time (`_create_run`), appending to what the other request stored."""
    if not new:
        return {}
    runs = [_new_run(agent=agent, trace_id=trace_id, summary=summary, user=user, harnesses=harnesses,
                     question=questions[summary.input_text]) for trace_id, summary in new]
    try:
        with transaction.atomic():
            Run.objects.bulk_create(runs)
    except IntegrityError:
        return {}
    if any(run.pk is None for run in runs):  # SQLite before 3.35 returns no ids from a bulk INSERT
        ids = dict(Run.objects.filter(agent=agent, trace_id__in=[run.trace_id for run in runs])
                   .values_list("trace_id", "pk"))
        for run in runs:
            run.pk = ids[run.trace_id]
    return {run.trace_id: run for run in runs}


def _create_run(*, agent: Agent, trace_id: str, summary: Summary, user, harnesses: dict,  # noqa: ANN001
                question: Question) -> tuple[Run, bool]:
    run = _new_run(agent=agent, trace_id=trace_id, summary=summary, user=user, harnesses=harnesses,
                   question=question)
    try:
        with transaction.atomic():
            run.save(force_insert=True)
            return run, True
    except IntegrityError:
        return Run.objects.select_for_update(of=("self",)).select_related("harness").get(
            agent=agent, trace_id=trace_id), False


def _apply_summary(run: Run, summary: Summary, *, agent: Agent, question: Question | None = None) -> None:
    fields = _summary_fields(summary)
    question = question or _questions_for([summary.input_text])[summary.input_text]
    fields["question_id"] = question.pk
    if summary.version and run.harness.agent_version == UNVERSIONED:
        fields["harness_id"] = agent.harness_for_version(summary.version).pk
    Run.objects.filter(pk=run.pk).update(**fields)


def import_trace_file(*, agent: Agent, data: bytes, name: str, user=None):  # noqa: ANN001
    """A whole JSONL file (HALO lines, Agents SDK exports or OTLP JSON lines), all or nothing; audited."""
    limit = settings.TRACE_MAX_UPLOAD_BYTES
    if len(data) > limit:
        raise IngestError(f"{name}: the file is {filesizeformat(len(data))}; the limit is {filesizeformat(limit)}.")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise IngestError(f"{name}: not UTF-8 text (byte {exc.start}).") from exc
    lines = lines_from_jsonl(text)
    with transaction.atomic():
        outcome = store_lines(agent=agent, lines=lines, user=user)
        AuditEvent.record(actor=user, action="agent.import_traces", obj=agent,
                          summary=f"Imported {outcome.spans_stored} span(s) from {name} into {agent.name}",
                          after={"file": name, "spans": outcome.spans_stored, "runs_created": outcome.runs_created,
                                 "runs_updated": outcome.runs_updated, "duplicates": outcome.duplicates})
    return outcome
