"""The stand-in's HALO agent role, request by request (no HTTP, no HALO)."""

import json

import pytest

from loopsite.standin import dispatch, halo_agent
from loopsite.standin.conversation import Conversation, Exchange
from loopsite.standin.rules import PARENT_ACCOUNT_ROLLUP
from reviews import halo
from tests.reviews import halo_samples as samples

HALO_TOOLS = ("get_dataset_overview", "query_traces", "count_traces", "view_trace", "view_spans", "search_trace",
              "search_span", "get_context_item", "synthesize_traces")


def conversation(*, root=True, subagents=False, exchanges=(), last_user="[HALO: turn 2 of 20]"):
    tools = {name: {} for name in HALO_TOOLS}
    if root:
        tools["final_answer"] = {}
    if subagents:
        tools["call_subagent"] = {}
    return Conversation(model="gpt-5.5", instructions="You are the root agent in the HALO engine.",
                        messages=[("user", halo.render_report_prompt()), ("user", last_user)],
                        exchanges=list(exchanges), tools=tools)


def exchange(name, arguments, result, index=[0]):  # noqa: B006 - a counter for call ids
    index[0] += 1
    return Exchange(call_id=f"call_{index[0]}", name=name, arguments=arguments,
                    output=json.dumps({"result": result}))


def read_everything():
    """The exchanges of a root agent that has read the whole sample context."""
    lines = halo.build_context_lines(**samples.context_kwargs())
    by_trace = {}
    for line in lines:
        if "optimizer.signal_source" in line["attributes"]:
            by_trace.setdefault(line["trace_id"], []).append(line)
    overview = {"total_traces": 7, "total_spans": len(lines), "otel_error_span_count": 0}
    result = [exchange("get_dataset_overview", {}, overview),
              exchange("query_traces", {"filters": {"regex_pattern": halo_agent.SIGNAL_REGEX}},
                       {"traces": [{"trace_id": trace_id} for trace_id in by_trace], "total": len(by_trace)})]
    for trace_id, spans in by_trace.items():
        matches = [{"trace_id": trace_id, "span_id": span["span_id"]} for span in spans]
        result.append(exchange("search_trace", {"trace_id": trace_id}, {"trace_id": trace_id, "matches": matches}))
    for trace_id, spans in by_trace.items():
        result.append(exchange("view_spans", {"trace_id": trace_id, "span_ids": [s["span_id"] for s in spans]},
                               {"trace_id": trace_id, "spans": spans, "oversized": None}))
    return result


def test_it_claims_requests_that_offer_halos_trace_tools():
    assert halo_agent.matches(conversation())
    assert halo_agent.matches(conversation(root=False))
    assert dispatch.choose_role(conversation()) is halo_agent
    plain = Conversation(model="gpt-5.5", messages=[("user", "hello")], tools={"final_answer": {}})
    assert not halo_agent.matches(plain)
    assert dispatch.choose_role(plain).NAME == "generic"
    analyst = Conversation(model="gpt-5.5", messages=[("user", "hello")], tools={"exec_command": {}})
    assert dispatch.choose_role(analyst).NAME == "analyst"


def test_the_root_starts_with_the_overview_and_a_subagent_when_it_can():
    first = halo_agent.reply(conversation(subagents=True))
    assert [call.name for call in first.tool_calls] == ["get_dataset_overview", "call_subagent"]
    assert first.tool_calls[1].arguments == {"input": halo_agent.SUBAGENT_QUESTION}
    alone = halo_agent.reply(conversation())
    assert [call.name for call in alone.tool_calls] == ["get_dataset_overview"]


def test_the_root_queries_then_searches_then_views_the_signal_spans():
    overview = exchange("get_dataset_overview", {}, {"total_traces": 3})
    step = halo_agent.reply(conversation(exchanges=[overview]))
    assert [(c.name, c.arguments) for c in step.tool_calls] == [
        ("query_traces", {"filters": {"regex_pattern": '"optimizer\\.signal_source"'}, "limit": 500})]
    query = exchange("query_traces", step.tool_calls[0].arguments,
                     {"traces": [{"trace_id": "t1"}, {"trace_id": "t2"}], "total": 2})
    step = halo_agent.reply(conversation(exchanges=[overview, query]))
    assert [(c.name, c.arguments["trace_id"]) for c in step.tool_calls] == [("search_trace", "t1"),
                                                                            ("search_trace", "t2")]
    searches = [exchange("search_trace", {"trace_id": "t1"}, {"matches": [{"trace_id": "t1", "span_id": "a"},
                                                                          {"trace_id": "t1", "span_id": "b"}]}),
                exchange("search_trace", {"trace_id": "t2"}, {"matches": []})]
    step = halo_agent.reply(conversation(exchanges=[overview, query, *searches]))
    assert [(c.name, c.arguments) for c in step.tool_calls] == [
        ("view_spans", {"trace_id": "t1", "span_ids": ["a", "b"]})]


