"""The chain's Celery tasks: claim guards, double delivery, the heartbeat sweep."""

from datetime import timedelta

import pytest
from django.utils import timezone

from loopsite.tasks import sweep_stale_work
from reviews import generation
from reviews.models import Cycle, GenerationJob, Insight
from reviews.tasks import generate_evals_task, generate_insights_task

from .gen_builders import approved_cycle, no_broker

pytestmark = pytest.mark.django_db


@pytest.fixture
def job(reviewer, approver):
    cycle, _ = approved_cycle(reviewer, approver, count=2)
    return GenerationJob.objects.get(cycle=cycle)


@pytest.fixture
def no_model(monkeypatch):
    def refuse(**kwargs):
        raise AssertionError("the model must not be called")

    monkeypatch.setattr(generation, "_respond", refuse)


@pytest.mark.parametrize("status", ["running", "succeeded", "failed"])
def test_a_job_that_is_not_queued_is_left_alone(job, no_model, status):
    GenerationJob.objects.filter(pk=job.pk).update(status=status, attempts=1)
    generate_insights_task.apply(args=[job.pk], throw=True)
    job.refresh_from_db()
    assert job.status == status and job.attempts == 1


def test_a_missing_job_or_the_wrong_task_does_nothing(job, no_model):
    generate_insights_task.apply(args=[job.pk + 1000], throw=True)
    generate_evals_task.apply(args=[job.pk], throw=True)  # an insights job is not the evals task's to run
    job.refresh_from_db()
    assert job.status == GenerationJob.Status.QUEUED and job.attempts == 0


def test_a_second_delivery_runs_nothing_twice(standin, job, monkeypatch, django_capture_on_commit_callbacks):
    with no_broker(monkeypatch) as sent, django_capture_on_commit_callbacks(execute=True):
        generate_insights_task.apply(args=[job.pk], throw=True)
        generate_insights_task.apply(args=[job.pk], throw=True)
    job.refresh_from_db()
    assert job.status == GenerationJob.Status.SUCCEEDED and job.attempts == 1
    assert Insight.objects.filter(job=job).count() == 2
    evals = GenerationJob.objects.get(kind=GenerationJob.Kind.EVALS)
    assert sent == [("reviews.generate_evals", evals.pk)]  # the next step, queued once on commit


def test_results_of_a_job_swept_away_meanwhile_are_discarded(standin, job, monkeypatch):
    real = generation._respond

    def slow_worker(**kwargs):
        text = real(**kwargs)
        GenerationJob.objects.filter(pk=kwargs["job"].pk).update(status=GenerationJob.Status.QUEUED)  # the sweep
        return text

    monkeypatch.setattr(generation, "_respond", slow_worker)
    generate_insights_task.apply(args=[job.pk], throw=True)
    assert not Insight.objects.exists()
    assert not GenerationJob.objects.filter(kind=GenerationJob.Kind.EVALS).exists()
    job.refresh_from_db()
    assert job.status == GenerationJob.Status.QUEUED


def _stale(job, *, attempts: int, seconds: int = 600):
    old = timezone.now() - timedelta(seconds=seconds)
    GenerationJob.objects.filter(pk=job.pk).update(status=GenerationJob.Status.RUNNING, attempts=attempts,
                                                   started_at=old, heartbeat_at=old)


def test_the_sweep_requeues_a_job_whose_worker_vanished(job, monkeypatch, django_capture_on_commit_callbacks):
    _stale(job, attempts=1)
    with no_broker(monkeypatch) as sent, django_capture_on_commit_callbacks(execute=True):
        counts = GenerationJob.sweep()
    assert counts == {"requeued": 1, "failed": 0, "reenqueued": 0}
    job.refresh_from_db()
    assert job.status == GenerationJob.Status.QUEUED
    assert job.last_error == "Worker lost during attempt 1; queued again."
    assert sent == [("reviews.generate_insights", job.pk)]


def test_the_sweep_fails_a_job_after_its_last_attempt(job, monkeypatch, settings, django_capture_on_commit_callbacks):
    _stale(job, attempts=settings.RUN_MAX_ATTEMPTS)
    with no_broker(monkeypatch) as sent, django_capture_on_commit_callbacks(execute=True):
        counts = GenerationJob.sweep()
    assert counts["failed"] == 1 and sent == []
    job.refresh_from_db()
    assert job.status == GenerationJob.Status.FAILED and job.last_error.startswith("Worker lost: no heartbeat")
    assert Cycle.objects.get(pk=job.cycle_id).status == Cycle.Status.REVIEWED


def test_the_sweep_leaves_a_beating_job_alone(job, monkeypatch, django_capture_on_commit_callbacks):
    _stale(job, attempts=1, seconds=5)
    with no_broker(monkeypatch) as sent, django_capture_on_commit_callbacks(execute=True):
        assert GenerationJob.sweep() == {"requeued": 0, "failed": 0, "reenqueued": 0}
    assert sent == []


def test_the_sweep_sends_a_lost_queued_message_again(job, monkeypatch, django_capture_on_commit_callbacks):
    GenerationJob.objects.filter(pk=job.pk).update(heartbeat_at=timezone.now() - timedelta(hours=1))
    with no_broker(monkeypatch) as sent, django_capture_on_commit_callbacks(execute=True):
        sweep_stale_work.apply(throw=True)
    assert sent == [("reviews.generate_insights", job.pk)]
    job.refresh_from_db()
    assert job.status == GenerationJob.Status.QUEUED and job.heartbeat_at > timezone.now() - timedelta(minutes=1)


def test_a_bug_leaves_a_visible_failed_job_not_a_stuck_one(job, monkeypatch):
    monkeypatch.setattr(generation, "trace_record", lambda run: 1 / 0)
    generate_insights_task.apply(args=[job.pk], throw=True)
    job.refresh_from_db()
    assert job.status == GenerationJob.Status.FAILED
    assert job.last_error == "Unexpected error (ZeroDivisionError): division by zero"
