"""Judge calibration: the agreement arithmetic, the human labels feedback gives, and what a gate says
about a judge that is not calibrated (reviews/calibration.py)."""

import pytest
from django.urls import reverse

from reviews import calibration
from reviews.calibration import CLAIM_RUBRIC, OBSERVATION_RUBRIC, Agreement, gate_needs_reason, human_labels, table
from reviews.models import EvalCase, GateRow, GateRun, JudgeLabel
from reviews.suite import promptfoo_test

from .builders import make_cycle, make_run
from .calibration_builders import ARR_RUBRIC, approved_case, arr_world, reviewed

# --- the arithmetic, on known tables ("fail" is the positive class) ----------------------------------------


def test_kappa_tpr_tnr_on_a_known_table():
    result = Agreement(tp=20, fn=5, tn=15, fp=10)
    # p_o = 35/50 = 0.7; p_e = (30/50)(25/50) + (20/50)(25/50) = 0.5; kappa = 0.2 / 0.5
    assert result.labels == 50 and result.agreed == 35
    assert result.tpr == pytest.approx(0.8) and result.tnr == pytest.approx(0.6)
    assert result.kappa == pytest.approx(0.4)


def test_kappa_on_a_textbook_table():
    # 25 fail/fail, 10 fail/pass, 15 pass/fail, 50 pass/pass: p_o = .75; judge fails 40, humans fail 35,
    # so p_e = .40 * .35 + .60 * .65 = .53 and kappa = .22 / .47
    result = Agreement(tp=25, fn=10, fp=15, tn=50)
    assert result.kappa == pytest.approx(0.22 / 0.47)
    assert result.tpr == pytest.approx(25 / 35) and result.tnr == pytest.approx(50 / 65)


def test_perfect_and_chance_agreement():
    assert Agreement(tp=10, tn=10).kappa == pytest.approx(1.0)
    assert Agreement(tp=5, fn=5, tn=5, fp=5).kappa == pytest.approx(0.0)
    assert Agreement(tp=0, fn=10, tn=0, fp=10).kappa == pytest.approx(-1.0)


def test_degenerate_tables_have_no_kappa_and_are_not_calibrated(settings):
    settings.JUDGE_MIN_LABELS = 5
    only_failures = Agreement(tp=30)  # both sides put everything in one class: chance explains it all
    assert only_failures.kappa is None and only_failures.tpr == 1.0 and only_failures.tnr is None
    assert not only_failures.calibrated and "undefined" in only_failures.why_not_calibrated()
    only_passes = Agreement(tn=30)
    assert only_passes.kappa is None and only_passes.tpr is None and only_passes.tnr == 1.0
    # one class on the human side, judge split: kappa is defined (0), rates only on the side that exists
    human_all_fail = Agreement(tp=6, fn=4)
    assert human_all_fail.kappa == pytest.approx(0.0) and human_all_fail.tpr == pytest.approx(0.6)
    assert human_all_fail.tnr is None
    empty = Agreement()
    assert empty.labels == 0 and empty.kappa is None and empty.tpr is None and not empty.calibrated
    assert "no labels" in empty.why_not_calibrated()


def test_unanswered_criteria_are_counted_apart():
    result = table([(False, False), (False, None), (True, True), (True, None), (True, False)])
    assert (result.tp, result.fn, result.tn, result.fp, result.errors) == (1, 0, 1, 1, 2)
    assert result.labels == 3


def test_calibrated_needs_enough_labels_and_kappa(settings):
    settings.JUDGE_MIN_LABELS = 20
    settings.JUDGE_MIN_KAPPA = 0.6
    assert Agreement(tp=10, tn=10).calibrated  # 20 labels, kappa 1
    assert not Agreement(tp=9, tn=10).calibrated  # 19 labels
    assert "fewer than the 20" in Agreement(tp=9, tn=10).why_not_calibrated()
    low = Agreement(tp=20, fn=5, tn=15, fp=10)  # kappa 0.4
    assert not low.calibrated and "0.40 is below 0.60" in low.why_not_calibrated()
    settings.JUDGE_MIN_KAPPA = 0.4
    assert Agreement(tp=20, fn=5, tn=15, fp=10).calibrated
    snapshot = Agreement(tp=20, fn=5, tn=15, fp=10).snapshot()
    assert snapshot["calibrated"] is True and snapshot["labels"] == 50 and snapshot["kappa"] == pytest.approx(0.4)
    assert snapshot["tpr"] == pytest.approx(0.8) and snapshot["tnr"] == pytest.approx(0.6)


# --- human labels from feedback ----------------------------------------------------------------------------


