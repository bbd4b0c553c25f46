"""Candidate evaluation end to end with the stand-in: real agent runs, the real promptfoo gate, the comparison.

v001 makes the seed's known mistakes; v002 (v001 + the four rule sentences of loopsite/standin/rules.py)
passes more of the suite; v003 (v002 without the parent-account rule) regresses and is refused promotion.
"""

import pytest
from django.urls import reverse
from django.utils import timezone

from loopsite.models import AuditEvent
from loopsite.standin.rules import PARENT_ACCOUNT_ROLLUP, RULES
from reviews.candidates import (
    CandidateError,
    baseline_gate_for,
    comparison,
    evaluate_candidate,
    latest_comparison,
    suite_targets,
)
from reviews.models import EvalCase, GateRun
from reviews.tasks import run_gate_task
from runs.models import Agent, Harness, Question, Run
from runs.promotion import PromotionRefused
from runs.tasks import execute_run
from runs.work import start_batch

pytestmark = pytest.mark.django_db

# bank index -> (eval_id, literal assertions, rubric)
SUITE = {
    0: ("runway-months", [{"type": "icontains", "value": "11 months"}], ""),
    1: ("finance-arr", [{"type": "contains", "value": "$36.9M"}], ""),
    2: ("parent-rollup", [{"type": "icontains", "value": "Northstar Holdings"}],
        'The answer must name the parent account "Northstar Holdings".'),
    # Not a bare not-contains "SOC 2 complete": the rule-following answer still quotes that sales wording,
    # as weaker evidence. What changes is the exact status and the verdict.
    4: ("soc2-precision", [{"type": "icontains", "value": "Type II"},
                           {"type": "not-contains", "value": "which supports enterprise security review"}], ""),
}


def _run_queued(runs) -> None:
    """Execute the queued runs of a batch or a cycle (`.runs`) with the real runner, as the worker would."""
    for run in runs.runs.filter(status=Run.Status.QUEUED).order_by("pk"):
        execute_run.apply(args=[run.pk], throw=True)


def _run_gates() -> None:
    for _ in range(3):
        pending = GateRun.objects.filter(status__in=[GateRun.Status.QUEUED, GateRun.Status.WAITING]).order_by("pk")
        if not pending.exists():
            return
        for gate_run in pending:
            run_gate_task.apply(args=[gate_run.pk], throw=True)


@pytest.fixture
def suite(standin, sample, engineer, approver, django_capture_on_commit_callbacks):
    """The v001 runs of four sample questions and one approved case on each."""
    v001 = sample["harness"]
    questions = [Question.objects.get(bank_index=index) for index in SUITE]
    with django_capture_on_commit_callbacks():
        batch = start_batch(harness=v001, dataroom=sample["dataroom"], questions=questions, user=engineer)
    _run_queued(batch)
    cycle = batch.cycles.get()
    cases = {}
    for run in batch.runs.select_related("question"):
        assert run.status == Run.Status.SUCCEEDED, run.last_error
        eval_id, assertions, rubric = SUITE[run.question.bank_index]
        cases[eval_id] = EvalCase.objects.create(
            cycle=cycle, eval_id=eval_id, title=f"Case {eval_id}", expected_behavior="As asserted.", source_run=run,
            scoring_method=EvalCase.ScoringMethod.HYBRID if rubric else EvalCase.ScoringMethod.DETERMINISTIC,
            rubric=rubric, deterministic_assertions=assertions, status=EvalCase.Status.APPROVED,
            approved_by=approver, approved_at=timezone.now(),
        )
    return {"v001": v001, "dataroom": sample["dataroom"], "cycle": cycle, "cases": cases}


@pytest.fixture
def stored_suite(sample, approver):
    """The same suite on v001 runs with stored answers (no agent runs): for the tests that need no real answers."""
    from reviews.models import Cycle

    v001 = sample["harness"]
    runs = [Run.objects.create(harness=v001, dataroom=sample["dataroom"], question=Question.objects.get(bank_index=index),
                               label=f"trace-{index:02d}", trace_id=Run.new_trace_id(), status=Run.Status.SUCCEEDED,
                               final_answer="Runway is 11 months; ARR is $43.0M.", finished_at=timezone.now())
            for index in SUITE]
    cycle = Cycle.objects.create(harness=v001, name="v001 stored")
    cycle.runs.set(runs)
    cases = {}
    for run in runs:
        eval_id, assertions, _ = SUITE[run.question.bank_index]
        cases[eval_id] = EvalCase.objects.create(
            cycle=cycle, eval_id=eval_id, title=f"Case {eval_id}", expected_behavior="As asserted.", source_run=run,
            scoring_method=EvalCase.ScoringMethod.DETERMINISTIC, deterministic_assertions=assertions,
            status=EvalCase.Status.APPROVED, approved_by=approver, approved_at=timezone.now(),
        )
    return {"v001": v001, "dataroom": sample["dataroom"], "cycle": cycle, "cases": cases}


