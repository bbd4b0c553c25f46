"""The optimization context HALO reads: lines, attachment, attribute keys, loadability, input summary."""

import asyncio
import hashlib
import json
import re

import pytest

from reviews import halo
from tests.reviews import halo_samples as samples

SIGNAL = "optimizer.signal_source"
OTLP_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{9}Z$")


@pytest.fixture
def lines():
    return halo.build_context_lines(**samples.context_kwargs())


def synthetic(lines):
    return [line for line in lines if SIGNAL in line["attributes"]]


def test_it_keeps_the_run_spans_first_and_unchanged(lines):
    runs = samples.run_span_lines()
    assert lines[: len(runs)] == runs
    assert all(SIGNAL not in line["attributes"] for line in lines[: len(runs)])


def test_it_adds_the_signals_in_the_seeds_order(lines):
    names = [line["name"] for line in synthetic(lines)]
    assert names == (
        ["harness.config"]
        + ["human_feedback.comment"] * 4
        + ["llm_feedback.insight"] * 2
        + ["generated_eval.definition"] * 5
        + ["eval_gate.summary"]
        + ["eval_gate.result"] * 5
    )
    assert len(lines) == len(samples.run_span_lines()) + 18


def test_each_signal_has_the_seeds_kind_and_source(lines):
    expected = {
        "harness.config": ("HARNESS_CONFIG", "harness_config"),
        "human_feedback.comment": ("HUMAN_FEEDBACK", "human_feedback"),
        "llm_feedback.insight": ("LLM_FEEDBACK", "llm_feedback"),
        "generated_eval.definition": ("EVAL", "generated_eval"),
        "eval_gate.summary": ("EVAL_RESULT", "eval_gate"),
        "eval_gate.result": ("EVAL_RESULT", "eval_gate"),
    }
    for line in synthetic(lines):
        kind, source = expected[line["name"]]
        attributes = line["attributes"]
        assert attributes["openinference.span.kind"] == kind
        assert attributes["inference.observation_kind"] == kind
        assert attributes["inference.project_id"] == "financial_diligence_analyst_optimization_context"
        assert attributes["inference.export.schema_version"] == 1
        assert attributes[SIGNAL] == source
        assert line["kind"] == "SPAN_KIND_INTERNAL"
        assert line["parent_span_id"] == ""
        assert line["scope"] == {"name": "halo-optimization-context", "version": "1"}
        assert line["resource"] == {"attributes": {"service.name": "financial-diligence-analyst"}}
        assert line["status"] == {"code": "STATUS_CODE_OK", "message": ""}


def test_each_signal_carries_the_seeds_attribute_keys(lines):
    common = {"openinference.span.kind", "inference.export.schema_version", "inference.project_id",
              "inference.observation_kind", SIGNAL}
    expected = {
        "harness.config": {"harness.version", "harness.system_prompt", "harness.model_settings",
                           "harness.tool_policy", "harness.eval_metadata"},
        "human_feedback.comment": {"feedback.id", "feedback.trace_id", "feedback.trace_label", "feedback.question",
                                   "feedback.summary", "feedback.required_observations", "feedback.prohibited_claims"},
        "llm_feedback.insight": {"llm_feedback.id", "llm_feedback.trace_id", "llm_feedback.trace_label",
                                 "llm_feedback.question", "llm_feedback.observations"},
        "generated_eval.definition": {"eval.id", "eval.trace_id", "eval.trace_label", "eval.title", "eval.method",
                                      "eval.expected_behavior", "eval.pass_example", "eval.fail_example"},
        "eval_gate.summary": {"eval_gate.total", "eval_gate.passed", "eval_gate.failed"},
        "eval_gate.result": {"eval.id", "eval.title", "eval.trace_id", "eval.trace_label", "eval.passed",
                             "eval.explanation"},
    }
    for line in synthetic(lines):
        assert set(line["attributes"]) == common | expected[line["name"]], line["name"]


