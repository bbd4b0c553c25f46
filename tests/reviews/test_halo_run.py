"""Running HALO (halo-engine, in its own process) against the offline stand-in model."""

import json
import os
import sys
import time

import pytest

from loopsite.childproc import PROJECT_ROOT, secretless_env
from loopsite.standin.rules import CERTIFICATION_PRECISION, PARENT_ACCOUNT_ROLLUP, RULES, SOURCE_OF_TRUTH_METRICS
from reviews import halo
from tests.reviews import halo_samples as samples

# The budget for one HALO run against the stand-in; it measures about 2 to 4 s on a shared 2-core machine.
RUN_BUDGET_SECONDS = 20


def write(tmp_path, **overrides):
    lines = halo.build_context_lines(**{**samples.context_kwargs(), **overrides})
    return halo.write_context(lines, tmp_path / "context.jsonl")


def options(base_url, **overrides):
    values = {"model": "gpt-5.5", "base_url": base_url, "api_key": "standin-no-key", "maximum_depth": 1,
              "maximum_turns": 20, "maximum_parallel_subagents": 2, "status_interval": 0.5}
    values.update(overrides)
    return halo.HaloOptions(**values)


@pytest.fixture(scope="module")
def full_run(standin_server, tmp_path_factory):
    """One HALO run over the sample context (depth 1), shared by the tests that read its outcome."""
    path = write(tmp_path_factory.mktemp("halo"))
    events = []
    started = time.monotonic()
    report = halo.run_halo(context_path=path, prompt=halo.render_report_prompt(), options=options(standin_server),
                           on_event=events.append, timeout=120)
    seconds = time.monotonic() - started
    print(f"\nOne HALO run against the stand-in (depth 1): {seconds:.2f} s")
    return {"report": report, "events": events, "seconds": seconds, "path": path}


def test_the_report_has_the_seven_sections_in_order(full_run):
    report = full_run["report"]
    assert halo.check_sections(report) == []
    assert halo.check_subheadings(report) == []
    handoff = halo.clean_handoff(report)
    assert handoff.startswith("## Executive summary")
    assert "Offline stand-in HALO agent" in report and "Offline stand-in HALO agent" not in handoff
    assert "**Eval gate: failed** — 3 of 5 passed, 2 failed." in handoff


def test_it_recommends_the_parent_account_rule_for_the_failing_concentration_row(full_run):
    handoff = halo.clean_handoff(full_run["report"])
    detailed = halo.extract_section(handoff, "## Detailed recommendations")
    prompt_part = detailed[detailed.index("#### Prompt"):detailed.index("#### Skills")]
    assert f"> {PARENT_ACCOUNT_ROLLUP.sentence}" in prompt_part
    # Ranked by failing gate rows: concentration and SOC 2 fail.
    assert prompt_part.index(PARENT_ACCOUNT_ROLLUP.sentence) < prompt_part.index(CERTIFICATION_PRECISION.sentence)
    # v001 already prefers structured exports over narrative files when they conflict (the source-of-truth rule in
    # other words) and the ARR row passes: nothing to add for it, and no claim that the prompt lacks it.
    assert SOURCE_OF_TRUTH_METRICS.sentence not in prompt_part
    summary = halo.extract_section(handoff, "## Executive summary")
    assert "the prompt already states: Finance-controlled exports are the source of truth for metrics" in summary
    top = halo.extract_section(handoff, "## Top 3 changes to implement first")
    assert top.index("Roll customer concentration up to parent accounts") < top.index("State exact certification status")
    priorities = halo.top_priorities(handoff)
    assert priorities[0]["rule_id"] == "parent_account_rollup"
    assert priorities[0]["prompt_sentence"] == PARENT_ACCOUNT_ROLLUP.sentence
    assert priorities[0]["classification"] == "missing requirement"
    assert priorities[0]["evidence"]["failing_gate_rows"] == ["eval-concentration"]
    assert priorities[0]["evidence"]["human_feedback"] == ["human-trace-03"]


def test_the_report_is_built_from_what_halo_read(full_run):
    handoff = halo.clean_handoff(full_run["report"])
    diagnosis = halo.extract_section(handoff, "## Supporting diagnosis and evidence")
    assert "Gate row `eval-concentration` on trace-03 failed" in diagnosis
    assert "Roll concentration up to Northstar Holdings" in diagnosis
    # The runway feedback matches no harness rule: a requirement to write, no rule sentence.
    assert "State both the 11-month runway and rising burn as financing risk" in diagnosis
    insights = halo.extract_section(handoff, "## Insights by feedback source")
    for source in ("Traces", "Human feedback", "LLM feedback", "Generated evals", "Eval-gate results", "Harness config"):
        assert f"| {source} |" in insights
    assert "5 agent execution trace(s)" in insights
    assert "Version `v001`" in insights
    assert "Subagent: I read the dataset" in insights  # the subagent's answer reached the root