def test_it_pages_through_many_signal_traces():
    overview = exchange("get_dataset_overview", {}, {"total_traces": 700})
    page = exchange("query_traces", {"limit": 500},
                    {"traces": [{"trace_id": f"t{n}"} for n in range(500)], "total": 700})
    step = halo_agent.reply(conversation(exchanges=[overview, page]))
    assert [(c.name, c.arguments.get("offset")) for c in step.tool_calls] == [("query_traces", 500)]


def test_an_oversized_batch_is_read_one_span_at_a_time():
    overview = exchange("get_dataset_overview", {}, {"total_traces": 1})
    query = exchange("query_traces", {}, {"traces": [{"trace_id": "t1"}], "total": 1})
    search = exchange("search_trace", {"trace_id": "t1"}, {"matches": [{"trace_id": "t1", "span_id": "a"},
                                                                        {"trace_id": "t1", "span_id": "b"}]})
    oversized = exchange("view_spans", {"trace_id": "t1", "span_ids": ["a", "b"]},
                         {"trace_id": "t1", "spans": [], "oversized": {"span_count": 2}})
    step = halo_agent.reply(conversation(exchanges=[overview, query, search, oversized]))
    assert [(c.name, c.arguments["span_ids"]) for c in step.tool_calls] == [("view_spans", ["a"]),
                                                                            ("view_spans", ["b"])]
    singles = [exchange("view_spans", {"trace_id": "t1", "span_ids": [span_id]},
                        {"trace_id": "t1", "spans": [], "oversized": {"span_count": 1}}) for span_id in "ab"]
    final = halo_agent.reply(conversation(exchanges=[overview, query, search, oversized, *singles]))
    assert [c.name for c in final.tool_calls] == ["final_answer"]


def test_after_reading_it_calls_final_answer_with_the_seven_sections():
    step = halo_agent.reply(conversation(exchanges=read_everything()))
    assert [c.name for c in step.tool_calls] == ["final_answer"]
    answer = step.tool_calls[0].arguments["answer"]
    assert halo.check_sections(answer) == []
    assert halo.check_subheadings(answer) == []
    assert f"> {PARENT_ACCOUNT_ROLLUP.sentence}" in answer
    assert halo.top_priorities(answer)[0]["rule_id"] == "parent_account_rollup"


@pytest.mark.parametrize("nudge", [
    "[HALO: turn 3 of 3 — last turn. Call the `final_answer` tool with your complete final answer now.]",
    "[HALO: your run ended without calling the `final_answer` tool. Call `final_answer` now with your complete "
    "final answer.]",
])
def test_a_last_turn_nudge_finishes_at_once_with_what_was_read(nudge):
    step = halo_agent.reply(conversation(exchanges=[], last_user=nudge))
    assert [c.name for c in step.tool_calls] == ["final_answer"]
    answer = step.tool_calls[0].arguments["answer"]
    assert halo.check_sections(answer) == []
    assert "0 of 0 passed" in answer


def test_a_subagent_reads_the_overview_and_the_traces_then_answers_in_text():
    sub = conversation(root=False)
    assert [c.name for c in halo_agent.reply(sub).tool_calls] == ["get_dataset_overview"]
    overview = exchange("get_dataset_overview", {}, {"total_traces": 7, "total_spans": 33, "agent_names": ["analyst"],
                                                     "model_names": ["gpt-5.5"], "otel_error_span_count": 1,
                                                     "tool_error_span_count": 0, "error_trace_count": 1})
    step = halo_agent.reply(conversation(root=False, exchanges=[overview]))
    assert [(c.name, c.arguments) for c in step.tool_calls] == [("query_traces", {"limit": 500})]
    traces = exchange("query_traces", {"limit": 500}, {"traces": [
        {"trace_id": "run1", "span_count": 6, "agent_names": ["analyst"]},
        {"trace_id": "cfg", "span_count": 1, "agent_names": []}], "total": 2})
    answer = halo_agent.reply(conversation(root=False, exchanges=[overview, traces]))
    assert not answer.tool_calls
    assert "7 traces, 33 spans" in answer.text
    assert "1 of the 2 traces listed are agent execution traces" in answer.text
    assert "1 OTel error spans" in answer.text
    assert "trace run1 with 6 spans" in answer.text


@pytest.mark.parametrize(("text", "rule_id"), [
    ("Roll concentration up to Northstar Holdings. Legal-entity framing understates the real dependency.",
     "parent_account_rollup"),
    ("Be exact about certification status: Type I is complete; Type II is still in progress.",
     "certification_precision"),
    ("Use the controlled ARR bridge as the reliable figure and preserve the board-versus-finance contradiction.",
     "source_of_truth_metrics"),
    ("Refuse official NRR and CAC payback when the dataroom does not support them.", "unvalidated_estimates"),
    ("Customer concentration must use finance-controlled ARR as the denominator after parent-account rollups.",
     "parent_account_rollup"),
    ("State both the 11-month runway and rising burn as financing risk.", "runway_consequence"),
])
def test_signals_match_the_rule_they_mention_most(text, rule_id):
    rule = halo_agent.best_rule(text)
    assert (rule.id if rule else None) == rule_id
