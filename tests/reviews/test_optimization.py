"""The optimization context built from a cycle's rows, and requesting HALO."""

import json

import pytest
from django.core.exceptions import PermissionDenied

from reviews import halo
from reviews.models import EvalCase, GateRun, Optimization
from reviews.optimization import (
    active_optimization,
    cycle_context_lines,
    halo_after_gate,
    latest_gate_run,
    request_optimization,
)
from reviews.tasks import run_optimization_task
from runs.handoffs import latest_handoff_for
from tests.reviews import halo_samples as samples

from .optimization_builders import finished_optimization, halo_cycle

pytestmark = pytest.mark.django_db


def counts(lines):
    return {row["signal"]: row["count"] for row in halo.input_summary_rows(lines)}


def test_the_context_has_one_span_per_signal_from_the_models(approver):
    cycle = halo_cycle(approver)
    lines = cycle_context_lines(cycle=cycle, gate_run=latest_gate_run(cycle))
    assert counts(lines) == {
        "Current harness config": 1, "SDK execution traces": 5, "Human feedback": 4, "LLM feedback": 2,
        "Generated eval definitions": 5, "Promptfoo row results": 5, "Promptfoo gate summary": 1,
    }
    # The run spans come first, in run label and position order, unchanged.
    assert lines[:15] == samples.run_span_lines()
    by_name = {}
    for line in lines[15:]:
        by_name.setdefault(line["name"], []).append(line)
    feedback = by_name["human_feedback.comment"][2]
    assert feedback["trace_id"] == samples.TRACE_IDS["trace-03"]
    assert json.loads(feedback["attributes"]["feedback.prohibited_claims"]) == ["Do not stop at legal-entity concentration"]
    evals = {line["attributes"]["eval.id"]: line for line in by_name["generated_eval.definition"]}
    assert evals["eval-soc2"]["trace_id"] == samples.TRACE_IDS["trace-04"]
    summary = by_name["eval_gate.summary"][0]["attributes"]
    assert (summary["eval_gate.total"], summary["eval_gate.passed"], summary["eval_gate.failed"]) == (5, 3, 2)
    rows = {line["attributes"]["eval.id"]: line["attributes"] for line in by_name["eval_gate.result"]}
    assert rows["eval-concentration"]["eval.passed"] is False and rows["eval-arr"]["eval.passed"] is True
    harness = by_name["harness.config"][0]["attributes"]
    assert harness["harness.version"] == "v001"
    assert harness["harness.system_prompt"] == samples.harness_config()["system_prompt"]


def test_the_context_loads_with_halos_own_loader(approver, tmp_path):
    from engine.traces.models.canonical_span import SpanRecord

    cycle = halo_cycle(approver)
    path = halo.write_context(cycle_context_lines(cycle=cycle, gate_run=latest_gate_run(cycle)), tmp_path / "c.jsonl")
    records = [SpanRecord.model_validate_json(line) for line in path.read_text().splitlines()]
    assert len(records) == 15 + 1 + 4 + 2 + 5 + 1 + 5


def test_only_approved_cases_and_no_gate_spans_without_a_gate(approver):
    cycle = halo_cycle(approver, with_gate=False)
    EvalCase.objects.filter(eval_id="eval-arr").update(status=EvalCase.Status.REJECTED)
    lines = cycle_context_lines(cycle=cycle, gate_run=latest_gate_run(cycle))
    assert latest_gate_run(cycle) is None
    found = counts(lines)
    assert found["Generated eval definitions"] == 4
    assert found["Promptfoo row results"] == 0
    summary = next(line for line in lines if line["name"] == "eval_gate.summary")["attributes"]
    assert summary["eval_gate.total"] == 0


def test_a_failed_gate_run_is_not_read(approver):
    cycle = halo_cycle(approver)
    GateRun.objects.create(cycle=cycle, harness=cycle.harness, status=GateRun.Status.FAILED)
    assert latest_gate_run(cycle).status == GateRun.Status.SUCCEEDED


