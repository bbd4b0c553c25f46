"""The HALO JSONL exporter, fed by real Agents SDK spans."""

import json
import re

import pytest
from agents.tracing import (
    SpanError,
    agent_span,
    custom_span,
    function_span,
    generation_span,
    response_span,
    set_trace_processors,
    trace,
)
from openai.types.responses import Response

from runs.runner import parse_otlp_timestamp
from runs.tracing import (
    MAX_ATTRIBUTE_CHARS,
    ExportContext,
    HaloJsonlProcessor,
    capped_json,
    otlp_timestamp,
)

TRACE_ID = "0123456789abcdef0123456789abcdef"
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z$")


@pytest.fixture
def export(tmp_path):
    """`export(body)` runs `body()` inside a traced workflow and returns the JSONL lines."""
    path = tmp_path / "trace.jsonl"

    def run(body, **trace_kwargs):
        processor = HaloJsonlProcessor(path, ctx=ExportContext(
            project_id="loopsite", service_name="analyst", service_version="v007",
            deployment_environment="test", extra_resource_attributes={"agent.config.version": "v007"},
        ))
        set_trace_processors([processor])
        try:
            with trace(workflow_name="Diligence", trace_id=f"trace_{TRACE_ID}", group_id="batch-3",
                       metadata={"trace_label": "trace-01"}, **trace_kwargs):
                body()
        finally:
            processor.shutdown()
            set_trace_processors([])
        return [json.loads(line) for line in path.read_text().splitlines()]

    return run


def make_response(**overrides) -> Response:
    data = {
        "id": "resp_1", "object": "response", "created_at": 1.0, "model": "gpt-5.5",
        "output": [{"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "exec_command",
                    "arguments": '{"cmd": "cat data/board_deck.md"}', "status": "completed"}],
        "status": "completed", "parallel_tool_calls": True, "tool_choice": "auto", "tools": [],
        "usage": {"input_tokens": 120, "output_tokens": 30, "total_tokens": 150,
                  "input_tokens_details": {"cached_tokens": 0}, "output_tokens_details": {"reasoning_tokens": 0}},
    }
    data.update(overrides)
    return Response.model_validate(data)


def test_it_writes_one_line_per_finished_span_with_the_halo_schema(export):
    def body():
        with custom_span("sandbox_workspace", {"tool.name": "sandbox_workspace", "tool.input": {"mounted": "data"}}):
            with agent_span(name="Analyst", tools=["exec_command"]):
                with function_span("exec_command", input='{"cmd": "ls"}') as fn:
                    fn.span_data.output = "board_deck.md"

    lines = export(body)
    assert [line["name"] for line in lines] == ["function.exec_command", "agent.Analyst", "custom.sandbox_workspace"]
    function, agent, workspace = lines
    for line in lines:
        assert set(line) == {"trace_id", "span_id", "parent_span_id", "trace_state", "name", "kind", "start_time",
                             "end_time", "status", "resource", "scope", "attributes"}
        assert line["trace_id"] == TRACE_ID
        assert not line["span_id"].startswith("span_") and len(line["span_id"]) == 24
        assert TIMESTAMP.match(line["start_time"]) and TIMESTAMP.match(line["end_time"])
        assert line["start_time"] <= line["end_time"]
        assert line["status"] == {"code": "STATUS_CODE_OK", "message": ""}
        assert line["kind"] == "SPAN_KIND_INTERNAL"
        assert line["resource"] == {"attributes": {
            "service.name": "analyst", "service.version": "v007", "deployment.environment": "test",
            "agent.config.version": "v007"}}
        assert line["scope"]["name"] == "openai-agents-sdk" and line["scope"]["version"]
        attrs = line["attributes"]
        assert attrs["inference.export.schema_version"] == 1
        assert attrs["inference.project_id"] == "loopsite"
        assert attrs["inference.session_id"] == "batch-3"
        assert attrs["agent.workflow.name"] == "Diligence"
        assert attrs["agent.trace_metadata.trace_label"] == "trace-01"
        assert None not in attrs.values()
    assert workspace["parent_span_id"] == ""
    assert agent["parent_span_id"] == workspace["span_id"]
    assert function["parent_span_id"] == agent["span_id"]

    assert function["attributes"]["inference.observation_kind"] == "TOOL"
    assert function["attributes"]["tool.name"] == "exec_command"
    assert function["attributes"]["input.value"] == '{"cmd": "ls"}'
    assert function["attributes"]["output.value"] == "board_deck.md"
    assert agent["attributes"]["inference.observation_kind"] == "AGENT"
    assert agent["attributes"]["inference.agent_name"] == "Analyst"
    assert agent["attributes"]["agent.tools"] == '["exec_command"]'
    # Spans inside the agent carry its name too; spans outside it do not.
    assert function["attributes"]["inference.agent_name"] == "Analyst"
    assert workspace["attributes"]["inference.agent_name"] == ""
    assert workspace["attributes"]["inference.observation_kind"] == "SPAN"
    assert workspace["attributes"]["sdk.data.tool.name"] == "sandbox_workspace"
    assert json.loads(workspace["attributes"]["sdk.data.tool.input"]) == {"mounted": "data"}