def test_global_spans_sit_on_the_seeds_synthetic_traces(lines):
    by_name = {line["name"]: line for line in synthetic(lines)}
    harness_trace = hashlib.sha256(b"halo-context-current-harness-config").hexdigest()[:32]
    gate_trace = hashlib.sha256(b"halo-context-eval-gate-summary").hexdigest()[:32]
    assert by_name["harness.config"]["trace_id"] == harness_trace
    assert by_name["harness.config"]["span_id"] == hashlib.sha256(b"current-harness-config").hexdigest()[:16]
    assert by_name["eval_gate.summary"]["trace_id"] == gate_trace
    assert by_name["eval_gate.summary"]["span_id"] == hashlib.sha256(b"eval-gate-summary").hexdigest()[:16]
    assert {harness_trace, gate_trace}.isdisjoint(samples.TRACE_IDS.values())


def test_feedback_insights_evals_and_rows_attach_to_their_run_traces(lines):
    run_traces = set(samples.TRACE_IDS.values())
    assert {line["trace_id"] for line in samples.run_span_lines()} == run_traces
    for line in synthetic(lines):
        if line["name"] in ("harness.config", "eval_gate.summary"):
            continue
        assert line["trace_id"] in run_traces
    feedback = [line for line in lines if line["name"] == "human_feedback.comment"]
    assert [line["trace_id"] for line in feedback] == [item["trace_id"] for item in samples.human_feedback()]
    assert feedback[2]["attributes"]["feedback.trace_id"] == samples.TRACE_IDS["trace-03"]
    assert feedback[2]["span_id"] == hashlib.sha256(b"human-feedback-2").hexdigest()[:16]
    evals = [line for line in lines if line["name"] == "generated_eval.definition"]
    assert [line["trace_id"] for line in evals] == [item["source_trace_id"] for item in samples.eval_definitions()]
    rows = [line for line in lines if line["name"] == "eval_gate.result"]
    assert [line["trace_id"] for line in rows] == [row["trace_id"] for row in samples.gate_rows()]
    assert rows[4]["span_id"] == hashlib.sha256(b"eval-gate-row-4").hexdigest()[:16]


def test_values_are_encoded_as_the_seed_encodes_them(lines):
    by_name = {}
    for line in synthetic(lines):
        by_name.setdefault(line["name"], []).append(line["attributes"])
    harness = by_name["harness.config"][0]
    assert harness["harness.version"] == "v001"
    assert json.loads(harness["harness.tool_policy"]) == samples.harness_config()["tool_policy"]
    concentration = by_name["human_feedback.comment"][2]
    assert json.loads(concentration["feedback.required_observations"]) == [
        "Mention parent-account concentration", "Use account_hierarchy.csv"]
    assert json.loads(concentration["feedback.prohibited_claims"]) == ["Do not stop at legal-entity concentration"]
    assert json.loads(by_name["llm_feedback.insight"][1]["llm_feedback.observations"])[0].startswith("Reports the 122%")
    assert by_name["generated_eval.definition"][2]["eval.method"] == "hybrid"
    summary = by_name["eval_gate.summary"][0]
    assert (summary["eval_gate.total"], summary["eval_gate.passed"], summary["eval_gate.failed"]) == (5, 3, 2)
    rows = {attributes["eval.id"]: attributes for attributes in by_name["eval_gate.result"]}
    assert rows["eval-concentration"]["eval.passed"] is False
    assert rows["eval-runway"]["eval.passed"] is True
    assert "parent account" in rows["eval-concentration"]["eval.explanation"]


def test_timestamps_are_fixed_width_and_the_build_is_deterministic(lines):
    for line in lines:
        assert OTLP_TIME.match(line["start_time"]) and OTLP_TIME.match(line["end_time"])
    latest_run_end = max(line["end_time"] for line in samples.run_span_lines())
    assert {line["start_time"] for line in synthetic(lines)} == {latest_run_end}
    assert halo.build_context_lines(**samples.context_kwargs()) == lines


