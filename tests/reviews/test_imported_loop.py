"""The whole review loop on an external agent's imported traces, offline against the stand-in model:
a cycle from the imported runs of one version, review with a span citation, approval, insights, eval
proposals and their back-tests, the suite, the gate on stored outputs, the judge's calibration and HALO."""

import json

import pytest

from reviews.models import BackTestRun, Cycle, EvalCase, Feedback, GateRun, JudgeCalibration, Optimization
from reviews.tasks import calibrate_judge_task, run_gate_task, run_optimization_task
from runs.ingest import lines_from_otlp_json, store_lines
from runs.models import Agent, Harness, Run
from tests.runs.otlp_builders import openinference_trace, request

from .backtest_builders import run_queued
from .builders import form_data
from .gen_builders import content_of, run_chain
from .gate_builders import queued_gate
from .optimization_builders import queued_optimization

pytestmark = pytest.mark.django_db

TRACES = [
    ("a" * 32, "Can I return shoes after 45 days?", "Yes, returns are accepted at any time."),
    ("b" * 32, "Do you ship to Canada?", "We ship to Canada within 5 business days."),
]
TOOL_SPAN = "1111111111111111"  # the search_docs span of otlp_builders.openinference_trace
ROOT_SPAN = "b7ad6b7169203331"


def import_traces(agent: Agent) -> list[Run]:
    lines = []
    for trace_id, question, answer in TRACES:
        found, rejected = lines_from_otlp_json(request(openinference_trace(trace_id, question=question, answer=answer)))
        assert rejected == []
        lines += found
    outcome = store_lines(agent=agent, lines=lines)
    assert outcome.runs_created == len(TRACES)
    return list(Run.objects.filter(agent=agent).order_by("trace_id"))