@pytest.mark.django_db
def test_labels_derived_from_feedback(approver):
    _, (fail_run, pass_run, mixed_run), (fb_fail, fb_pass, _), case = arr_world(approver)
    labels = {(label.run.pk, label.kind, label.criterion): label for label in human_labels()}
    assert {key: (label.human_pass, label.feedback.pk) for key, label in labels.items()} == {
        # the case's rubric: its source failure fails, the expert-passed answer to the same question passes;
        # the mixed answer is neither the case's source nor a pass, so it gives no verdict label
        (fail_run.pk, "verdict", ARR_RUBRIC): (False, fb_fail.pk),
        (pass_run.pk, "verdict", ARR_RUBRIC): (True, fb_pass.pk),
        # what the reviewer asked for on a failed answer: the answer did not do it
        (fail_run.pk, "observation", OBSERVATION_RUBRIC.format(text="Prefer the finance ARR of $36.9M over the board figure")):
            (False, fb_fail.pk),
        # a claim recorded on a failed answer: the answer made it, so "does not claim" fails
        (fail_run.pk, "claim", CLAIM_RUBRIC.format(text="Do not present the board ARR of $43.0M as reliable")):
            (False, fb_fail.pk),
        # on a passed answer the observation holds
        (pass_run.pk, "observation", OBSERVATION_RUBRIC.format(text="State the finance ARR bridge figure of $36.9M")):
            (True, fb_pass.pk),
    }
    assert labels[(fail_run.pk, "verdict", ARR_RUBRIC)].eval_case == case
    assert all(label.run.pk != mixed_run.pk for label in labels.values())  # mixed: the items say nothing per item


@pytest.mark.django_db
def test_only_approved_merged_feedback_with_an_answer_counts(approver, reviewer):
    run = make_run(label="draft")
    unanswered = make_run(label="no-answer", answer="")
    cycle = make_cycle(run, unanswered)
    reviewed(cycle, unanswered, approver, verdict="fail", observations=["Say something"])
    from .builders import make_feedback

    make_feedback(cycle, run, reviewer, verdict="fail")  # a reviewer's draft: not an approved verdict
    assert human_labels() == []


@pytest.mark.django_db
def test_the_latest_approval_of_a_run_wins(approver):
    run = make_run(label="twice")
    first = make_cycle(run, name="c1")
    second = make_cycle(run, name="c2")
    reviewed(first, run, approver, verdict="fail", observations=["Name the runway"])
    latest = reviewed(second, run, approver, verdict="pass", observations=["Name the runway"])
    labels = human_labels()
    assert [(label.kind, label.human_pass, label.feedback.pk) for label in labels] == [("observation", True, latest.pk)]


@pytest.mark.django_db
def test_a_rule_only_case_gives_no_verdict_label(approver):
    run = make_run(label="rules")
    cycle = make_cycle(run)
    reviewed(cycle, run, approver, verdict="fail")
    approved_case(cycle, run, approver, eval_id="rules-only", rubric="", scoring=EvalCase.ScoringMethod.DETERMINISTIC,
                  assertions=[{"type": "contains", "value": "x"}])
    assert human_labels() == []


@pytest.mark.django_db
def test_the_judge_grades_criteria_exactly_as_the_gate_writes_a_rubric(approver):
    _, _, _, case = arr_world(approver)
    gate_rubric = next(item for item in promptfoo_test(case)["assert"] if item["type"] == "llm-rubric")
    assert calibration.rubric_assertion(case.rubric) == gate_rubric


def test_the_rubric_version_changes_with_the_judge_settings(monkeypatch):
    before = calibration.rubric_version()
    assert before == calibration.rubric_version() and len(before) == 16
    monkeypatch.setattr(calibration, "CLAIM_RUBRIC", CLAIM_RUBRIC + " Be strict.")
    assert calibration.rubric_version() != before
    monkeypatch.setattr(calibration, "CLAIM_RUBRIC", CLAIM_RUBRIC)
    monkeypatch.setattr(calibration, "RUBRIC_THRESHOLD", 0.5)
    assert calibration.rubric_version() != before


# --- the gate: its headline, and what promotion on it needs ---------------------------------------------


RUBRIC_ROW = [{"type": "contains", "value": "x", "pass": True, "score": 1, "reason": ""},
              {"type": "llm-rubric", "value": "r", "pass": True, "score": 1, "reason": "ok"}]
RULE_FAILED_ROW = [{"type": "contains", "value": "x", "pass": False, "score": 0, "reason": "missing"},
                   {"type": "llm-rubric", "value": "r", "pass": False, "score": 0, "reason": "no"}]
RULES_ONLY_ROW = [{"type": "contains", "value": "x", "pass": True, "score": 1, "reason": ""}]


def finished_gate(approver, rows_assertions, *, snapshot):
    runs = [make_run(label=f"g{i}") for i in range(len(rows_assertions))]
    cycle = make_cycle(*runs)
    gate_run = GateRun.objects.create(cycle=cycle, harness=cycle.harness, status=GateRun.Status.SUCCEEDED,
                                      judge_model="judge-x", endpoint="http://judge", judge_calibration=snapshot,
                                      total=len(runs), passed=len(runs))
    for index, (run, assertions) in enumerate(zip(runs, rows_assertions, strict=True)):
        case = approved_case(cycle, run, approver, eval_id=f"case-{index}", rubric="r")
        GateRow.objects.create(gate_run=gate_run, eval_case=case, run=run, position=index, eval_id=case.eval_id,
                               title=case.title, passed=all(a["pass"] for a in assertions), assertions=assertions)
    return gate_run


