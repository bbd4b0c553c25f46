import json

import pytest

from runs import display
from runs.ingest import IngestError, lines_from_jsonl, lines_from_otlp_json, normalise_attributes, store_lines
from runs.models import Agent, Question, Run, Span

from .otlp_builders import T0_NS, openinference_trace, request, span

pytestmark = pytest.mark.django_db

TRACE = "0af7651916cd43dd8448eb211c80319c"


@pytest.fixture
def agent(engineer):
    return Agent.create_external(by=engineer, name="Support bot")[0]


def _store(agent, document):
    lines, rejected = lines_from_otlp_json(document)
    assert rejected == []
    return store_lines(agent=agent, lines=lines)


def test_an_openinference_trace_becomes_one_run_with_input_output_model_tokens_and_tree(agent):
    outcome = _store(agent, request(openinference_trace()))
    assert outcome.spans_stored == 4 and outcome.runs_created == 1
    run = Run.objects.get(agent=agent, trace_id=TRACE)
    assert run.source == Run.Source.IMPORTED and run.dataroom is None
    assert run.question.text == "What is our refund policy?" and run.question.imported
    assert run.final_answer == "Refunds within 30 days."
    assert run.model_name == "gpt-4o-mini"
    assert (run.input_tokens, run.output_tokens, run.total_tokens) == (300, 50, 350)
    assert (run.model_calls, run.tool_calls) == (2, 1)
    assert run.status == Run.Status.SUCCEEDED and run.agent_seconds == pytest.approx(10.0)
    assert run.harness.agent == agent and run.harness.agent_version == "1.0.0" and run.harness.is_imported
    tree = display.span_tree(run)
    assert [row.depth for row in tree.rows] == [0, 1, 1, 1]
    assert [row.kind for row in tree.rows] == ["AGENT", "LLM", "TOOL", "LLM"]
    assert tree.rows[2].tool_name == "search_docs"