def test_on_event_received_the_tool_calls_as_they_happened(full_run):
    events = full_run["events"]
    kinds = [event["type"] for event in events]
    assert kinds[0] == "status" and kinds[-1] == "report"
    assert events[-1]["text"] == full_run["report"]
    calls = [event for event in events if event["type"] == "tool_call"]
    names = [event["name"] for event in calls]
    assert names[:2] == ["get_dataset_overview", "call_subagent"]
    for name in ("query_traces", "search_trace", "view_spans"):
        assert name in names
    sub_calls = [event for event in calls if event["depth"] == 1]
    assert [event["name"] for event in sub_calls] == ["get_dataset_overview", "query_traces"]
    assert all(len(event["arguments"]) <= 300 for event in calls)
    assert "tool_result" in kinds
    assert any(event["type"] == "text" and event["depth"] == 1 for event in events)  # the subagent's answer
    assert full_run["seconds"] < RUN_BUDGET_SECONDS


def test_without_subagents_the_root_reads_alone(standin_server, tmp_path):
    events = []
    report = halo.run_halo(context_path=write(tmp_path), prompt=halo.render_report_prompt(),
                           options=options(standin_server, maximum_depth=0), on_event=events.append, timeout=120)
    assert halo.check_sections(report) == []
    names = {event["name"] for event in events if event["type"] == "tool_call"}
    assert "call_subagent" not in names and "view_spans" in names
    assert all(event.get("depth", 0) == 0 for event in events)


def test_only_the_rules_behind_the_failures_are_recommended(standin_server, tmp_path):
    concentration = [row for row in samples.gate_rows() if row["eval_id"] == "eval-concentration"]
    path = write(tmp_path, human_feedback=[], llm_insights=[],
                 eval_definitions=[e for e in samples.eval_definitions() if e["eval_id"] == "eval-concentration"],
                 gate_rows=concentration, gate_summary={"total": 1, "passed": 0, "failed": 1})
    report = halo.run_halo(context_path=path, prompt=halo.render_report_prompt(),
                           options=options(standin_server, maximum_depth=0), timeout=120)
    assert PARENT_ACCOUNT_ROLLUP.sentence in report
    for rule in RULES:
        if rule is not PARENT_ACCOUNT_ROLLUP:
            assert rule.sentence not in report, rule.id
    assert [item["rule_id"] for item in halo.top_priorities(report)] == ["parent_account_rollup", None]


def test_a_rule_already_in_the_harness_is_enforced_not_added_again(standin_server, tmp_path):
    config = samples.harness_config()
    config["system_prompt"] += "\n\n" + PARENT_ACCOUNT_ROLLUP.sentence
    report = halo.run_halo(context_path=write(tmp_path, harness_config=config), prompt=halo.render_report_prompt(),
                           options=options(standin_server, maximum_depth=0), timeout=120)
    detailed = halo.extract_section(report, "## Detailed recommendations")
    assert f"> {PARENT_ACCOUNT_ROLLUP.sentence}" not in detailed
    assert f"> {CERTIFICATION_PRECISION.sentence}" in detailed
    priorities = halo.top_priorities(report)
    assert priorities[0]["rule_id"] == "parent_account_rollup"
    assert priorities[0]["kind"] == "enforce_existing_rule"
    assert priorities[0]["classification"] == "present but not reliably followed"
    assert priorities[0]["prompt_sentence"] is None


def test_a_context_halo_cannot_load_fails_with_its_reason(standin_server, tmp_path):
    path = tmp_path / "context.jsonl"
    path.write_text(json.dumps({"trace_id": "abc", "name": "no span id"}) + "\n", encoding="utf-8")
    events = []
    with pytest.raises(halo.HaloError, match="HALO failed: ValidationError") as caught:
        halo.run_halo(context_path=path, prompt="Report.", options=options(standin_server),
                      on_event=events.append, timeout=60)
    assert events[-1]["type"] == "error"
    assert "span_id" in str(caught.value)
    assert "HALO stderr (tail)" in str(caught.value)


def test_a_missing_context_file_fails_before_starting(tmp_path):
    with pytest.raises(halo.HaloError, match="does not exist"):
        halo.run_halo(context_path=tmp_path / "nope.jsonl", prompt="Report.", options=options("http://x/v1"))


