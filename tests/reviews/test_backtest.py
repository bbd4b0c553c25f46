"""Back-tests: a proposal run through the gate's promptfoo path on the answers it should decide."""

import pytest

from loopsite.models import AuditEvent
from reviews import backtest, promptfoo
from reviews.models import BackTest, BackTestRun, EvalCase
from reviews.tasks import backtest_task

from .backtest_builders import CATCHING, FAIL_EXAMPLE, MISSING, PASS_EXAMPLE, case_for, reviewed_run, run_queued

pytestmark = pytest.mark.django_db


@pytest.fixture
def reviewed(standin, reviewer, approver):
    return reviewed_run(reviewer, approver)


def _rows(run: BackTestRun) -> dict[str, BackTest]:
    return {row.target if row.target != BackTest.Target.OTHER_RUN else f"other-{row.run_id}": row
            for row in run.rows.all()}


def test_a_case_that_catches_its_failure_fails_the_source_and_fail_example_and_passes_the_pass_example(reviewed):
    cycle, run, feedback = reviewed
    case = case_for(cycle, run, feedback, checks=CATCHING)
    queued = backtest.request_backtest(case=case, purpose=BackTestRun.Purpose.GENERATED)
    backtest_task.apply(args=[queued.pk], throw=True)
    queued.refresh_from_db()

    assert queued.status == BackTestRun.Status.SUCCEEDED, queued.last_error
    assert (queued.catches, queued.pass_example_ok, queued.expects_failure, queued.met) == (True, True, True, 3)
    assert queued.case_hash == case.checks_hash() and queued.revision == 0
    rows = _rows(queued)
    assert set(rows) == {"source_run", "fail_example", "pass_example"}
    source = rows["source_run"]
    assert source.run == run and source.answer_excerpt == run.final_answer
    assert (source.expected, source.passed, source.score) == ("fail", False, 0)
    assert source.assertions[0] == {"type": "not-contains", "value": "SOC 2 is complete", "pass": False, "score": 0,
                                    "reason": 'Expected output to not contain "SOC 2 is complete"'}
    assert source.reason.startswith("Expected output to")  # promptfoo's reason, as the gate stores it
    assert (rows["fail_example"].answer_excerpt, rows["fail_example"].passed) == (FAIL_EXAMPLE, False)
    assert (rows["pass_example"].answer_excerpt, rows["pass_example"].passed) == (PASS_EXAMPLE, True)
    assert all(row.meets_expectation for row in rows.values())
    state = case.backtest_state()
    assert (state.label, state.catches, state.concern, state.stale) == ("yes", True, "", False)


def test_a_case_the_failing_answer_passes_does_not_catch_it(reviewed):
    cycle, run, feedback = reviewed
    case = case_for(cycle, run, feedback, checks=MISSING, pass_example="Nothing about it.")
    backtest.request_backtest(case=case, purpose=BackTestRun.Purpose.RERUN)
    [done] = run_queued(case)
    assert done.status == BackTestRun.Status.SUCCEEDED
    assert (done.catches, done.pass_example_ok) == (False, False)
    rows = _rows(done)
    assert rows["source_run"].passed is True and rows["source_run"].meets_expectation is False
    assert rows["pass_example"].passed is False
    state = case.backtest_state()
    assert state.label == "no"
    assert state.concern == "It does not catch the failure it came from. It fails its own pass example."


def test_the_back_test_uses_the_same_promptfoo_tests_as_the_gate(reviewed, monkeypatch):
    cycle, run, feedback = reviewed
    case = case_for(cycle, run, feedback, checks={
        "scoring_method": EvalCase.ScoringMethod.HYBRID, "rubric": 'The answer must not say "SOC 2 is complete".',
        "deterministic_assertions": [{"type": "not-contains", "value": "SOC 2 is complete"}]})
    seen = []
    real = promptfoo.run_config

    def spy(**kwargs):
        seen.append(kwargs["config"])
        return real(**kwargs)

    monkeypatch.setattr(promptfoo, "run_config", spy)
    backtest.request_backtest(case=case)
    run_queued(case)
    from reviews.suite import promptfoo_test

    [config] = seen
    assert [test["assert"] for test in config["tests"]] == [promptfoo_test(case)["assert"]] * 3
    assert config["providers"][0]["id"] == "file://provider.py"


def test_a_rubric_case_is_judged_by_the_stand_in_judge_through_promptfoo(reviewed, settings):
    cycle, run, feedback = reviewed
    case = case_for(cycle, run, feedback, checks={
        "scoring_method": EvalCase.ScoringMethod.LLM_JUDGE, "rubric": 'The answer must not say "SOC 2 is complete".',
        "deterministic_assertions": []})
    backtest.request_backtest(case=case)
    [done] = run_queued(case)
    assert done.status == BackTestRun.Status.SUCCEEDED, done.last_error
    assert done.judge_model == settings.OPENAI_JUDGE_MODEL and done.endpoint == settings.STANDIN_URL
    rows = _rows(done)
    assert [item["type"] for item in rows["source_run"].assertions] == ["llm-rubric"]
    assert rows["source_run"].passed is False and rows["pass_example"].passed is True
    assert done.catches is True and rows["source_run"].reason


