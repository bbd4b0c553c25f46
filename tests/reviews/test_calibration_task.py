"""The calibration task end to end: the stand-in judge grades every human-labelled criterion through the
project's promptfoo, the labels are stored, the agreement is computed and shown; approvals enqueue it."""

import pytest
from django.urls import reverse

from loopsite.standin.judge import grade
from reviews import calibration
from reviews.calibration import request_calibration
from reviews.models import JudgeCalibration, JudgeLabel, approve_run
from reviews.suite import RUBRIC_THRESHOLD
from reviews.tasks import calibrate_judge_task

from .builders import make_cycle, make_feedback, make_run
from .calibration_builders import arr_world

pytestmark = pytest.mark.django_db


@pytest.fixture
def sent(monkeypatch):
    calls = []
    monkeypatch.setattr(calibrate_judge_task, "delay", lambda pk: calls.append(pk))
    return calls


def standin_verdict(answer: str, criterion: str) -> bool:
    """What the stand-in judge decides, as promptfoo's llm-rubric turns it into pass/fail (threshold)."""
    verdict = grade(output=answer, rubric=criterion)
    return bool(verdict["pass"]) and verdict["score"] >= RUBRIC_THRESHOLD


def test_the_task_grades_every_label_with_the_judge_and_stores_the_agreement(standin, approver, sent,
                                                                           django_capture_on_commit_callbacks):
    _, (fail_run, pass_run, _), _, case = arr_world(approver)
    expected = calibration.human_labels()
    assert len(expected) == 5
    with django_capture_on_commit_callbacks(execute=True):
        job = request_calibration(user=approver)
    assert sent == [job.pk] and job.status == JudgeCalibration.Status.QUEUED
    assert (job.judge_model, job.endpoint, job.rubric_version) == (
        calibration.current_judge().model, standin, calibration.rubric_version())

    calibrate_judge_task.apply(args=[job.pk], throw=True)
    job.refresh_from_db()
    assert job.status == JudgeCalibration.Status.SUCCEEDED, job.last_error
    assert (job.done, job.total, job.attempts) == (5, 5, 1)

    labels = list(JudgeLabel.objects.select_related("run"))
    assert len(labels) == 5
    by_key = {(label.run_id, label.kind, label.criterion): label for label in labels}
    for human in expected:
        stored = by_key[(human.run.pk, human.kind, human.criterion)]
        assert stored.human_pass is human.human_pass and stored.error == ""
        assert stored.judge_pass is standin_verdict(human.run.final_answer, human.criterion), stored.reason
        assert stored.reason and stored.score is not None
        assert (stored.judge_model, stored.endpoint, stored.rubric_version) == (
            job.judge_model, job.endpoint, job.rubric_version)
        assert stored.criterion_hash == calibration.criterion_hash(human.criterion)
    verdicts = {label.run_id: label for label in labels if label.kind == "verdict"}
    assert verdicts[fail_run.pk].judge_pass is False  # the case's rubric catches the failure it came from
    assert verdicts[fail_run.pk].eval_case == case

    agreement = calibration.agreement()
    pairs = [(label.human_pass, label.judge_pass) for label in labels]
    assert agreement.labels == 5
    assert (agreement.tp, agreement.fn, agreement.tn, agreement.fp) == (
        pairs.count((False, False)), pairs.count((False, True)), pairs.count((True, True)), pairs.count((True, False)))
    assert job.summary["labels"] == 5 and job.summary["calibrated"] is False  # 5 < JUDGE_MIN_LABELS (20)
    assert job.summary["kappa"] == (None if agreement.kappa is None else round(agreement.kappa, 4))
    assert calibration.case_calibration([case]) == {case.pk: "current"}


def test_a_refresh_replaces_the_judges_labels_and_a_second_delivery_does_nothing(standin, approver, sent,
                                                                               django_capture_on_commit_callbacks):
    arr_world(approver)
    with django_capture_on_commit_callbacks(execute=True):
        first = request_calibration(user=approver)
    calibrate_judge_task.apply(args=[first.pk], throw=True)
    calibrate_judge_task.apply(args=[first.pk], throw=True)  # already done: no second grading
    first.refresh_from_db()
    assert first.attempts == 1 and JudgeLabel.objects.count() == 5
    with django_capture_on_commit_callbacks(execute=True):
        second = request_calibration(user=approver)
    assert second.pk != first.pk
    calibrate_judge_task.apply(args=[second.pk], throw=True)
    assert JudgeLabel.objects.count() == 5
    assert set(JudgeLabel.objects.values_list("calibration_id", flat=True)) == {second.pk}


def test_a_queued_refresh_is_returned_instead_of_a_second_one(standin, approver, engineer, sent,
                                                             django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        first = request_calibration(user=approver)
        again = request_calibration(user=engineer)
    assert first.pk == again.pk and sent == [first.pk]
    assert first.claim() == 1  # running now: it may have read the labels already, so a new request queues
    with django_capture_on_commit_callbacks(execute=True):
        behind = request_calibration(user=engineer)
    assert behind.pk != first.pk and behind.status == JudgeCalibration.Status.QUEUED and sent == [first.pk, behind.pk]


def test_reviewers_cannot_request_a_calibration(standin, reviewer, client_for):
    response = client_for(reviewer).post(reverse("reviews:judge-calibration"))
    assert response.status_code == 403 and not JudgeCalibration.objects.exists()


def test_the_button_queues_a_refresh_and_the_panel_shows_progress(standin, approver, client_for, sent,
                                                                  django_capture_on_commit_callbacks):
    client = client_for(approver)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("reviews:judge-calibration"), HTTP_HX_REQUEST="true")
    job = JudgeCalibration.objects.get()
    assert response.status_code == 200 and sent == [job.pk]
    body = response.content.decode()
    assert 'hx-trigger="every 2s"' in body and 'data-status="queued"' in body
    calibrate_judge_task.apply(args=[job.pk], throw=True)
    polled = client.get(reverse("reviews:judge-calibration"), HTTP_HX_REQUEST="true")
    assert polled.status_code == 286 and 'data-status="succeeded"' in polled.content.decode()


