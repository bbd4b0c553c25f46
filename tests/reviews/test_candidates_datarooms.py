"""A suite whose cases come from two datarooms: "Evaluate candidate" runs every case's own question on the case's
own dataroom, the gate judges each case on that run, and no case is silently left out of the comparison.

Real agent runs with the stand-in, the real promptfoo gate. The second dataroom is the sample with its parent
account renamed (Northstar -> Polaris), so a case can only pass on an answer read from its own dataroom.
"""

import pytest
from django.urls import reverse
from django.utils import timezone

from loopsite.models import AuditEvent
from loopsite.standin.rules import RULES
from reviews.candidates import comparison, evaluate_candidate, suite_targets
from reviews.models import Cycle, EvalCase, GateRun
from runs.models import Agent, Batch, Dataroom, DataroomFile, Harness, Question, Run
from runs.promotion import PromotionRefused
from runs.work import start_batch

from reviews.suite import suite_cases

from .test_candidates import _child, _run_gates, _run_queued
from .test_imported_loop import import_traces

pytestmark = pytest.mark.django_db

# (dataroom key, bank index) -> (eval_id, literal assertions)
SUITE = {
    ("main", 0): ("runway-months", [{"type": "icontains", "value": "11 months"}]),
    ("main", 2): ("parent-rollup", [{"type": "icontains", "value": "Northstar Holdings"}]),
    ("eu", 1): ("finance-arr-eu", [{"type": "contains", "value": "$36.9M"}]),
    ("eu", 2): ("parent-rollup-eu", [{"type": "icontains", "value": "Polaris Holdings"}]),
}


def _renamed_copy(dataroom: Dataroom) -> Dataroom:
    copy = Dataroom.objects.create(name=f"{dataroom.name} (EU)", file_count=dataroom.file_count,
                                   total_bytes=dataroom.total_bytes)
    DataroomFile.objects.bulk_create(
        DataroomFile(dataroom=copy, path=item.path, content=bytes(item.content).replace(b"Northstar", b"Polaris"),
                     size=item.size)
        for item in dataroom.files.all()
    )
    return copy


@pytest.fixture
def two_rooms(standin, sample, engineer, approver, django_capture_on_commit_callbacks):
    """v001's runs of two questions on each dataroom, one approved case on each run."""
    v001, rooms = sample["harness"], {"main": sample["dataroom"]}
    rooms["eu"] = _renamed_copy(rooms["main"])
    cases = {}
    for key in ("main", "eu"):
        indices = [index for room, index in SUITE if room == key]
        with django_capture_on_commit_callbacks():
            batch = start_batch(harness=v001, dataroom=rooms[key], user=engineer,
                                questions=[Question.objects.get(bank_index=index) for index in indices])
        _run_queued(batch)
        for run in batch.runs.select_related("question"):
            assert run.status == Run.Status.SUCCEEDED, run.last_error
            eval_id, assertions = SUITE[(key, run.question.bank_index)]
            cases[eval_id] = EvalCase.objects.create(
                cycle=batch.cycles.get(), eval_id=eval_id, title=f"Case {eval_id}", expected_behavior="As asserted.",
                source_run=run, scoring_method=EvalCase.ScoringMethod.DETERMINISTIC,
                deterministic_assertions=assertions, status=EvalCase.Status.APPROVED, approved_by=approver,
                approved_at=timezone.now(),
            )
    return {"v001": v001, "rooms": rooms, "cases": cases}


