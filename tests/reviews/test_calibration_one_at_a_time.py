"""One judge calibration at a time per judge: a refresh requested while another runs waits, then starts the
moment that one ends (several overlapping refreshes would each judge every label, competing with the
back-tests the approver waits for)."""

import pytest

from reviews import calibration
from reviews.calibration import request_calibration
from reviews.models import JudgeCalibration
from reviews.tasks import calibrate_judge_task

from .calibration_builders import arr_world
from .test_calibration_task import sent  # noqa: F401 - the same spy on the task's messages

pytestmark = pytest.mark.django_db


def test_a_refresh_waits_while_another_of_the_same_judge_runs(standin, approver, sent,
                                                               django_capture_on_commit_callbacks):
    arr_world(approver)
    with django_capture_on_commit_callbacks(execute=True):
        first = request_calibration(user=approver)
    assert first.claim() == 1  # running in another worker
    with django_capture_on_commit_callbacks(execute=True):
        second = request_calibration(user=approver)
    assert second.pk != first.pk and sent == [first.pk, second.pk]
    calibrate_judge_task.apply(args=[second.pk], throw=True)
    second.refresh_from_db()
    assert second.status == JudgeCalibration.Status.QUEUED and second.attempts == 0


def test_the_waiting_refresh_is_sent_when_the_running_one_ends(standin, approver, sent, monkeypatch,
                                                                django_capture_on_commit_callbacks):
    arr_world(approver)
    with django_capture_on_commit_callbacks(execute=True):
        first = request_calibration(user=approver)
    requested = {}
    real = calibration.run_calibration

    def approval_meanwhile(*, calibration):  # an approval arrives while this refresh runs
        with django_capture_on_commit_callbacks(execute=True):
            requested["second"] = request_calibration(user=approver)
        calibrate_judge_task.apply(args=[requested["second"].pk], throw=True)  # its message: it waits
        return real(calibration=calibration)

    monkeypatch.setattr(calibration, "run_calibration", approval_meanwhile)
    calibrate_judge_task.apply(args=[first.pk], throw=True)
    first.refresh_from_db()
    second = JudgeCalibration.objects.get(pk=requested["second"].pk)
    assert first.status == JudgeCalibration.Status.SUCCEEDED, first.last_error
    assert second.status == JudgeCalibration.Status.QUEUED and second.attempts == 0
    assert sent == [first.pk, second.pk, second.pk]  # requested, then sent again as the first one ended
    monkeypatch.setattr(calibration, "run_calibration", real)
    calibrate_judge_task.apply(args=[second.pk], throw=True)
    second.refresh_from_db()
    assert second.status == JudgeCalibration.Status.SUCCEEDED, second.last_error