def _child(parent: Harness, engineer, *, rules) -> Harness:
    prompt = parent.system_prompt.split("\n\nDiligence rules:\n")[0]
    if rules:
        prompt += "\n\nDiligence rules:\n" + "\n".join(f"- {rule.sentence}" for rule in rules)
    return parent.create_child(by=engineer, version=parent.next_version_label(), system_prompt=prompt,
                               tool_policy=parent.tool_policy, model_settings=parent.model_settings)


def _evaluate(candidate, baseline, engineer, capture, **kwargs) -> GateRun:
    with capture():
        gate_run = evaluate_candidate(candidate=candidate, baseline=baseline, user=engineer, **kwargs)
    assert gate_run.status == GateRun.Status.WAITING
    _run_queued(gate_run.cycle)
    _run_gates()
    gate_run.refresh_from_db()
    gate_run.baseline.refresh_from_db()
    assert gate_run.status == GateRun.Status.SUCCEEDED, gate_run.last_error
    assert gate_run.baseline.status == GateRun.Status.SUCCEEDED, gate_run.baseline.last_error
    return gate_run


def test_v002_passes_more_of_the_suite_and_v003_regresses_and_is_refused(
        suite, engineer, approver, client_for, django_capture_on_commit_callbacks):
    v001 = suite["v001"]
    v002 = _child(v001, engineer, rules=RULES)
    gate_v002 = _evaluate(v002, v001, engineer, django_capture_on_commit_callbacks)

    # The candidate ran exactly the suite's questions on the suite's dataroom, in a cycle of its own.
    runs = list(gate_v002.cycle.runs.select_related("question"))
    assert sorted(run.question.bank_index for run in runs) == sorted(SUITE)
    assert {run.harness_id for run in runs} == {v002.pk} and {run.dataroom_id for run in runs} == {suite["dataroom"].pk}
    assert {row.run.harness_id for row in gate_v002.rows.select_related("run")} == {v002.pk}

    baseline = gate_v002.baseline
    assert baseline.harness == v001 and baseline.cycle is None and baseline.kind == GateRun.Kind.BASELINE
    assert {row.eval_id: row.passed for row in baseline.rows.all()} == {
        "runway-months": True, "finance-arr": False, "parent-rollup": False, "soc2-precision": False}
    assert {row.eval_id: row.passed for row in gate_v002.rows.all()} == dict.fromkeys(
        ["runway-months", "finance-arr", "parent-rollup", "soc2-precision"], True)

    result = comparison(baseline, gate_v002)
    assert sorted(row.case_id for row in result.fixes) == ["finance-arr", "parent-rollup", "soc2-precision"]
    assert result.regressions == [] and result.pass_rate_delta == pytest.approx(0.75)
    assert latest_comparison(v002).summary() == result.summary()

    page = client_for(approver).get(reverse("reviews:gate-compare", args=[gate_v002.pk])).content.decode()
    assert "+75 points" in page and 'data-outcome="fix"' in page and 'data-outcome="regression"' not in page
    assert 'data-testid="unverified-count">0 not verified</span>' in page
    # The parent-rollup rubric was decided by a judge never calibrated against the experts: a reason is needed.
    assert len(result.needs_reason) == 1 and "was not calibrated" in result.needs_reason[0]
    refused = client_for(approver).post(reverse("reviews:gate-promote", args=[gate_v002.pk]),
                                        HTTP_HX_REQUEST="true").content.decode()
    assert "Promotion of v002 is refused: The rubric judge" in refused
    response = client_for(approver).post(reverse("reviews:gate-promote", args=[gate_v002.pk]),
                                         {"override_reason": "Rubric verdicts checked by hand."})
    assert response.status_code == 302
    v002.refresh_from_db()
    assert v002.status == Harness.Status.PROMOTED

    # v003 drops the parent-account rule: the concentration case regresses against v002.
    v003 = _child(v002, engineer, rules=[rule for rule in RULES if rule is not PARENT_ACCOUNT_ROLLUP])
    gate_v003 = _evaluate(v003, v002, engineer, django_capture_on_commit_callbacks)
    assert gate_v003.baseline == gate_v002  # v002's own candidate gate run already covers the whole suite
    result = comparison(gate_v003.baseline, gate_v003)
    assert [row.case_id for row in result.regressions] == ["parent-rollup"]
    assert result.fixes == [] and result.pass_rate_delta == pytest.approx(-0.25)

    page = client_for(approver).get(reverse("reviews:gate-compare", args=[gate_v003.pk])).content.decode()
    rows = page.split('data-testid="compare-rows"')[1]
    assert rows.index('data-outcome="regression"') < rows.index('data-outcome="pass"')  # regressions first
    assert "-25 points" in page

    with pytest.raises(PromotionRefused, match="1 case\\(s\\) pass on v002 and fail on v003"):
        v003.promote(by=approver, comparison=result)
    refused = client_for(approver).post(reverse("reviews:gate-promote", args=[gate_v003.pk]),
                                        HTTP_HX_REQUEST="true").content.decode()
    assert 'data-testid="compare-error"' in refused and "Promotion of v003 is refused" in refused
    v003.refresh_from_db()
    assert v003.status == Harness.Status.DRAFT

    client_for(approver).post(reverse("reviews:gate-promote", args=[gate_v003.pk]),
                              {"override_reason": "Accepting the concentration regression for the Q3 demo."})
    v003.refresh_from_db()
    assert v003.status == Harness.Status.PROMOTED
    event = AuditEvent.objects.get(action="harness.promote", object_id=str(v003.pk))
    assert event.after["override_reason"] == "Accepting the concentration regression for the Q3 demo."


