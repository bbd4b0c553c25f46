"""One request, as the roles see it: instructions, messages, tool calls and their outputs.

Both APIs are normalised to the same `Conversation`, so a role does not care
whether it was called through /v1/responses or /v1/chat/completions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


class RequestError(ValueError):
    """A request the stand-in cannot serve; the message names the problem (sent as a 400)."""

    def __init__(self, message: str, *, param: str | None = None):
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class Reply:
    """What a role answers: tool calls to make, or (with none) a final text."""

    text: str = ""
    tool_calls: tuple[ToolCall, ...] = ()


@dataclass
class Exchange:
    """A tool call the model made earlier and, once the client ran it, its output."""

    call_id: str
    name: str
    arguments: dict[str, Any]
    output: str | None = None


@dataclass
class Conversation:
    model: str
    instructions: str = ""
    messages: list[tuple[str, str]] = field(default_factory=list)  # (role, text) for user/assistant turns
    exchanges: list[Exchange] = field(default_factory=list)
    tools: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> parameters schema

    @property
    def user_texts(self) -> list[str]:
        return [text for role, text in self.messages if role == "user"]

    @property
    def first_user_text(self) -> str:
        texts = self.user_texts
        return texts[0] if texts else ""

    @property
    def last_user_text(self) -> str:
        texts = self.user_texts
        return texts[-1] if texts else ""

    def offers_tool(self, name: str) -> bool:
        return name in self.tools

    def prompt_text(self) -> str:
        """Everything the model reads, for token estimates: instructions, messages, tool traffic, tool schemas."""
        parts = [self.instructions, *(text for _, text in self.messages)]
        for exchange in self.exchanges:
            parts += [exchange.name, json.dumps(exchange.arguments, ensure_ascii=False), exchange.output or ""]
        parts += [json.dumps(self.tools, ensure_ascii=False, sort_keys=True)] if self.tools else []
        return "\n".join(parts)

    def calls_to(self, name: str) -> list[Exchange]:
        return [exchange for exchange in self.exchanges if exchange.name == name]


def _text_of(content: Any) -> str:
    """Text of a message `content`: a string or a list of parts (input_text, output_text, text)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
        return "\n".join(parts)
    return str(content)


def _arguments(raw: Any) -> dict[str, Any]:
    if isinstance(raw, dict):
        return raw
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except (TypeError, json.JSONDecodeError):
        return {"_raw": raw}
    return value if isinstance(value, dict) else {"_raw": value}


def _require_model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise RequestError("'model' is required and must be a non-empty string", param="model")
    return model


def from_responses_request(body: dict[str, Any]) -> Conversation:
    """A /v1/responses body: `instructions`, `input` (a string or a list of items), `tools`."""
    conv = Conversation(model=_require_model(body))
    system_texts = [body["instructions"]] if isinstance(body.get("instructions"), str) else []
    raw_input = body.get("input")
    if raw_input is None:
        raise RequestError("'input' is required", param="input")
    if isinstance(raw_input, str):
        items: list[Any] = [{"role": "user", "content": raw_input}]
    elif isinstance(raw_input, list):
        items = raw_input
    else:
        raise RequestError("'input' must be a string or a list of input items", param="input")

    by_call_id: dict[str, Exchange] = {}
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise RequestError(f"input[{index}] must be an object", param=f"input[{index}]")
        kind = item.get("type") or ("message" if "role" in item else None)
        if kind == "message":
            role = item.get("role")
            text = _text_of(item.get("content"))
            if role in ("system", "developer"):
                system_texts.append(text)
            elif role in ("user", "assistant"):
                conv.messages.append((role, text))
        elif kind in ("function_call", "custom_tool_call"):
            call_id = str(item.get("call_id") or item.get("id") or f"call_{index}")
            raw_args = item.get("arguments") if kind == "function_call" else {"input": item.get("input")}
            exchange = Exchange(call_id=call_id, name=str(item.get("name") or ""), arguments=_arguments(raw_args))
            by_call_id[call_id] = exchange
            conv.exchanges.append(exchange)
        elif kind in ("function_call_output", "custom_tool_call_output"):
            call_id = str(item.get("call_id") or "")
            output = _text_of(item.get("output"))
            if call_id in by_call_id:
                by_call_id[call_id].output = output
            else:  # an output whose call we never saw: keep it, nameless
                conv.exchanges.append(Exchange(call_id=call_id, name="", arguments={}, output=output))
        # reasoning, compaction and other item kinds carry nothing the roles use
    conv.instructions = "\n\n".join(text for text in system_texts if text)

    for tool in body.get("tools") or []:
        if not isinstance(tool, dict):
            continue
        if tool.get("type") == "function" and tool.get("name"):
            conv.tools[tool["name"]] = tool.get("parameters") or {}
        elif tool.get("type") == "custom" and tool.get("name"):
            conv.tools[tool["name"]] = {"custom": True}
    return conv


def from_chat_request(body: dict[str, Any]) -> Conversation:
    """A /v1/chat/completions body: `messages` (system, user, assistant with tool_calls, tool), `tools`."""
    conv = Conversation(model=_require_model(body))
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("'messages' is required and must be a non-empty list", param="messages")
    system_texts: list[str] = []
    by_call_id: dict[str, Exchange] = {}
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message:
            raise RequestError(f"messages[{index}] must be an object with a 'role'", param=f"messages[{index}]")
        role = message["role"]
        text = _text_of(message.get("content"))
        if role in ("system", "developer"):
            system_texts.append(text)
        elif role == "user":
            conv.messages.append(("user", text))
        elif role == "assistant":
            if text:
                conv.messages.append(("assistant", text))
            for call in message.get("tool_calls") or []:
                function = call.get("function") or {}
                exchange = Exchange(
                    call_id=str(call.get("id") or ""),
                    name=str(function.get("name") or ""),
                    arguments=_arguments(function.get("arguments")),
                )
                by_call_id[exchange.call_id] = exchange
                conv.exchanges.append(exchange)
        elif role == "tool":
            call_id = str(message.get("tool_call_id") or "")
            if call_id in by_call_id:
                by_call_id[call_id].output = text
            else:
                conv.exchanges.append(Exchange(call_id=call_id, name="", arguments={}, output=text))
    conv.instructions = "\n\n".join(text for text in system_texts if text)

    for tool in body.get("tools") or []:
        function = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(function, dict) and function.get("name"):
            conv.tools[function["name"]] = function.get("parameters") or {}
    return conv
