"""Generation repairs what it can: a proposal its back-test speaks against goes back to the generator once,
in the worker; the better of the two versions is kept and both are in the history."""

import pytest

from loopsite.models import AuditEvent
from reviews import backtest, generation
from reviews.models import BackTestRun, EvalCase
from reviews.tasks import backtest_task

from .backtest_builders import CATCHING, MISSING, case_for, reviewed_run, run_queued

pytestmark = pytest.mark.django_db

CHECK_FIELDS = ("scoring_method", "rubric", "deterministic_assertions")


@pytest.fixture
def missing_case(standin, reviewer, approver):
    cycle, run, feedback = reviewed_run(reviewer, approver)
    case = case_for(cycle, run, feedback, checks=MISSING)
    backtest.request_backtest(case=case, purpose=BackTestRun.Purpose.GENERATED)
    return case


@pytest.fixture
def prompts(monkeypatch):
    calls = []
    real = generation._respond

    def recording(**kwargs):
        calls.append(kwargs["messages"])
        return real(**kwargs)

    monkeypatch.setattr(generation, "_respond", recording)
    return calls


def _generator_returns(monkeypatch, checks: dict):
    def repair_eval(*, case, backtest_run, heartbeat):
        assert backtest_run.rows.exists() and heartbeat.status == BackTestRun.Status.RUNNING
        return {**case.content(), **checks}, "gpt-test"

    monkeypatch.setattr(generation, "repair_eval", repair_eval)


def test_a_proposal_that_misses_its_failure_is_sent_back_once_with_its_back_test_rows(missing_case, prompts):
    case = missing_case
    first, repair = run_queued(case)
    assert first.catches is False
    assert repair.purpose == BackTestRun.Purpose.REPAIR and repair.status == BackTestRun.Status.SUCCEEDED, repair.last_error
    [messages] = prompts
    prompt = messages[0]["content"]
    assert prompt.startswith(f"{generation.EVALS_MARKER}\n{generation.EVAL_REPAIR_MARKER}\n")
    assert '"promptfoo_outcome": "pass"' in prompt and '"expected": "fail"' in prompt  # the source row, as tested
    assert f'"source_trace_id": "{case.source_run.trace_id}"' in prompt
    repair.refresh_from_db()
    assert repair.repair["compared_with"] == first.pk and repair.repair["kept"] in ("repaired", "original")
    revisions = list(case.revisions.order_by("at", "pk"))
    assert revisions[0].edited_by is None and revisions[0].note.startswith("Repaired by the generator")
    case.refresh_from_db()
    if repair.repair["kept"] == "repaired":
        assert (repair.catches, repair.met) > (first.catches, first.met) or repair.catches
        assert len(revisions) == 1
    else:
        assert {name: getattr(case, name) for name in CHECK_FIELDS} == {name: MISSING[name] for name in CHECK_FIELDS}
        assert revisions[-1].note.startswith("Kept the original")
    assert case.backtest_runs.count() == 2  # once: the repair is not repaired again
    assert AuditEvent.objects.filter(action="backtest.repair", object_id=str(case.pk)).count() == 1


def test_the_repaired_version_is_kept_when_it_back_tests_better(missing_case, monkeypatch):
    _generator_returns(monkeypatch, CATCHING)
    case = missing_case
    first, repair = run_queued(case)
    case.refresh_from_db()
    assert (first.catches, repair.catches) == (False, True)
    assert repair.repair["kept"] == "repaired" and repair.repair["original"]["deterministic_assertions"] == MISSING[
        "deterministic_assertions"]
    assert case.deterministic_assertions == CATCHING["deterministic_assertions"]
    assert case.backtest_state().label == "yes"
    [revision] = case.revisions.all()
    assert revision.before["deterministic_assertions"] == MISSING["deterministic_assertions"]
    assert revision.after["deterministic_assertions"] == CATCHING["deterministic_assertions"]


def test_the_original_is_put_back_when_the_repair_is_no_better(missing_case, monkeypatch):
    worse = {"deterministic_assertions": [{"type": "icontains", "value": "enterprise"}]}
    _generator_returns(monkeypatch, worse)
    case = missing_case
    first, repair = run_queued(case)
    case.refresh_from_db()
    assert repair.repair["kept"] == "original"
    assert case.deterministic_assertions == MISSING["deterministic_assertions"]
    assert [r.after["deterministic_assertions"] for r in case.revisions.order_by("at", "pk")] == [
        worse["deterministic_assertions"], MISSING["deterministic_assertions"]]
    state = case.backtest_state()
    assert state.evidence == first and state.label == "no"  # the original's back-test is current again


def test_a_case_a_person_edited_is_not_sent_back(missing_case, approver, monkeypatch):
    _generator_returns(monkeypatch, CATCHING)
    case = missing_case
    case.edit(by=approver, content={"title": "Edited by a person"})
    done = run_queued(case)
    assert [run.purpose for run in done] == [BackTestRun.Purpose.GENERATED]


def test_a_generator_that_cannot_repair_leaves_the_case_as_it_was(missing_case, settings, standin_broken_server):
    case = missing_case
    first = case.backtest_runs.get()
    backtest_task.apply(args=[first.pk], throw=True)
    settings.STANDIN_URL = standin_broken_server
    [repair] = run_queued(case)
    assert repair.status == BackTestRun.Status.FAILED
    assert repair.last_error.startswith("The generator could not repair the case: The model's repair was not usable")
    case.refresh_from_db()
    assert not case.revisions.exists() and case.deterministic_assertions == MISSING["deterministic_assertions"]
    assert case.backtest_state().evidence == first and case.status == EvalCase.Status.PROPOSED