def test_the_suite_questions_come_from_the_cases_source_runs(stored_suite):
    [(dataroom, questions)] = suite_targets(Agent.builtin())
    assert dataroom == stored_suite["dataroom"]
    assert sorted(question.bank_index for question in questions) == sorted(SUITE)


def test_extra_questions_run_too_and_only_engineers_evaluate(stored_suite, engineer, approver,
                                                            django_capture_on_commit_callbacks):
    from django.core.exceptions import PermissionDenied

    suite = stored_suite
    v002 = _child(suite["v001"], engineer, rules=RULES)
    extra = Question.objects.get(bank_index=6)
    with pytest.raises(PermissionDenied):
        evaluate_candidate(candidate=v002, baseline=suite["v001"], user=approver)
    with django_capture_on_commit_callbacks() as callbacks:
        gate_run = evaluate_candidate(candidate=v002, baseline=suite["v001"], user=engineer, extra_questions=[extra])
    assert gate_run.cycle.runs.count() == len(SUITE) + 1 and gate_run.cycle.runs.filter(question=extra).exists()
    assert len(callbacks) == len(SUITE) + 1 + 2  # the runs, the baseline gate run and the candidate's poll
    assert AuditEvent.objects.filter(action="harness.evaluate", object_id=str(v002.pk), actor=engineer).exists()


def test_a_candidate_is_not_its_own_baseline_and_needs_a_suite(sample, engineer):
    v001 = sample["harness"]
    with pytest.raises(CandidateError, match="cannot be compared with itself"):
        evaluate_candidate(candidate=v001, baseline=v001, user=engineer)
    v002 = v001.create_child(by=engineer, version="v002", system_prompt="x", tool_policy={}, model_settings={})
    with pytest.raises(CandidateError, match="no approved cases yet"):
        evaluate_candidate(candidate=v002, baseline=v001, user=engineer)


def test_a_baseline_gate_run_is_reused_only_when_it_covers_the_suite(standin, stored_suite, engineer,
                                                                    django_capture_on_commit_callbacks):
    suite = stored_suite
    v001 = suite["v001"]
    with django_capture_on_commit_callbacks():
        first = baseline_gate_for(baseline=v001, user=engineer)
    run_gate_task.apply(args=[first.pk], throw=True)
    first.refresh_from_db()
    assert first.status == GateRun.Status.SUCCEEDED and first.total == len(SUITE)
    assert baseline_gate_for(baseline=v001, user=engineer) == first

    run = suite["cases"]["runway-months"].source_run
    EvalCase.objects.create(cycle=suite["cycle"], eval_id="new-case", title="A newer case", expected_behavior="x",
                            source_run=run, scoring_method=EvalCase.ScoringMethod.DETERMINISTIC,
                            deterministic_assertions=[{"type": "icontains", "value": "runway"}],
                            status=EvalCase.Status.APPROVED)
    with django_capture_on_commit_callbacks():
        second = baseline_gate_for(baseline=v001, user=engineer)
    assert second != first and second.status == GateRun.Status.QUEUED
