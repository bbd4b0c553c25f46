"""OTLP JSON requests for the ingest tests, written as an OpenTelemetry exporter writes them."""

import json

from runs.agents_sdk import otlp_attributes as attrs

T0_NS = 1_764_000_000_000_000_000


def span(trace_id, span_id, name, attributes, *, parent="", start=0, end=1, error=""):
    return {
        "traceId": trace_id, "spanId": span_id, "parentSpanId": parent, "name": name, "kind": 1,
        "startTimeUnixNano": str(T0_NS + start * 1_000_000_000), "endTimeUnixNano": str(T0_NS + end * 1_000_000_000),
        "attributes": attrs(attributes), "status": {"code": 2, "message": error} if error else {"code": 1},
    }


def request(spans, *, service="support-bot", version="1.0.0"):
    resource = {"service.name": service}
    if version:
        resource["service.version"] = version
    return {"resourceSpans": [{"resource": {"attributes": attrs(resource)},
                               "scopeSpans": [{"scope": {"name": "test", "version": "1"}, "spans": spans}]}]}


def openinference_trace(trace_id="0af7651916cd43dd8448eb211c80319c", *, question="What is our refund policy?",
                        answer="Refunds within 30 days.", tool_output="policy.md: 30 days", payload=""):
    """agent → llm (asks for a tool) → tool → llm (answers), in OpenInference attributes."""
    root, llm1, tool, llm2 = "b7ad6b7169203331", "00f067aa0ba902b7", "1111111111111111", "2222222222222222"
    return [
        span(trace_id, root, "support-agent", {
            "openinference.span.kind": "AGENT", "input.value": question, "output.value": answer, "agent.name": "support",
        }, start=0, end=10),
        span(trace_id, llm1, "ChatCompletion", {
            "openinference.span.kind": "LLM", "llm.model_name": "gpt-4o-mini",
            "llm.input_messages.0.message.role": "system", "llm.input_messages.0.message.content": "Be helpful." + payload,
            "llm.input_messages.1.message.role": "user", "llm.input_messages.1.message.content": question,
            "llm.output_messages.0.message.role": "assistant",
            "llm.output_messages.0.message.tool_calls.0.tool_call.id": "call_1",
            "llm.output_messages.0.message.tool_calls.0.tool_call.function.name": "search_docs",
            "llm.output_messages.0.message.tool_calls.0.tool_call.function.arguments": json.dumps({"q": "refund"}),
            "llm.token_count.prompt": 100, "llm.token_count.completion": 20, "llm.token_count.total": 120,
        }, parent=root, start=1, end=3),
        span(trace_id, tool, "search_docs", {
            "openinference.span.kind": "TOOL", "tool.name": "search_docs", "input.value": json.dumps({"q": "refund"}),
            "output.value": tool_output,
        }, parent=root, start=3, end=4),
        span(trace_id, llm2, "ChatCompletion", {
            "openinference.span.kind": "LLM", "llm.model_name": "gpt-4o-mini",
            "llm.input_messages.0.message.role": "user", "llm.input_messages.0.message.content": question,
            "llm.output_messages.0.message.role": "assistant", "llm.output_messages.0.message.content": answer,
            "llm.token_count.prompt": 200, "llm.token_count.completion": 30,
        }, parent=root, start=4, end=9),
    ]