def test_a_real_stand_in_run_makes_a_context_halo_loads(make_run, standin, tmp_path):
    """Spans exported by a real agent run (stand-in model) go into the context unchanged."""
    from engine.traces.models.canonical_span import SpanRecord

    from reviews.models import Cycle
    from runs.runner import execute_run

    run = make_run(claim=True)
    execute_run(run=run)
    run.refresh_from_db()
    assert run.status == "succeeded", run.last_error
    cycle = Cycle.objects.create(harness=run.harness, name="real run")
    cycle.runs.set([run])
    lines = cycle_context_lines(cycle=cycle, gate_run=None)
    assert counts(lines)["SDK execution traces"] == 1
    assert len([line for line in lines if line["trace_id"] == run.trace_id]) == run.spans.count()
    path = halo.write_context(lines, tmp_path / "c.jsonl")
    for text in path.read_text().splitlines():
        SpanRecord.model_validate_json(text)


def test_request_is_idempotent_while_one_is_active(approver, engineer, django_capture_on_commit_callbacks,
                                                   monkeypatch):
    sent = []
    monkeypatch.setattr(run_optimization_task, "delay", lambda pk: sent.append(pk))
    cycle = halo_cycle(approver)
    with django_capture_on_commit_callbacks(execute=True):
        first = request_optimization(cycle=cycle, user=engineer, options={"maximum_depth": 0, "maximum_turns": 7})
        second = request_optimization(cycle=cycle, user=approver)
    assert first.pk == second.pk and sent == [first.pk]
    first.refresh_from_db()
    assert first.status == Optimization.Status.QUEUED
    assert first.gate_run == latest_gate_run(cycle)
    assert first.options["maximum_depth"] == 0 and first.options["maximum_turns"] == 7
    assert first.options["maximum_parallel_subagents"] == 2
    assert first.options["model"] and first.options["endpoint"]
    assert active_optimization(cycle) == first


def test_request_rejects_out_of_range_options(approver, engineer):
    cycle = halo_cycle(approver)
    with pytest.raises(ValueError, match="maximum depth must be between 0 and 3"):
        request_optimization(cycle=cycle, user=engineer, options={"maximum_depth": 9})
    assert not Optimization.objects.exists()


def test_a_reviewer_cannot_request_halo(approver, reviewer):
    cycle = halo_cycle(approver)
    with pytest.raises(PermissionDenied):
        request_optimization(cycle=cycle, user=reviewer)


def test_a_succeeded_cycle_gate_starts_halo_unless_turned_off(approver, settings, monkeypatch,
                                                             django_capture_on_commit_callbacks):
    sent = []
    monkeypatch.setattr(run_optimization_task, "delay", lambda pk: sent.append(pk))
    cycle = halo_cycle(approver)
    gate_run = latest_gate_run(cycle)
    settings.AUTO_HALO = False
    assert halo_after_gate(gate_run) is None
    settings.AUTO_HALO = True
    failed = GateRun.objects.create(cycle=cycle, harness=cycle.harness, status=GateRun.Status.FAILED)
    assert halo_after_gate(failed) is None
    with django_capture_on_commit_callbacks(execute=True):
        optimization = halo_after_gate(gate_run)
    assert optimization.requested_by is None and sent == [optimization.pk]


def test_the_gate_chain_calls_halo_from_on_gate_finished(approver, settings, monkeypatch,
                                                         django_capture_on_commit_callbacks):
    from reviews.gate import on_gate_finished

    sent = []
    monkeypatch.setattr(run_optimization_task, "delay", lambda pk: sent.append(pk))
    settings.AUTO_HALO = True
    cycle = halo_cycle(approver)
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        on_gate_finished(latest_gate_run(cycle))
    assert len(callbacks) == 1
    optimization = Optimization.objects.get(cycle=cycle)
    assert sent == [optimization.pk] and optimization.gate_run == latest_gate_run(cycle)


def test_latest_handoff_for_returns_the_newest_handoff_of_the_harness(approver):
    cycle = halo_cycle(approver)
    assert latest_handoff_for(cycle.harness) is None
    finished_optimization(cycle, "## Executive summary\nOld.\n")
    finished_optimization(cycle, "Intro\n## Executive summary\nNew.\n")
    finished_optimization(cycle, "", status=Optimization.Status.FAILED, error="boom")
    assert latest_handoff_for(cycle.harness) == "## Executive summary\nNew.\n"