def test_without_promptfoo_the_calibration_fails_with_a_reason(standin, approver, sent, settings, tmp_path,
                                                              django_capture_on_commit_callbacks):
    arr_world(approver)
    settings.PROMPTFOO_BIN = str(tmp_path / "missing" / "promptfoo")
    with django_capture_on_commit_callbacks(execute=True):
        job = request_calibration(user=approver)
    calibrate_judge_task.apply(args=[job.pk], throw=True)
    job.refresh_from_db()
    assert job.status == JudgeCalibration.Status.FAILED and "promptfoo is not installed" in job.last_error
    assert not JudgeLabel.objects.exists()


def test_approving_feedback_enqueues_a_calibration(approver, reviewer, sent, django_capture_on_commit_callbacks):
    run = make_run(label="to-approve")
    cycle = make_cycle(run)
    make_feedback(cycle, run, reviewer, verdict="fail", status="submitted")
    content = {"summary": "Roll up.", "theme": "t", "verdict": "fail",
               "items": [{"kind": "required_observation", "text": "Mention the parent account"}]}
    with django_capture_on_commit_callbacks(execute=True):
        approve_run(cycle=cycle, run=run, by=approver, content=content, version=0)
    job = JudgeCalibration.objects.get()
    assert sent == [job.pk] and job.requested_by is None


def test_no_calibration_is_enqueued_when_auto_calibrate_is_off(approver, reviewer, sent, settings,
                                                               django_capture_on_commit_callbacks):
    settings.AUTO_CALIBRATE = False
    run = make_run(label="quiet")
    cycle = make_cycle(run)
    make_feedback(cycle, run, reviewer, verdict="fail", status="submitted")
    content = {"summary": "x", "theme": "t", "verdict": "fail", "items": []}
    with django_capture_on_commit_callbacks(execute=True):
        approve_run(cycle=cycle, run=run, by=approver, content=content, version=0)
    assert sent == [] and not JudgeCalibration.objects.exists()


def test_a_gate_run_records_the_judge_and_the_calibration_it_ran_under(standin, approver, sent, client_for,
                                                                       django_capture_on_commit_callbacks):
    from reviews.models import GateRun
    from reviews.tasks import run_gate_task

    from .gate_builders import queued_gate

    cycle, _, _, _ = arr_world(approver)
    with django_capture_on_commit_callbacks(execute=True):
        job = request_calibration(user=approver)
    calibrate_judge_task.apply(args=[job.pk], throw=True)
    expected = calibration.agreement().snapshot()

    gate_run = queued_gate(cycle)
    run_gate_task.apply(args=[gate_run.pk], throw=True)
    gate_run.refresh_from_db()
    assert gate_run.status == GateRun.Status.SUCCEEDED, gate_run.last_error
    assert (gate_run.judge_model, gate_run.endpoint) == (calibration.current_judge().model, standin)
    assert gate_run.judge_rubric_hash == calibration.rubric_version()
    assert gate_run.judge_calibration == expected
    assert gate_run.judge_calibration["labels"] == 5 and gate_run.judge_calibration["calibrated"] is False
    row = gate_run.rows.get()
    # the case's literal check fails on its source answer, so the rules decided it, not the judge
    assert row.passed is False and not row.judge_decided
    assert calibration.gate_needs_reason(gate_run) is None


def test_the_suite_page_shows_the_agreement_after_a_refresh(standin, approver, sent, client_for,
                                                           django_capture_on_commit_callbacks):
    arr_world(approver)
    with django_capture_on_commit_callbacks(execute=True):
        job = request_calibration(user=approver)
    calibrate_judge_task.apply(args=[job.pk], throw=True)
    agreement = calibration.agreement()
    page = client_for(approver).get(reverse("reviews:suite")).content.decode()
    assert 'data-testid="judge-row-current"' in page
    assert f'data-testid="judge-labels">{agreement.labels}' in page
    kappa = "—" if agreement.kappa is None else f"{agreement.kappa:.2f}"
    assert f'data-testid="judge-kappa">{kappa}<' in page
    assert 'data-testid="judge-not-calibrated"' in page and "fewer than the 20 required" in page


def test_with_no_reviewed_runs_the_refresh_succeeds_with_no_labels(standin, approver, sent,
                                                                  django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        job = request_calibration(user=approver)
    calibrate_judge_task.apply(args=[job.pk], throw=True)
    job.refresh_from_db()
    assert job.status == JudgeCalibration.Status.SUCCEEDED and (job.total, job.done) == (0, 0)
    assert job.summary["labels"] == 0 and job.summary["kappa"] is None


def test_the_database_allows_one_active_refresh_per_judge(standin, approver, sent, monkeypatch,
                                                          django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        first = request_calibration(user=approver)
    real = calibration.queued_calibration
    calls = []

    def missed_once(judge):  # a concurrent request that did not see `first` yet
        calls.append(1)
        return None if len(calls) == 1 else real(judge)

    monkeypatch.setattr(calibration, "queued_calibration", missed_once)
    assert request_calibration(user=approver).pk == first.pk
    assert JudgeCalibration.objects.count() == 1
