"""runs.tasks.execute_run: claims the row, then hands it to the runner; also through a real worker."""

import tempfile
import time
from pathlib import Path
from unittest import mock

import pytest

from loopsite.standin.server import serve_in_thread
from runs import work
from runs.models import Question, Run
from runs.tasks import execute_run
from tests.fixtures_worker import wait_for


def test_it_claims_a_queued_run_and_runs_it(make_run):
    run = make_run()
    with mock.patch("runs.runner.execute_run") as run_agent:
        execute_run.apply(args=[run.pk], throw=True)
    (call,) = run_agent.call_args_list
    claimed = call.kwargs["run"]
    assert claimed.pk == run.pk
    assert (claimed.status, claimed.attempts) == (Run.Status.RUNNING, 1)
    assert claimed.heartbeat_at is not None


def test_a_second_delivery_does_nothing(make_run):
    run = make_run(claim=True)
    with mock.patch("runs.runner.execute_run") as run_agent:
        execute_run.apply(args=[run.pk], throw=True)
    run_agent.assert_not_called()
    run.refresh_from_db()
    assert run.attempts == 1


def test_a_finished_run_is_not_run_again(make_run):
    run = make_run()
    Run.objects.filter(pk=run.pk).update(status=Run.Status.SUCCEEDED)
    with mock.patch("runs.runner.execute_run") as run_agent:
        execute_run.apply(args=[run.pk], throw=True)
    run_agent.assert_not_called()


def test_a_missing_run_is_ignored(db):
    with mock.patch("runs.runner.execute_run") as run_agent:
        execute_run.apply(args=[987654], throw=True)
    run_agent.assert_not_called()


# -- through a real Celery worker (Redis, prefork, the stand-in model) ---------

def rows(batch_id):
    return list(Run.objects.filter(batch_id=batch_id).order_by("pk"))


def agent_processes_of(run_id: int) -> list[int]:
    """Pids of live agent child processes working on `run_id` (their HOME is the run's scratch dir,
    .../run-<id>/attempt-<n>: loopsite.work.WorkItem.scratch_dir)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = (proc / "environ").read_bytes()
        except OSError:
            continue
        if f"/run-{run_id}/attempt-".encode() in environ and b"HOME=" in environ:
            pids.append(int(proc.name))
    return pids


@pytest.fixture
def slow_standin(settings):
    """A stand-in that takes 0.5 s per model call, so a run lasts long enough to be interrupted."""
    server, thread = serve_in_thread("127.0.0.1", 0, delay=0.5)
    settings.STANDIN_IN_USE = True
    settings.STANDIN_URL = server.base_url
    yield server.base_url
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.mark.django_db(transaction=True)
def test_a_batch_runs_in_parallel_on_a_real_worker(sample, standin, celery_worker_factory):
    celery_worker_factory(concurrency=2)
    questions = list(Question.objects.filter(bank_index__in=[0, 2]).order_by("bank_index"))
    batch = work.start_batch(harness=sample["harness"], dataroom=sample["dataroom"], questions=questions, user=None)

    done = wait_for(lambda: (r := rows(batch.pk)) and all(not run.is_active for run in r) and r,
                    timeout=90, message="both runs to finish")
    assert [(run.status, run.last_error) for run in done] == [(Run.Status.SUCCEEDED, "")] * 2
    for run in done:
        assert run.attempts == 1
        assert run.artifacts.count() >= 6 and run.spans.count() > 10
        assert run.output_contract["passed"] is True
    first, second = done
    assert first.started_at < second.finished_at and second.started_at < first.finished_at, "not in parallel"


@pytest.mark.django_db(transaction=True)
def test_a_killed_worker_loses_no_run(sample, slow_standin, celery_worker_factory, settings):
    worker = celery_worker_factory(concurrency=1)
    batch = work.start_batch(harness=sample["harness"], dataroom=sample["dataroom"],
                             questions=[Question.objects.get(bank_index=0)], user=None)
    (run,) = rows(batch.pk)
    wait_for(lambda: agent_processes_of(run.pk), timeout=60, message="the agent to start")
    time.sleep(1.5)
    worker.kill()

    run.refresh_from_db()
    assert (run.status, run.attempts) == (Run.Status.RUNNING, 1)
    # The agent process dies with its worker instead of running on unobserved.
    wait_for(lambda: not agent_processes_of(run.pk), timeout=10, message="the orphaned agent to exit")

    # Once the heartbeat is stale, the sweep queues the run again ...
    settings.WORK_STALE_SECONDS = 0
    assert Run.sweep()["requeued"] == 1
    run.refresh_from_db()
    assert run.status == Run.Status.QUEUED

    # ... and the next worker finishes it.
    celery_worker_factory(concurrency=1)
    wait_for(lambda: Run.objects.get(pk=run.pk).status != Run.Status.QUEUED and
             not Run.objects.get(pk=run.pk).is_active, timeout=90, message="the retried run to finish")
    run.refresh_from_db()
    assert (run.status, run.attempts, run.last_error) == (Run.Status.SUCCEEDED, 2, "")
    assert run.spans.count() > 10
    assert run.spans.filter(span_id="").count() == 0
    # The killed attempt's temp dir was removed by the retry.
    assert not list(Path(tempfile.gettempdir()).glob(f"loopsite-run-{run.pk}-{run.trace_id[:12]}-*"))


@pytest.fixture
def rate_limited_standin(settings):
    """A stand-in that answers every other model call 429 with Retry-After (faults.RATE_LIMITED)."""
    server, thread = serve_in_thread("127.0.0.1", 0, fault="rate-limited")
    settings.STANDIN_IN_USE = True
    settings.STANDIN_URL = server.base_url
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.mark.django_db(transaction=True)
def test_a_batch_completes_against_a_rate_limited_model(sample, rate_limited_standin, celery_worker_factory,
                                                        settings):
    # Runs run in threads, at most two model calls at once (counted in Redis); every other call is a 429.
    celery_worker_factory(concurrency=4, env={"MODEL_MAX_CONCURRENT": "2", "REDIS_URL": settings.CELERY_BROKER_URL})
    questions = list(Question.objects.order_by("bank_index")[:4])
    batch = work.start_batch(harness=sample["harness"], dataroom=sample["dataroom"], questions=questions, user=None)

    waiting_seen: set[int] = set()

    def finished():
        current = rows(batch.pk)
        waiting_seen.update(run.pk for run in current if run.status == Run.Status.RUNNING and run.waiting_for_model)
        return all(not run.is_active for run in current) and current

    done = wait_for(finished, timeout=240, interval=0.2, message="the rate-limited batch to finish")
    assert [(run.status, run.last_error) for run in done] == [(Run.Status.SUCCEEDED, "")] * 4
    assert all(run.attempts == 1 and run.output_contract["passed"] is True for run in done)
    assert not any(run.waiting_for_model for run in done)
    assert waiting_seen, "no run was ever shown waiting for the model"
    assert rate_limited_standin.rate_limiter.refused >= rate_limited_standin.rate_limiter.served > 0