def test_it_stops_halo_at_the_timeout(standin_server, tmp_path):
    started = time.monotonic()
    with pytest.raises(halo.HaloError, match="timed out after") as caught:
        halo.run_halo(context_path=write(tmp_path), prompt=halo.render_report_prompt(),
                      options=options(standin_server), timeout=0.5)
    assert caught.value.timed_out
    assert time.monotonic() - started < 10


def test_the_child_gets_no_secrets_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-should-not-leak")
    env = secretless_env(tmp_path)
    assert set(env) == {"PATH", "HOME", "TMPDIR", "LANG", "PYTHONPATH"}
    assert "sk-should-not-leak" not in json.dumps(env)
    assert env["HOME"] == str(tmp_path)
    assert env["PYTHONPATH"] == str(PROJECT_ROOT)
    assert os.path.dirname(sys.executable) in env["PATH"]
    assert "sk-secret" not in repr(options("http://x/v1", api_key="sk-secret"))


def test_options_from_settings_use_the_stand_in(standin, settings):
    settings.HALO_MAXIMUM_DEPTH = 0
    opts = halo.options_from_settings(maximum_turns=7)
    assert opts.base_url == standin
    assert opts.api_key == "standin-no-key"
    assert opts.model == settings.OPENAI_HALO_MODEL
    assert (opts.maximum_depth, opts.maximum_turns, opts.maximum_parallel_subagents) == (0, 7, 2)


def test_a_report_missing_sections_is_re_prompted_once(monkeypatch, tmp_path):
    incomplete = "## Executive summary\n\nShort.\n\n## Top 3 changes to implement first\n\n1. x\n"
    complete = "\n\n".join(f"{heading}\n\nbody" for heading in halo.REQUIRED_SECTIONS)
    calls = []

    def fake_run_halo(**kwargs):
        calls.append(kwargs)
        return incomplete if len(calls) == 1 else complete

    monkeypatch.setattr(halo, "run_halo", fake_run_halo)
    events = []
    report, missing = halo.run_halo_with_retry(context_path=tmp_path / "c.jsonl", prompt="PROMPT",
                                               options=options("http://x/v1"), on_event=events.append, timeout=5)
    assert (report, missing) == (complete, [])
    assert len(calls) == 2
    assert calls[1]["history"] == [{"role": "user", "content": "PROMPT"}, {"role": "assistant", "content": incomplete}]
    assert "- `## Ranked recommendation table`" in calls[1]["prompt"]
    assert "- `## Top 3 changes to implement first`" not in calls[1]["prompt"]
    assert events == [{"type": "retry", "missing": list(halo.REQUIRED_SECTIONS[2:])}]


def test_a_retry_that_stays_incomplete_reports_what_is_still_missing(monkeypatch, tmp_path):
    first = "\n\n".join(f"{heading}\n\nbody" for heading in halo.REQUIRED_SECTIONS[:6])
    second = "\n\n".join(f"{heading}\n\nbody" for heading in halo.REQUIRED_SECTIONS[:5])
    answers = iter([first, second])
    monkeypatch.setattr(halo, "run_halo", lambda **kwargs: next(answers))
    report, missing = halo.run_halo_with_retry(context_path=tmp_path / "c.jsonl", prompt="P",
                                               options=options("http://x/v1"))
    assert (report, missing) == (first, ["## Machine-readable summary"])  # the worse retry is not kept


def test_a_complete_report_is_not_re_prompted(monkeypatch, tmp_path):
    complete = "\n\n".join(f"{heading}\n\nbody" for heading in halo.REQUIRED_SECTIONS)
    calls = []
    monkeypatch.setattr(halo, "run_halo", lambda **kwargs: calls.append(kwargs) or complete)
    assert halo.run_halo_with_retry(context_path=tmp_path / "c.jsonl", prompt="P",
                                    options=options("http://x/v1")) == (complete, [])
    assert len(calls) == 1


def test_the_retry_runs_against_the_stand_in_end_to_end(standin_server, tmp_path):
    """With a real second HALO run: the history goes through the child and HALO to the model."""
    path = write(tmp_path)
    report = halo.run_halo(context_path=path, prompt=halo.render_retry_prompt(["## Executive summary"]),
                           options=options(standin_server, maximum_depth=0), timeout=120,
                           history=[{"role": "user", "content": halo.render_report_prompt()},
                                    {"role": "assistant", "content": "## Top 3 changes to implement first\n\n1. x"}])
    assert halo.check_sections(report) == []


