"""Render a role's `Reply` in the shapes the OpenAI clients expect.

Everything is derived from the request body, so the same request gives the same
bytes: ids are hashes of the body, `created_at` is a fixed timestamp, and token
counts are estimated as characters / 4 of what the model reads (instructions,
messages, tool calls and outputs, tool schemas) and writes.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from .conversation import Reply

CREATED_AT = 1_767_225_600  # 2026-01-01T00:00:00Z; a fixed value keeps responses deterministic


def estimate_tokens(text: str) -> int:
    return max(1, (len(text) + 3) // 4)


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()


def call_id_for(seed: str, index: int, name: str, arguments: str) -> str:
    return "call_" + _digest(seed, str(index), name, arguments)[:24]


def _arguments_json(arguments: dict[str, Any]) -> str:
    return json.dumps(arguments, ensure_ascii=False)


def _sse(event: str | None, data: dict[str, Any] | str) -> str:
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {payload}\n\n"


# ---------------------------------------------------------------- Responses API


def responses_object(body: dict[str, Any], reply: Reply, *, request_text: str, prompt_text: str) -> dict[str, Any]:
    """The full Response object (the non-streaming answer, and the payload of response.completed)."""
    seed = _digest(request_text)
    output: list[dict[str, Any]] = []
    produced = ""
    for index, call in enumerate(reply.tool_calls):
        arguments = _arguments_json(call.arguments)
        call_id = call_id_for(seed, index, call.name, arguments)
        output.append({
            "id": "fc_" + call_id.removeprefix("call_"),
            "type": "function_call",
            "status": "completed",
            "call_id": call_id,
            "name": call.name,
            "arguments": arguments,
        })
        produced += call.name + arguments
    if reply.text or not reply.tool_calls:
        output.append({
            "id": "msg_" + _digest(seed, reply.text)[:24],
            "type": "message",
            "role": "assistant",
            "status": "completed",
            "content": [{"type": "output_text", "text": reply.text, "annotations": [], "logprobs": []}],
        })
        produced += reply.text
    input_tokens = estimate_tokens(prompt_text)
    output_tokens = estimate_tokens(produced)
    return {
        "id": "resp_" + seed[:32],
        "object": "response",
        "created_at": CREATED_AT,
        "completed_at": CREATED_AT,
        "status": "completed",
        "background": False,
        "error": None,
        "incomplete_details": None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "metadata": body.get("metadata") or {},
        "model": body.get("model"),
        "output": output,
        "parallel_tool_calls": bool(body.get("parallel_tool_calls", True)),
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": body.get("reasoning") or {"effort": None, "summary": None},
        "store": bool(body.get("store", False)),
        "temperature": body.get("temperature"),
        "text": body.get("text") or {"format": {"type": "text"}},
        "tool_choice": body.get("tool_choice") or "auto",
        "tools": body.get("tools") or [],
        "top_p": body.get("top_p"),
        "truncation": body.get("truncation") or "disabled",
        "usage": {
            "input_tokens": input_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": input_tokens + output_tokens,
        },
        "user": None,
    }


def responses_sse(response: dict[str, Any]) -> str:
    """The SSE stream for one Response: created, in_progress, each item's events, completed."""
    events: list[tuple[str, dict[str, Any]]] = []
    pending = {**response, "status": "in_progress", "output": [], "usage": None, "completed_at": None}
    events.append(("response.created", {"response": pending}))
    events.append(("response.in_progress", {"response": pending}))
    for output_index, item in enumerate(response["output"]):
        if item["type"] == "function_call":
            events.append(("response.output_item.added", {
                "output_index": output_index,
                "item": {**item, "status": "in_progress", "arguments": ""},
            }))
            events.append(("response.function_call_arguments.delta", {
                "item_id": item["id"], "output_index": output_index, "delta": item["arguments"],
            }))
            events.append(("response.function_call_arguments.done", {
                "item_id": item["id"], "output_index": output_index, "name": item["name"],
                "arguments": item["arguments"],
            }))
        else:
            text = item["content"][0]["text"]
            empty_part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            events.append(("response.output_item.added", {
                "output_index": output_index,
                "item": {**item, "status": "in_progress", "content": []},
            }))
            events.append(("response.content_part.added", {
                "item_id": item["id"], "output_index": output_index, "content_index": 0, "part": empty_part,
            }))
            for chunk in _chunks(text):
                events.append(("response.output_text.delta", {
                    "item_id": item["id"], "output_index": output_index, "content_index": 0,
                    "delta": chunk, "logprobs": [],
                }))
            events.append(("response.output_text.done", {
                "item_id": item["id"], "output_index": output_index, "content_index": 0,
                "text": text, "logprobs": [],
            }))
            events.append(("response.content_part.done", {
                "item_id": item["id"], "output_index": output_index, "content_index": 0,
                "part": item["content"][0],
            }))
        events.append(("response.output_item.done", {"output_index": output_index, "item": item}))
    events.append(("response.completed", {"response": response}))
    return "".join(
        _sse(kind, {"type": kind, "sequence_number": number, **data})
        for number, (kind, data) in enumerate(events)
    )


def _chunks(text: str, size: int = 400) -> list[str]:
    return [text[start:start + size] for start in range(0, len(text), size)] or [""]


# ---------------------------------------------------------------- Chat Completions API


def chat_object(body: dict[str, Any], reply: Reply, *, request_text: str, prompt_text: str) -> dict[str, Any]:
    seed = _digest(request_text)
    message: dict[str, Any] = {"role": "assistant", "content": reply.text or None, "refusal": None}
    produced = reply.text
    if reply.tool_calls:
        calls = []
        for index, call in enumerate(reply.tool_calls):
            arguments = _arguments_json(call.arguments)
            calls.append({
                "id": call_id_for(seed, index, call.name, arguments),
                "type": "function",
                "function": {"name": call.name, "arguments": arguments},
            })
            produced += call.name + arguments
        message["tool_calls"] = calls
    prompt_tokens = estimate_tokens(prompt_text)
    completion_tokens = estimate_tokens(produced)
    return {
        "id": "chatcmpl-" + seed[:29],
        "object": "chat.completion",
        "created": CREATED_AT,
        "model": body.get("model"),
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": None,
            "finish_reason": "tool_calls" if reply.tool_calls else "stop",
        }],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
        "system_fingerprint": "loopsite-standin",
    }


def chat_sse(body: dict[str, Any], completion: dict[str, Any]) -> str:
    """chat.completion.chunk events ending with `data: [DONE]`; usage last when stream_options asks."""
    base = {key: completion[key] for key in ("id", "created", "model", "system_fingerprint")}
    base["object"] = "chat.completion.chunk"
    message = completion["choices"][0]["message"]

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        return {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}

    chunks = [chunk({"role": "assistant", "content": ""})]
    for piece in _chunks(message["content"] or "") if message["content"] else []:
        chunks.append(chunk({"content": piece}))
    for index, call in enumerate(message.get("tool_calls") or []):
        chunks.append(chunk({"tool_calls": [{
            "index": index, "id": call["id"], "type": "function",
            "function": {"name": call["function"]["name"], "arguments": ""},
        }]}))
        chunks.append(chunk({"tool_calls": [{"index": index, "function": {"arguments": call["function"]["arguments"]}}]}))
    chunks.append(chunk({}, completion["choices"][0]["finish_reason"]))
    if (body.get("stream_options") or {}).get("include_usage"):
        chunks.append({**base, "choices": [], "usage": completion["usage"]})
    return "".join(_sse(None, item) for item in chunks) + _sse(None, "[DONE]")