def test_without_run_spans_the_signals_get_a_fixed_timestamp():
    lines = halo.build_context_lines(**{**samples.context_kwargs(), "run_span_lines": []})
    assert {line["end_time"] for line in lines} == {halo.FALLBACK_TIMESTAMP}
    assert OTLP_TIME.match(halo.FALLBACK_TIMESTAMP)


def test_every_line_loads_with_halos_own_indexer_and_store(lines, tmp_path):
    from engine.traces.models.canonical_span import SpanRecord
    from engine.traces.models.trace_dataset_source import TraceDatasetSource
    from engine.traces.models.trace_index_config import TraceIndexConfig
    from engine.traces.models.trace_query_models import TraceFilters
    from engine.traces.trace_index_builder import TraceIndexBuilder
    from engine.traces.trace_store import TraceStore

    path = halo.write_context(lines, tmp_path / "context.jsonl")
    raw_lines = path.read_text(encoding="utf-8").splitlines()
    assert len(raw_lines) == len(lines)
    for raw in raw_lines:
        SpanRecord.model_validate_json(raw)

    index_path = asyncio.run(TraceIndexBuilder.ensure_index_exists(
        trace_path=path, config=TraceIndexConfig(index_dir=tmp_path / "index")))
    store = TraceStore.load_many([TraceDatasetSource(trace_path=path, index_path=index_path)])
    overview = store.get_overview(TraceFilters())
    assert overview.total_traces == 7  # five runs, the harness config, the gate summary
    assert overview.total_spans == len(lines)
    with_signals = store.count_traces(TraceFilters(regex_pattern=r'"optimizer\.signal_source"'))
    assert with_signals.total == 7
    concentration = store.view_trace(samples.TRACE_IDS["trace-03"])
    assert [span.name for span in concentration.spans] == [
        "response", "exec_command", "Synthetic dataroom diligence analyst",
        "human_feedback.comment", "generated_eval.definition", "eval_gate.result"]
    assert not (tmp_path / "context.jsonl.engine-index.jsonl").exists()  # the index went to index_dir


def test_it_names_a_run_span_that_halo_would_reject():
    broken = samples.run_span_lines()
    del broken[4]["status"]
    with pytest.raises(ValueError, match=r"line 5 .*status"):
        halo.build_context_lines(**{**samples.context_kwargs(), "run_span_lines": broken})


def test_it_rejects_a_signal_without_a_trace_id():
    feedback = samples.human_feedback()
    feedback[0]["trace_id"] = ""
    with pytest.raises(ValueError, match="trace_id is empty"):
        halo.build_context_lines(**{**samples.context_kwargs(), "human_feedback": feedback})


def test_the_input_summary_counts_what_halo_receives(lines):
    rows = halo.input_summary_rows(lines)
    assert [(row["signal"], row["count"], row["where"]) for row in rows] == [
        ("Current harness config", 1, "global config span"),
        ("SDK execution traces", 5, "original runtime traces"),
        ("Human feedback", 4, "appended to the source trace"),
        ("LLM feedback", 2, "appended to the source trace"),
        ("Generated eval definitions", 5, "appended to the source trace"),
        ("Promptfoo row results", 5, "appended to the source trace"),
        ("Promptfoo gate summary", 1, "global summary span"),
    ]
    assert rows[2]["included"] == "reviewer summary, required observations, prohibited claims"


def test_the_input_summary_renders_as_the_notebook_table(lines):
    table = halo.render_input_summary(halo.input_summary_rows(lines))
    assert table.splitlines()[:4] == [
        "### HALO input summary",
        "",
        "| Input signal | Count | Where it lives | What is included |",
        "| --- | ---: | --- | --- |",
    ]
    assert "| SDK execution traces | 5 | original runtime traces | agent steps, tool calls, outputs |" in table
    assert "| Promptfoo gate summary | 1 | global summary span | suite totals across all evals |" in table