def test_every_case_is_run_and_judged_on_its_own_dataroom(two_rooms, engineer, approver, client_for,
                                                          django_capture_on_commit_callbacks):
    v001, rooms, cases = two_rooms["v001"], two_rooms["rooms"], two_rooms["cases"]
    # Another agent's approved case belongs to that agent's suite: v002 is neither run on it nor judged by it.
    other, _ = Agent.create_external(by=engineer, name="Support bot")
    imported = import_traces(other)[0]
    other_cycle = Cycle.objects.create(harness=imported.harness, name="support bot")
    other_case = EvalCase.objects.create(
        cycle=other_cycle, eval_id="returns-window", title="Returns window", expected_behavior="Says 30 days.",
        source_run=imported, scoring_method=EvalCase.ScoringMethod.DETERMINISTIC,
        deterministic_assertions=[{"type": "icontains", "value": "30 days"}], status=EvalCase.Status.APPROVED,
        approved_by=approver, approved_at=timezone.now())
    assert list(suite_cases(agent=other)) == [other_case]
    assert other_case not in suite_cases(agent=Agent.builtin())
    targets = [(dataroom.name, sorted(q.bank_index for q in questions)) for dataroom, questions in suite_targets(Agent.builtin())]
    assert targets == [("FictionalCorp XYZ", [0, 2]), ("FictionalCorp XYZ (EU)", [1, 2])]
    v002 = _child(v001, engineer, rules=RULES)
    extra = Question.objects.get(bank_index=6)
    with django_capture_on_commit_callbacks():
        gate_run = evaluate_candidate(candidate=v002, baseline=v001, user=engineer, extra_questions=[extra])
    assert gate_run.status == GateRun.Status.WAITING

    # One batch per dataroom, all in the evaluation's one cycle; extras on the dataroom most cases came from.
    batches = Batch.objects.filter(harness=v002)
    assert sorted((b.dataroom.name, b.runs.count()) for b in batches) == [
        ("FictionalCorp XYZ", 3), ("FictionalCorp XYZ (EU)", 2)]
    runs = list(gate_run.cycle.runs.select_related("dataroom", "question").order_by("label"))
    assert sorted((run.dataroom.name, run.question.bank_index) for run in runs) == [
        ("FictionalCorp XYZ", 0), ("FictionalCorp XYZ", 2), ("FictionalCorp XYZ", 6),
        ("FictionalCorp XYZ (EU)", 1), ("FictionalCorp XYZ (EU)", 2)]
    assert [run.label for run in runs] == [f"trace-{n:02d}" for n in range(1, 6)]  # distinct across batches
    assert not Cycle.objects.filter(batch__in=batches).exists()  # no stray per-batch cycles
    event = AuditEvent.objects.get(action="harness.evaluate", object_id=str(v002.pk))
    assert sorted(event.after["batches"]) == sorted(b.pk for b in batches)

    # The gate waits for the runs of both datarooms (the cycle's runs), then judges every case.
    from reviews.gate import runs_still_active

    assert runs_still_active(gate_run) == 5
    _run_queued(gate_run.cycle)
    assert runs_still_active(gate_run) == 0
    _run_gates()
    gate_run.refresh_from_db()
    assert gate_run.status == GateRun.Status.SUCCEEDED, gate_run.last_error
    assert (gate_run.config or {}).get("skipped") == []
    rows = list(gate_run.rows.select_related("run", "eval_case__source_run"))
    assert len(rows) == len(cases)
    for row in rows:
        source = row.eval_case.source_run
        assert (row.run.harness_id, row.run.dataroom_id, row.run.question_id) == (
            v002.pk, source.dataroom_id, source.question_id), row.eval_id
    answers = {row.eval_id: row.run.final_answer for row in rows}
    assert "Polaris" in answers["parent-rollup-eu"] and "Polaris" not in answers["parent-rollup"]
    assert {row.eval_id: row.passed for row in rows} == dict.fromkeys(cases, True)
    assert {row.case_id for row in comparison(gate_run.baseline, gate_run).rows} == set(cases)  # not returns-window

    result = comparison(gate_run.baseline, gate_run)
    assert len(result.rows) == 4 and result.unverified == []
    assert sorted(row.case_id for row in result.fixes) == ["finance-arr-eu", "parent-rollup", "parent-rollup-eu"]
    assert [row.case_id for row in result.unchanged] == ["runway-months"]
    assert result.pass_rate_delta == pytest.approx(0.75)
    page = client_for(approver).get(reverse("reviews:gate-compare", args=[gate_run.pk])).content.decode()
    assert 'data-testid="case-total">4 cases</strong>' in page and "0 not verified" in page
    assert f"on {rooms['eu'].name}</span>" in page and "+75 points" in page

    # The versions chart: one point per version on the current suite.
    from runs import promotion

    points = promotion.pass_rate_history()
    assert [(p.version, p.passed, p.total) for p in points] == [("v001", 1, 4), ("v002", 4, 4)]