def test_response_spans_carry_model_input_output_and_tokens(export):
    def body():
        with response_span() as span:
            span.span_data.input = [{"role": "user", "content": "What is the burn?"}]
            span.span_data.response = make_response()
            span.span_data.usage = {"input_tokens": 120, "output_tokens": 30, "total_tokens": 150}

    (line,) = export(body)
    attrs = line["attributes"]
    assert line["name"] == "response"
    assert line["kind"] == "SPAN_KIND_CLIENT"
    assert attrs["inference.observation_kind"] == "LLM"
    assert attrs["llm.response.id"] == "resp_1"
    assert attrs["llm.model_name"] == attrs["inference.llm.model_name"] == "gpt-5.5"
    assert (attrs["llm.token_count.prompt"], attrs["llm.token_count.completion"], attrs["llm.token_count.total"]) \
        == (120, 30, 150)
    assert (attrs["inference.llm.input_tokens"], attrs["inference.llm.output_tokens"]) == (120, 30)
    assert json.loads(attrs["llm.input_messages"]) == [{"role": "user", "content": "What is the burn?"}]
    (call,) = json.loads(attrs["llm.output_messages"])
    assert call["type"] == "function_call" and call["name"] == "exec_command"


def test_response_tokens_come_from_the_response_when_the_export_has_no_usage(export):
    def body():
        with response_span() as span:
            span.span_data.input = "Plain string input"
            span.span_data.response = make_response()

    (line,) = export(body)
    attrs = line["attributes"]
    assert (attrs["inference.llm.input_tokens"], attrs["inference.llm.output_tokens"]) == (120, 30)
    assert json.loads(attrs["llm.input_messages"]) == [{"role": "user", "content": "Plain string input"}]


def test_long_model_input_is_capped_and_stays_valid_json(export):
    history = [{"role": "user", "content": "question"}] + [
        {"type": "function_call_output", "call_id": f"call_{i}", "output": "x" * 9000} for i in range(40)]

    def body():
        with response_span() as span:
            span.span_data.input = history
            span.span_data.response = make_response()

    (line,) = export(body)
    text = line["attributes"]["llm.input_messages"]
    assert len(text) <= MAX_ATTRIBUTE_CHARS
    items = json.loads(text)
    assert items[0] == {"role": "user", "content": "question"}
    assert items[1]["type"] == "truncated" and items[1]["omitted_items"] > 0
    assert items[-1]["call_id"] == "call_39"


def test_generation_spans_keep_the_notebook_attributes(export):
    def body():
        with generation_span(model="gpt-5.5", input=[{"role": "user", "content": "hi"}],
                             usage={"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}) as span:
            span.span_data.output = [{"role": "assistant", "content": "hello"}]

    (line,) = export(body)
    attrs = line["attributes"]
    assert line["name"] == "generation.gpt-5.5"
    assert line["kind"] == "SPAN_KIND_CLIENT"
    assert attrs["llm.input_messages.0.message.role"] == "user"
    assert attrs["llm.output_messages.0.message.content"] == "hello"
    assert (attrs["inference.llm.input_tokens"], attrs["inference.llm.output_tokens"]) == (5, 2)
    assert attrs["llm.token_count.total"] == 7


def test_failed_spans_have_error_status(export):
    def body():
        with function_span("exec_command", input="{}") as span:
            span.set_error(SpanError(message="Error running tool", data={"error": "boom"}))

    (line,) = export(body)
    assert line["status"] == {"code": "STATUS_CODE_ERROR", "message": "Error running tool"}
    assert json.loads(line["attributes"]["sdk.error.data"]) == {"error": "boom"}


def test_each_line_is_flushed_as_soon_as_its_span_ends(tmp_path):
    path = tmp_path / "t.jsonl"
    processor = HaloJsonlProcessor(path, ctx=ExportContext(project_id="p", service_name="s"))
    set_trace_processors([processor])
    try:
        with trace(workflow_name="w", trace_id=f"trace_{TRACE_ID}"):
            with custom_span("first", {}):
                pass
            assert len(path.read_text().splitlines()) == 1
    finally:
        processor.shutdown()
        set_trace_processors([])


def test_timestamps_round_trip():
    text = otlp_timestamp("2026-11-26T07:30:12.558534+00:00")
    assert text == "2026-11-26T07:30:12.558534000Z"
    parsed = parse_otlp_timestamp(text)
    assert parsed.isoformat() == "2026-11-26T07:30:12.558534+00:00"
    assert otlp_timestamp(None) == "" and parse_otlp_timestamp("") is None


def test_capped_json_leaves_small_values_alone():
    assert capped_json([{"a": 1}]) == '[{"a":1}]'
    assert capped_json(None) is None
    assert len(capped_json({"blob": "y" * 50_000})) <= MAX_ATTRIBUTE_CHARS


def test_generation_spans_expand_only_the_first_and_latest_input_messages(export):
    history = [{"role": "user", "content": f"message {i}"} for i in range(10)]

    def body():
        with generation_span(model="m", input=history):
            pass

    (line,) = export(body)
    attrs = line["attributes"]
    expanded = sorted(int(key.split(".")[2]) for key in attrs if key.endswith(".message.content")
                      and key.startswith("llm.input_messages."))
    assert expanded == [0, 6, 7, 8, 9]
    assert attrs["llm.input_messages.7.message.content"] == "message 7"
    assert len(json.loads(attrs["llm.input_messages"])) == 10