def test_the_whole_loop_runs_on_imported_traces(client_for, engineer, reviewer, approver, standin, settings):
    settings.HALO_MAXIMUM_DEPTH = 1
    agent, _ = Agent.create_external(by=engineer, name="Support bot")
    runs = import_traces(agent)
    assert all(run.dataroom_id is None and run.is_imported for run in runs)
    harness = Harness.objects.get(agent=agent)

    # 1. A cycle from the version's imported runs, through the cycles page.
    page = client_for(engineer).get("/cycles/").content.decode()
    assert "New cycle from an agent" in page and "Support bot · 1.0.0" in page
    response = client_for(engineer).post("/cycles/new/from-traces/", {"harness": harness.pk})
    assert response.status_code == 302, response.content.decode()
    cycle = Cycle.objects.get(harness=harness)
    assert sorted(cycle.runs.values_list("pk", flat=True)) == [run.pk for run in runs]

    # 2. Assign, review with a citation of an imported span, approve.
    client = client_for(reviewer)
    for run in runs:
        cycle.assign(run=run, reviewer=reviewer, by=engineer)
        url = f"/cycles/{cycle.pk}/runs/{run.pk}/feedback/"
        page = client.get(url)
        assert page.status_code == 200
        html = page.content.decode()
        assert run.question.text in html and run.final_answer in html and TOOL_SPAN in html
        data = form_data(summary="Check the policy before answering.", theme="policy_accuracy", verdict="fail",
                         rows=(("required_observation", "Quote the 30-day return window", TOOL_SPAN, "", ""),
                               ("prohibited_claim", "Do not say returns are accepted at any time", "", "", "")),
                         op="submit")
        assert client.post(url, data).status_code in (200, 302)
        submitted = Feedback.objects.get(cycle=cycle, run=run, reviewer=reviewer, is_merged=False)
        assert submitted.status == Feedback.Status.SUBMITTED
        assert submitted.items.get(kind="required_observation").citation_span_id == TOOL_SPAN
    from reviews.models import approve_run

    for run in runs:
        source = Feedback.objects.get(cycle=cycle, run=run, is_merged=False)
        approve_run(cycle=cycle, run=run, by=approver, content=content_of(source), version=0)
    cycle.refresh_from_db()
    assert cycle.status == Cycle.Status.GENERATING or cycle.progress()["approved"] == len(runs)

    # 3. Insights, eval proposals (inputs from the runs) and their back-tests.
    run_chain(cycle)
    cases = list(EvalCase.objects.filter(cycle=cycle).select_related("source_run__question"))
    assert cases, "the chain proposes cases from the imported runs"
    for case in cases:
        done = run_queued(case)
        assert done and all(row.status == BackTestRun.Status.SUCCEEDED for row in done), [r.last_error for r in done]
        assert case.source_run.question.text in {question for _, question, _ in TRACES}
    from reviews.suite import promptfoo_test

    assert {promptfoo_test(case, case.source_run)["vars"]["question"] for case in cases} <= {q for _, q, _ in TRACES}
    for case in cases:
        case.refresh_from_db()
        case.approve(by=approver, reason="Approved in the imported-loop test.")

    # 4. The gate on the stored outputs: every approved case counted.
    gate_run = queued_gate(cycle)
    run_gate_task.apply(args=[gate_run.pk], throw=True)
    gate_run.refresh_from_db()
    assert gate_run.status == GateRun.Status.SUCCEEDED, gate_run.last_error
    assert gate_run.total == len(cases) == gate_run.rows.count() == gate_run.passed + gate_run.failed
    assert {row.run_id for row in gate_run.rows.all()} <= {run.pk for run in runs}

    # 5. The judge's calibration takes labels from the imported runs' approved feedback.
    from reviews.calibration import request_calibration

    calibration = request_calibration(user=approver)
    calibrate_judge_task.apply(args=[calibration.pk], throw=True)
    calibration.refresh_from_db()
    assert calibration.status == JudgeCalibration.Status.SUCCEEDED, calibration.last_error
    assert calibration.labels.filter(run__in=runs).exists()

    # 6. HALO reads the imported spans, indexed under the agent's project id, and writes the handoff.
    from reviews.optimization import cycle_context_lines

    lines = cycle_context_lines(cycle=cycle, gate_run=gate_run)
    for run in runs:
        own = [line for line in lines if line["trace_id"] == run.trace_id]
        assert own[0]["attributes"]["inference.project_id"] == agent.slug
        assert all(line["attributes"].get("inference.project_id") for line in own)
    optimization = queued_optimization(cycle, approver)
    run_optimization_task.apply(args=[optimization.pk], throw=True)
    optimization.refresh_from_db()
    assert optimization.status == Optimization.Status.SUCCEEDED, optimization.last_error
    assert optimization.handoff.startswith("## Executive summary")
    counts = {row["signal"]: row["count"] for row in optimization.context_stats}
    assert counts["SDK execution traces"] == len(runs) and counts["Human feedback"] == len(runs)

    # 7. The review goes back out on the imported trace's root span.
    response = client_for(reviewer).get(f"/runs/{runs[0].pk}/trace.jsonl")
    lines = [json.loads(line) for line in b"".join(response.streaming_content).decode().splitlines()]
    root = next(line for line in lines if not line["parent_span_id"])
    assert root["span_id"] == ROOT_SPAN and root["attributes"]["annotations.0.result.label"] == "fail"
    assert root["attributes"]["annotations.0.result.explanation"] == "Check the policy before answering."


def test_a_run_span_without_a_project_id_reaches_halo_with_the_contexts():
    from reviews import halo

    from .halo_samples import run_span_lines

    line = run_span_lines()[0]
    bare = {**line, "attributes": {k: v for k, v in line["attributes"].items() if k != "inference.project_id"}}
    lines = halo.build_context_lines(run_span_lines=[bare], harness_config={}, human_feedback=[], llm_insights=[],
                                     eval_definitions=[], gate_rows=[], gate_summary={})
    assert lines[0]["attributes"]["inference.project_id"] == halo.PROJECT_ID
    assert "inference.project_id" not in bare["attributes"]  # the stored line is not changed
