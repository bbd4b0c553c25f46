"""reviews.promptfoo, the core the gate and the back-tests share: any answer text, repeats, parsed rows."""

import pytest

from reviews.promptfoo import PromptfooError, Target, run_promptfoo_tests

from .backtest_builders import CATCHING, FAIL_EXAMPLE, PASS_EXAMPLE, case_for, reviewed_run

pytestmark = pytest.mark.django_db


@pytest.fixture
def case(standin, reviewer, approver):
    cycle, run, feedback = reviewed_run(reviewer, approver)
    return case_for(cycle, run, feedback, checks=CATCHING)


def test_each_test_runs_repeat_times_and_every_row_says_which_test_and_repeat(case):
    beats = []
    tests = [(case, Target(key="fail", answer=FAIL_EXAMPLE, question="Q?", metadata={"target": "fail_example"})),
             (case, Target(key="pass", answer=PASS_EXAMPLE, question="Q?", metadata={"target": "pass_example"}))]
    result = run_promptfoo_tests(tests=tests, repeat=2, beat=lambda: beats.append(1) or True, what="the back-test")
    assert result.error == "" and result.expected == 4 and result.returncode == 100
    assert "--repeat" not in result.config  # a CLI flag, not config
    rows = sorted((row["test_index"], row["repeat_index"], row["key"], row["passed"]) for row in result.rows)
    assert rows == [(0, 0, "fail", False), (0, 1, "fail", False), (1, 0, "pass", True), (1, 1, "pass", True)]
    assert all(row["case_id"] == case.pk and row["metadata"]["eval_id"] == case.eval_id for row in result.rows)
    assert [item["type"] for item in result.rows[0]["assertions"]] == ["not-contains", "icontains"]


def test_nothing_to_test_is_an_error_naming_the_caller():
    with pytest.raises(PromptfooError, match="Nothing to test: the back-test has no case"):
        run_promptfoo_tests(tests=[], what="the back-test")


def test_two_answers_under_one_key_are_refused(case):
    tests = [(case, Target(key="same", answer="a", question="Q?")), (case, Target(key="same", answer="b", question="Q?"))]
    with pytest.raises(ValueError, match="Two different answers share the key 'same'"):
        run_promptfoo_tests(tests=tests)