def test_the_span_detail_reads_messages_and_tool_calls_and_keeps_raw_attributes(agent):
    _store(agent, request(openinference_trace()))
    span_row = Span.objects.get(span_id="00f067aa0ba902b7")
    detail = display.span_detail(span_row)
    assert [m.role for m in detail.input_messages] == ["system", "user"]
    assert detail.output_messages[0].tool_calls == [{"name": "search_docs", "arguments": '{\n  "q": "refund"\n}'}]
    assert detail.model == "gpt-4o-mini"
    raw = span_row.data["attributes"]
    assert raw["llm.input_messages.1.message.content"] == "What is our refund policy?"
    assert raw["inference.project_id"] == "support-bot" and raw["inference.observation_kind"] == "LLM"
    assert raw["inference.llm.input_tokens"] == 100
    assert span_row.data["resource"]["attributes"]["service.version"] == "1.0.0"
    assert span_row.data["start_time"].endswith("000000000Z") and len(span_row.data["start_time"]) == 30
    from datetime import datetime, timedelta, timezone

    t0 = datetime.fromtimestamp(T0_NS // 1_000_000_000, tz=timezone.utc)
    assert (span_row.start_time, span_row.end_time) == (t0 + timedelta(seconds=1), t0 + timedelta(seconds=3))
    assert span_row.duration_ms == 2000


def test_a_trace_sent_in_two_requests_is_one_run_and_its_summary_is_recomputed(agent):
    spans = openinference_trace()
    _store(agent, request(spans[1:3]))  # children first, as a batching exporter sends them
    run = Run.objects.get(trace_id=TRACE)
    assert run.tool_calls == 1 and run.final_answer == ""
    outcome = _store(agent, request([spans[0], spans[3]]))
    assert outcome.runs_updated == 1 and outcome.runs_created == 0
    run.refresh_from_db()
    assert run.spans.count() == 4 and sorted(run.spans.values_list("position", flat=True)) == [0, 1, 2, 3]
    assert run.final_answer == "Refunds within 30 days." and run.model_calls == 2
    assert Run.objects.filter(agent=agent).count() == 1


def test_a_trace_another_request_stores_meanwhile_is_appended_to_not_doubled(agent, monkeypatch):
    """Two exports of one new trace at once: the second finds no run, then the first stores it before the
    second's INSERT. The second's bulk INSERT is refused; it appends to the first's run instead."""
    from runs import ingest

    spans = openinference_trace()
    questions_for = ingest._questions_for

    def the_other_request_stores_first(texts):
        monkeypatch.setattr(ingest, "_questions_for", questions_for)
        _store(agent, request(spans[:2]))
        return questions_for(texts)

    monkeypatch.setattr(ingest, "_questions_for", the_other_request_stores_first)
    other = _store(agent, request([*spans, span("2" * 32, "b" * 16, "lone", {"input.value": "Hi"})]))
    assert (other.runs_created, other.runs_updated, other.duplicates, other.spans_stored) == (1, 1, 2, 3)
    run = Run.objects.get(agent=agent, trace_id=TRACE)
    assert sorted(run.spans.values_list("position", flat=True)) == [0, 1, 2, 3]
    assert run.final_answer == "Refunds within 30 days." and run.model_calls == 2
    assert Run.objects.get(agent=agent, trace_id="2" * 32).spans.count() == 1


def test_a_resent_request_stores_nothing_twice(agent):
    _store(agent, request(openinference_trace()))
    outcome = _store(agent, request(openinference_trace()))
    assert outcome.spans_stored == 0 and outcome.duplicates == 4
    assert Span.objects.filter(run__agent=agent).count() == 4


def test_otel_genai_current_form(agent):
    trace = "1" * 32
    document = request([
        span(trace, "a" * 16, "chat gpt-4.1", {
            "gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4.1", "gen_ai.response.model": "gpt-4.1-2025",
            "gen_ai.input.messages": json.dumps([
                {"role": "system", "parts": [{"type": "text", "content": "sys"}]},
                {"role": "user", "parts": [{"type": "text", "content": "Weather in Paris?"}]}]),
            "gen_ai.output.messages": json.dumps([{"role": "assistant", "parts": [
                {"type": "tool_call", "id": "c1", "name": "get_weather", "arguments": {"city": "Paris"}}],
                "finish_reason": "tool_call"}]),
            "gen_ai.usage.input_tokens": 40, "gen_ai.usage.output_tokens": 7,
        }),
        span(trace, "b" * 16, "execute_tool get_weather", {
            "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "get_weather",
            "gen_ai.tool.call.arguments": '{"city":"Paris"}', "gen_ai.tool.call.result": "rainy",
        }, parent="a" * 16),
    ], version="")
    _store(agent, document)
    run = Run.objects.get(trace_id=trace)
    assert run.question.text == "Weather in Paris?"
    assert run.model_name == "gpt-4.1-2025" and run.input_tokens == 40 and run.total_tokens == 47
    assert run.tool_calls == 1 and run.harness.agent_version == "unversioned"
    llm = display.span_detail(Span.objects.get(span_id="a" * 16))
    assert llm.kind == "LLM" and llm.output_messages[0].tool_calls[0]["name"] == "get_weather"
    tool = display.span_detail(Span.objects.get(span_id="b" * 16))
    assert (tool.kind, tool.tool_name, tool.tool_output) == ("TOOL", "get_weather", "rainy")


def test_otel_genai_older_indexed_form():
    attrs = normalise_attributes({
        "gen_ai.prompt.0.role": "user", "gen_ai.prompt.0.content": "Hi",
        "gen_ai.completion.0.role": "assistant", "gen_ai.completion.0.tool_calls.0.name": "lookup",
        "gen_ai.completion.0.tool_calls.0.arguments": "{}", "gen_ai.usage.prompt_tokens": 3,
        "gen_ai.usage.completion_tokens": 4, "gen_ai.system": "openai",
    }, project_id="p", agent_name="a")
    assert json.loads(attrs["llm.input_messages"]) == [{"role": "user", "content": "Hi"}]
    out = json.loads(attrs["llm.output_messages"])
    assert out[0]["tool_calls"][0]["function"] == {"name": "lookup", "arguments": "{}"}
    assert (attrs["llm.token_count.prompt"], attrs["llm.token_count.completion"], attrs["llm.token_count.total"]) == (3, 4, 7)
    assert attrs["inference.observation_kind"] == "LLM" and attrs["gen_ai.prompt.0.content"] == "Hi"


def test_a_key_the_span_has_is_never_overwritten():
    attrs = normalise_attributes({"openinference.span.kind": "TOOL", "tool.name": "mine", "gen_ai.tool.name": "other",
                                  "inference.project_id": "theirs"}, project_id="p", agent_name="a")
    assert attrs["tool.name"] == "mine" and attrs["inference.project_id"] == "theirs"


def test_agents_sdk_span_exports_and_halo_lines_in_jsonl(agent):
    sdk = [
        {"object": "trace.span", "id": "span_root00000000000000000001", "trace_id": "trace_" + "c" * 32, "parent_id": None,
         "started_at": "2026-11-01T10:00:00.000000+00:00", "ended_at": "2026-11-01T10:00:05.000000+00:00",
         "span_data": {"type": "agent", "name": "Triage", "handoffs": [], "tools": ["lookup"], "output_type": "str"},
         "error": None},
        {"object": "trace.span", "id": "span_gen000000000000000000001", "trace_id": "trace_" + "c" * 32,
         "parent_id": "span_root00000000000000000001",
         "started_at": "2026-11-01T10:00:01.000000+00:00", "ended_at": "2026-11-01T10:00:02.000000+00:00",
         "span_data": {"type": "generation", "model": "gpt-4o", "input": [{"role": "user", "content": "Hello there"}],
                       "output": [{"role": "assistant", "content": "Hi!"}], "usage": {"input_tokens": 5, "output_tokens": 2}},
         "error": None},
        {"object": "trace.span", "id": "span_fn0000000000000000000001", "trace_id": "trace_" + "c" * 32,
         "parent_id": "span_root00000000000000000001",
         "started_at": "2026-11-01T10:00:02.000000+00:00", "ended_at": "2026-11-01T10:00:03.000000+00:00",
         "span_data": {"type": "function", "name": "lookup", "input": "{}", "output": "found"},
         "error": {"message": "tool failed", "data": None}},
    ]
    text = "\n".join(json.dumps(item) for item in sdk)
    outcome = store_lines(agent=agent, lines=lines_from_jsonl(text))
    assert outcome.spans_stored == 3
    run = Run.objects.get(trace_id="c" * 32)
    assert run.question.text == "Hello there" and run.final_answer == "Hi!" and run.model_name == "gpt-4o"
    assert run.tool_calls == 1 and run.status == Run.Status.SUCCEEDED
    assert "tool failed" in run.last_error
    root = Span.objects.get(run=run, span_id="root00000000000000000001")
    assert root.observation_kind == "AGENT" and root.data["attributes"]["agent.name"] == "Triage"

    # The run's own download (HALO lines) imports again into another agent.
    halo_text = "\n".join(Span.jsonl_line(data) for data in run.spans.order_by("position").values_list("data", flat=True))
    other, _ = Agent.create_external(by=agent.created_by, name="Copy")
    store_lines(agent=other, lines=lines_from_jsonl(halo_text))
    copy = Run.objects.get(agent=other, trace_id="c" * 32)
    assert copy.spans.count() == 3 and copy.question_id == run.question_id and copy.final_answer == "Hi!"


@pytest.mark.parametrize("text, message", [
    ('{"trace_id": "a", "span_id": "b", "name": "x"}\n{broken', "Line 2: not valid JSON"),
    ('{"trace_id": "a", "name": "x"}', "Line 1: field `span_id` is missing"),
    ('\n\n{"trace_id": "a", "span_id": "b", "name": "x", "start_time": "yesterday"}', "Line 3: field `start_time`"),
    ('{"resourceSpans": [{"scopeSpans": [{"spans": [{"spanId": "00f067aa0ba902b7", "name": "x"}]}]}]}',
     "Line 1 resourceSpans[0].scopeSpans[0].spans[0]: trace_id is missing"),
    ('{"trace_id": "a", "span_id": "b", "name": "x", "parent_span_id": 5}', "Line 1: field `parent_span_id` must be"),
    ('{"trace_id": "a", "span_id": "b", "name": "x", "resource": "r"}', "Line 1: field `resource` must be an object"),
    ('{"resourceSpans": [{"resource": "r", "scopeSpans": []}]}', "Line 1 resourceSpans[0].resource: not an object"),
    ("", "holds no spans"),
])
def test_a_bad_line_refuses_the_whole_file_naming_line_and_field(text, message):
    with pytest.raises(IngestError) as error:
        lines_from_jsonl(text)
    assert message in str(error.value)


def test_otlp_spans_with_bad_ids_are_rejected_one_by_one():
    document = request([span("abc", "00f067aa0ba902b7", "short trace id", {}),
                        span("0" * 32, "00f067aa0ba902b7", "zero", {}),
                        span("1" * 32, "00f067aa0ba902b7", "fine", {})])
    lines, rejected = lines_from_otlp_json(document)
    assert [line["name"] for line in lines] == ["fine"]
    assert [r.reason for r in rejected] == ["trace_id must be 16 bytes and span_id 8 bytes", "trace_id is all zeros"]


def test_otlp_containers_that_are_not_objects_are_rejected_by_path():
    fine = span("1" * 32, "00f067aa0ba902b7", "fine", {})
    odd_values = dict(fine, spanId="2" * 16, attributes=[{"key": "a", "value": {"arrayValue": [1]}},
                                                           {"key": "k", "value": {"kvlistValue": "x"}}])
    document = {"resourceSpans": [
        {"resource": "r", "scopeSpans": [{"spans": [fine]}]},
        {"scopeSpans": ["s", {"scope": 7, "spans": [fine]}, {"spans": [odd_values]}]},
    ]}
    lines, rejected = lines_from_otlp_json(document)
    assert [str(r) for r in rejected] == ["resourceSpans[0].resource: not an object",
                                          "resourceSpans[1].scopeSpans[0]: not an object",
                                          "resourceSpans[1].scopeSpans[1].scope: not an object"]
    assert [line["attributes"] for line in lines] == [{"a": [], "k": {}}]


def test_imported_inputs_stay_out_of_the_question_bank(agent, client_for, engineer):
    _store(agent, request(openinference_trace()))
    assert Question.objects.filter(imported=True).count() == 1
    html = client_for(engineer).get("/questions/").content.decode()
    assert "What is our refund policy?" not in html


def test_a_long_input_is_cut_to_fit_the_question_index_in_bytes(agent):
    question = "質問" * 2000  # 12,000 bytes of UTF-8
    _store(agent, request(openinference_trace(question=question)))
    text = Run.objects.get(trace_id=TRACE).question.text
    assert len(text.encode("utf-8")) <= 2000 and text.endswith("…") and text.startswith("質問質問")


def test_imported_versions_cannot_be_started_as_builtin_runs(agent):
    from runs.forms import StartRunsForm

    imported = agent.harness_for_version("1.0")
    assert imported not in StartRunsForm().fields["harness"].queryset