def test_an_errored_or_unrun_case_is_counted_and_blocks_promotion(two_rooms, engineer, approver,
                                                                 django_capture_on_commit_callbacks):
    v001, rooms, cases = two_rooms["v001"], two_rooms["rooms"], two_rooms["cases"]
    v002 = _child(v001, engineer, rules=RULES)
    with django_capture_on_commit_callbacks():
        gate_run = evaluate_candidate(candidate=v002, baseline=v001, user=engineer)
    # The candidate's EU finance run loses its worker for good (as the sweep fails it after the last attempt) ...
    lost = gate_run.cycle.runs.get(dataroom=rooms["eu"], question__bank_index=1)
    Run.objects.filter(pk=lost.pk).update(status=Run.Status.FAILED, finished_at=timezone.now(),
                                          last_error="worker lost: no heartbeat after 3 attempt(s)")
    # ... and a case on a question the candidate never ran is approved while it runs.
    late_run = Run.objects.create(harness=v001, dataroom=rooms["eu"], question=Question.objects.get(bank_index=3),
                                  label="trace-late", trace_id=Run.new_trace_id(), status=Run.Status.SUCCEEDED,
                                  final_answer="Gross margin is 71%.", finished_at=timezone.now())
    EvalCase.objects.create(cycle=cases["runway-months"].cycle, eval_id="late-case", title="Approved late",
                            expected_behavior="x", source_run=late_run, status=EvalCase.Status.APPROVED,
                            scoring_method=EvalCase.ScoringMethod.DETERMINISTIC,
                            deterministic_assertions=[{"type": "icontains", "value": "margin"}])
    _run_queued(gate_run.cycle)
    _run_gates()
    gate_run.refresh_from_db()
    assert gate_run.status == GateRun.Status.SUCCEEDED, gate_run.last_error

    result = comparison(gate_run.baseline, gate_run)
    outcome = {row.case_id: row.outcome for row in result.rows}
    assert outcome == {"runway-months": "pass", "parent-rollup": "fix", "finance-arr-eu": "unverified",
                       "parent-rollup-eu": "fix", "late-case": "unverified"}
    states = {row.case_id: (row.baseline_status, row.candidate_status) for row in result.unverified}
    assert states == {"finance-arr-eu": ("fail", "error"), "late-case": ("pass", "not run")}
    counts = [len(result.regressions), len(result.fixes), len(result.unchanged), len(result.unverified)]
    assert counts == [0, 2, 1, 2] and sum(counts) == len(result.rows) == 5
    assert len(result.verified) == 3 and result.pass_rate_delta == pytest.approx(2 / 3)  # 1/3 -> 3/3, same cases

    with pytest.raises(PromotionRefused, match=r"2 case\(s\) are not verified: not run or errored \(2 on v002\)"):
        v002.promote(by=approver, comparison=result)
    v002.refresh_from_db()
    assert v002.status == Harness.Status.DRAFT
    v002.promote(by=approver, comparison=result, override_reason="EU finance run re-checked by hand.")
    event = AuditEvent.objects.get(action="harness.promote", object_id=str(v002.pk))
    assert sorted(event.after["comparison"]["unverified"]) == ["finance-arr-eu", "late-case"]
    assert event.after["override_reason"] == "EU finance run re-checked by hand."
