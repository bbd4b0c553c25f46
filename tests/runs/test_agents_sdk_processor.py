"""The Agents SDK trace processor sends real SDK spans, with messages and tool calls, to /v1/traces."""

import pytest
from agents import set_trace_processors
from agents.tracing import agent_span, function_span, generation_span, trace

from runs.agents_sdk import LoopsiteProcessor
from runs.models import Agent, Run, Span
from runs import display


@pytest.mark.django_db(transaction=True)
def test_an_sdk_program_sends_its_trace_in_two_lines(live_server, engineer):
    agent, token = Agent.create_external(by=engineer, name="Triage bot")
    processor = LoopsiteProcessor(live_server.url, token=token, service_name="triage", version="0.9")
    set_trace_processors([processor])
    try:
        with trace("Customer triage"):
            with agent_span(name="Triage", tools=["lookup_order"]):
                with generation_span(model="gpt-4o-mini", input=[{"role": "user", "content": "Where is order 7?"}],
                                     output=[{"role": "assistant", "content": None, "tool_calls": [
                                         {"id": "c1", "type": "function",
                                          "function": {"name": "lookup_order", "arguments": '{"id": 7}'}}]}],
                                     usage={"input_tokens": 11, "output_tokens": 5}):
                    pass
                with function_span(name="lookup_order", input='{"id": 7}', output="shipped"):
                    pass
                with generation_span(model="gpt-4o-mini", input=[{"role": "user", "content": "Where is order 7?"}],
                                     output=[{"role": "assistant", "content": "Order 7 has shipped."}],
                                     usage={"input_tokens": 20, "output_tokens": 6}):
                    pass
        processor.force_flush()
    finally:
        processor.shutdown()
        set_trace_processors([])
    run = Run.objects.get(agent=agent)
    assert run.spans.count() == 4 and run.harness.agent_version == "0.9"
    assert run.question.text == "Where is order 7?" and run.final_answer == "Order 7 has shipped."
    assert (run.model_calls, run.tool_calls, run.input_tokens, run.output_tokens) == (2, 1, 31, 11)
    first_llm = Span.objects.filter(run=run, observation_kind="LLM").order_by("start_time").first()
    detail = display.span_detail(first_llm)
    assert detail.output_messages[0].tool_calls[0]["name"] == "lookup_order"
    tool = display.span_detail(Span.objects.get(run=run, observation_kind="TOOL"))
    assert (tool.tool_name, tool.tool_output) == ("lookup_order", "shipped")
    root = Span.objects.get(run=run, parent_span_id="")
    assert root.data["attributes"]["agent.workflow.name"] == "Customer triage"