UNCALIBRATED = Agreement(tp=3, tn=2).snapshot()


@pytest.mark.django_db
def test_which_rows_the_judge_decided(approver):
    gate_run = finished_gate(approver, [RUBRIC_ROW, RULE_FAILED_ROW, RULES_ONLY_ROW], snapshot=UNCALIBRATED)
    assert [row.judge_decided for row in gate_run.rows.order_by("position")] == [True, False, False]
    row = gate_run.rows.order_by("position").first()
    row.error = "The judge did not answer: timeout"
    assert not row.judge_decided


@pytest.mark.django_db
def test_an_uncalibrated_judge_needs_a_reason_and_says_so_in_the_headline(approver, client_for, settings):
    settings.JUDGE_MIN_LABELS = 20
    gate_run = finished_gate(approver, [RUBRIC_ROW, RULES_ONLY_ROW], snapshot=Agreement(tp=3, tn=2).snapshot())
    reason = gate_needs_reason(gate_run)
    assert reason and "judge-x" in reason and "5 human label(s), fewer than the 20 required" in reason
    assert "1 of 2 case(s)" in reason
    page = client_for(approver).get(reverse("reviews:gate-detail", args=[gate_run.pk])).content.decode()
    assert 'data-testid="gate-judge-uncalibrated"' in page and "Judge not calibrated" in page
    assert "decided 1 of 2 case(s)" in page
    assert page.count('data-testid="gate-row-decider">judge<') == 1
    assert page.count('data-testid="gate-row-decider">rules<') == 1
    assert 'data-testid="judge-calibration"' in page  # the agreement panel


@pytest.mark.django_db
def test_a_gate_decided_by_rules_alone_is_not_affected(approver, client_for):
    gate_run = finished_gate(approver, [RULES_ONLY_ROW, RULE_FAILED_ROW], snapshot=UNCALIBRATED)
    assert gate_needs_reason(gate_run) is None
    page = client_for(approver).get(reverse("reviews:gate-detail", args=[gate_run.pk])).content.decode()
    assert 'data-testid="gate-judge-uncalibrated"' not in page
    assert 'data-testid="gate-judge-not-needed"' in page


@pytest.mark.django_db
def test_a_calibrated_judge_needs_no_reason(approver, client_for, settings):
    settings.JUDGE_MIN_LABELS = 4
    gate_run = finished_gate(approver, [RUBRIC_ROW], snapshot=Agreement(tp=2, tn=2).snapshot())
    assert gate_run.judge_calibration["calibrated"] is True
    assert gate_needs_reason(gate_run) is None
    page = client_for(approver).get(reverse("reviews:gate-detail", args=[gate_run.pk])).content.decode()
    assert 'data-testid="gate-judge-calibrated"' in page and "Judge not calibrated" not in page


@pytest.mark.django_db
def test_a_gate_without_a_recorded_calibration_counts_as_uncalibrated(approver):
    gate_run = finished_gate(approver, [RUBRIC_ROW], snapshot={})
    assert "no calibration was recorded" in gate_needs_reason(gate_run)


# --- staleness: a rubric edited since the judge graded it ----------------------------------------------------


@pytest.mark.django_db
def test_editing_a_rubric_makes_its_calibration_stale(approver, client_for):
    _, (fail_run, _, _), (fb_fail, _, _), case = arr_world(approver)
    judge = calibration.current_judge()
    assert calibration.case_calibration([case]) == {case.pk: "none"}
    JudgeLabel.objects.create(run=fail_run, feedback=fb_fail, eval_case=case, kind="verdict", criterion=case.rubric,
                              criterion_hash=calibration.criterion_hash(case.rubric), human_pass=False,
                              judge_pass=False, judge_model=judge.model, endpoint=judge.endpoint,
                              rubric_version=judge.rubric_version)
    assert calibration.case_calibration([case]) == {case.pk: "current"}
    page = client_for(approver).get(reverse("reviews:suite")).content.decode()
    assert 'data-testid="judge-calibration"' in page and f'data-testid="judge-stale-{case.pk}"' not in page
    case.rubric = 'The answer must lead with the "$36.9M" finance ARR and call the board figure unreconciled.'
    case.save(update_fields=["rubric"])
    assert calibration.case_calibration([case]) == {case.pk: "stale"}
    page = client_for(approver).get(reverse("reviews:suite")).content.decode()
    assert f'data-testid="judge-stale-{case.pk}"' in page and "its rubric was edited since the last calibration" in page