def test_other_reviewed_runs_of_the_question_are_tested_and_expected_by_their_own_verdict(standin, reviewer, approver):
    cycle, run, feedback = reviewed_run(reviewer, approver)
    _, good, _ = reviewed_run(reviewer, approver, answer=PASS_EXAMPLE, verdict="pass", label="trace-04b",
                              question=run.question, name="v002 review")
    _, elsewhere, _ = reviewed_run(reviewer, approver, answer=PASS_EXAMPLE, label="trace-04c", name="v003 review")
    case = case_for(cycle, run, feedback)
    backtest.request_backtest(case=case)
    [done] = run_queued(case)
    rows = _rows(done)
    other = rows[f"other-{good.pk}"]
    assert (other.expected, other.passed, other.meets_expectation) == ("pass", True, True)
    assert other.expected_because == "that run's approved verdict is pass"
    assert f"other-{elsewhere.pk}" not in rows  # another question
    assert done.met == 3  # other runs are informational: they do not count toward catching


def test_a_case_from_passing_feedback_expects_its_source_to_pass(standin, reviewer, approver):
    cycle, run, feedback = reviewed_run(reviewer, approver, answer=PASS_EXAMPLE, verdict="pass")
    case = case_for(cycle, run, feedback)
    backtest.request_backtest(case=case)
    [done] = run_queued(case)
    assert _rows(done)["source_run"].expected == "pass"
    assert done.catches is None and done.expects_failure is False
    assert case.backtest_state().label == "n/a"


def test_editing_the_checks_makes_the_back_test_stale_and_queues_another(reviewed, approver,
                                                                          django_capture_on_commit_callbacks):
    cycle, run, feedback = reviewed
    case = case_for(cycle, run, feedback)
    backtest.request_backtest(case=case)
    run_queued(case)
    with django_capture_on_commit_callbacks() as callbacks:
        case.edit(by=approver, content={"title": "A new title"})
    assert callbacks == [] and case.backtest_state().label == "yes"  # the title is not a check
    with django_capture_on_commit_callbacks() as callbacks:
        case.edit(by=approver, content={"deterministic_assertions": MISSING["deterministic_assertions"]})
    assert len(callbacks) == 1
    queued = case.backtest_runs.get(status=BackTestRun.Status.QUEUED)
    assert queued.purpose == BackTestRun.Purpose.EDITED and queued.requested_by == approver
    state = case.backtest_state()
    assert state.stale and state.label == "stale" and state.active
    assert state.concern == "It changed since its last back-test, and the back-test of this version has not finished."
    run_queued(case)
    state = case.backtest_state()
    assert not state.stale and state.label == "no" and state.evidence.revision == 2


def test_a_second_request_while_one_is_queued_returns_it(reviewed, approver):
    cycle, run, feedback = reviewed
    case = case_for(cycle, run, feedback)
    first = backtest.rerun_backtest(case=case, user=approver)
    assert backtest.rerun_backtest(case=case, user=approver).pk == first.pk
    assert AuditEvent.objects.filter(action="backtest.request", object_id=str(case.pk)).count() == 1


def test_a_delivered_twice_task_runs_once(reviewed):
    cycle, run, feedback = reviewed
    case = case_for(cycle, run, feedback)
    queued = backtest.request_backtest(case=case)
    backtest_task.apply(args=[queued.pk], throw=True)
    backtest_task.apply(args=[queued.pk], throw=True)
    queued.refresh_from_db()
    assert queued.attempts == 1 and queued.rows.count() == 3


def test_missing_promptfoo_fails_the_back_test_with_a_clear_reason(reviewed, settings, tmp_path):
    cycle, run, feedback = reviewed
    case = case_for(cycle, run, feedback)
    settings.PROMPTFOO_BIN = str(tmp_path / "promptfoo")
    backtest.request_backtest(case=case)
    [done] = run_queued(case)
    assert done.status == BackTestRun.Status.FAILED
    assert done.last_error.startswith(f"promptfoo is not installed: {settings.PROMPTFOO_BIN} does not exist.")
    assert done.last_error.endswith("then re-run the back-test.")
    state = case.backtest_state()
    assert state.label == "failed"
    assert state.concern == "Its back-test failed, so nothing shows that it catches the failure it came from."


def test_a_dead_judge_is_an_error_not_a_verdict(reviewed, settings, refused_url):
    cycle, run, feedback = reviewed
    case = case_for(cycle, run, feedback, checks={
        "scoring_method": EvalCase.ScoringMethod.LLM_JUDGE, "rubric": 'The answer must not say "SOC 2 is complete".',
        "deterministic_assertions": []})
    settings.STANDIN_URL = refused_url
    backtest.request_backtest(case=case)
    [done] = run_queued(case)
    assert done.status == BackTestRun.Status.FAILED
    assert done.last_error.startswith("The judge (") and "ECONNREFUSED" in done.last_error
    assert done.catches is None and all(row.outcome == "error" for row in done.rows.all())
    assert case.backtest_state().label == "undecided"


def test_generation_queues_a_back_test_per_proposal(standin, reviewer, approver):
    from .gen_builders import proposed_cases

    cases = proposed_cases(reviewer, approver, count=2)
    for case in cases.values():
        queued = case.backtest_runs.get()
        assert (queued.purpose, queued.status) == (BackTestRun.Purpose.GENERATED, BackTestRun.Status.QUEUED)
        assert case.backtest_state().label == "queued"
        assert case.backtest_state().concern.startswith("Its back-test has not finished")