def test_an_unreachable_model_fails_fast_with_the_cause(tmp_path):
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        dead_url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    started = time.monotonic()
    with pytest.raises(halo.HaloError, match="exhausted after 1 consecutive failures: APIConnectionError"):
        halo.run_halo(context_path=write(tmp_path), prompt=halo.render_report_prompt(),
                      options=options(dead_url, max_llm_failures=1), timeout=60)
    assert time.monotonic() - started < 30


# -- the child's pieces, in this process (no HALO run) -------------------------------

def child_writer():
    from reviews.halo_child import EventWriter

    read_fd, write_fd = os.pipe()
    return EventWriter(fd=write_fd), read_fd, write_fd


def written(read_fd, write_fd):
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        return [json.loads(line) for line in pipe.read().decode("utf-8").splitlines()]


def item(*, sequence, depth=0, final=False, **message):
    from engine.models.engine_output import AgentOutputItem
    from engine.models.messages import AgentMessage

    return AgentOutputItem(sequence=sequence, agent_id=f"agent-{depth}", parent_agent_id=None, parent_tool_call_id=None,
                           agent_name="root" if depth == 0 else "sub", depth=depth, item=AgentMessage(**message),
                           final=final)


def delta(text, *, depth=0):
    from engine.models.engine_output import AgentTextDelta

    return AgentTextDelta(sequence=0, agent_id=f"agent-{depth}", parent_agent_id=None, parent_tool_call_id=None,
                          depth=depth, item_id="msg", text_delta=text)


def test_the_child_forwards_tool_calls_results_and_coalesced_text():
    from engine.models.messages import AgentToolCall, AgentToolFunction

    from reviews.halo_child import Collector

    out, read_fd, write_fd = child_writer()
    collector = Collector(out)
    long_arguments = json.dumps({"trace_id": "t" * 32, "regex_pattern": "x" * 600})
    call = AgentToolCall(id="call_1", function=AgentToolFunction(name="search_trace", arguments=long_arguments))
    for event in [
        item(sequence=1, role="assistant", tool_calls=[call]),
        item(sequence=2, role="tool", content='{"result": {}}', tool_call_id="call_1"),
        delta("The sub", depth=1), delta("agent says hi.", depth=1),
        item(sequence=3, role="assistant", content="Root thinking."),
        item(sequence=4, role="assistant", content="## Executive summary\n\nDone.", final=True),
    ]:
        collector.handle(event)
    out.flush_text()
    events = written(read_fd, write_fd)
    assert [event["type"] for event in events] == ["tool_call", "tool_result", "text"]
    assert events[0]["name"] == "search_trace" and events[0]["depth"] == 0 and events[0]["agent"] == "root"
    assert len(events[0]["arguments"]) == 300 and events[0]["arguments"].endswith("…")
    assert events[1] == {"type": "tool_result", "name": "search_trace", "chars": 14, "agent": "root", "depth": 0}
    assert events[2] == {"type": "text", "delta": "The subagent says hi.", "agent": "sub", "depth": 1}
    assert collector.report() == "## Executive summary\n\nDone."


def test_without_a_final_answer_the_report_is_what_the_root_wrote():
    from reviews.halo_child import Collector

    out, read_fd, write_fd = child_writer()
    collector = Collector(out)
    collector.handle(delta("## Executive", depth=0))
    collector.handle(item(sequence=1, role="assistant", content="## Executive summary\n\nPlain text."))
    collector.handle(item(sequence=2, depth=1, role="assistant", content="A subagent answer."))
    assert collector.report() == "## Executive summary\n\nPlain text."
    empty = Collector(out)
    with pytest.raises(RuntimeError, match="without producing a report"):
        empty.report()
    written(read_fd, write_fd)


def test_the_child_configures_halo_as_the_job_says(tmp_path):
    from reviews.halo_child import build_config

    config = build_config({"model": "gpt-5.5", "base_url": "http://h/v1", "api_key": "k", "index_dir": str(tmp_path),
                           "maximum_depth": 0, "maximum_turns": 9, "maximum_parallel_subagents": 3})
    assert (config.root_agent.name, config.subagent.name) == ("root", "sub")
    assert config.root_agent.maximum_turns == config.subagent.maximum_turns == 9
    assert config.root_agent.model.temperature is None and config.compaction_model.temperature is None
    assert (config.maximum_depth, config.maximum_parallel_subagents) == (0, 3)
    assert (config.model_provider.base_url, config.model_provider.api_key) == ("http://h/v1", "k")
    assert config.trace_index.index_dir == tmp_path
