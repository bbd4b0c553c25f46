"""The steps after the runs (insights, eval generation, the gate's judge, HALO) complete against an endpoint
that answers every other call 429 + Retry-After, and keep MODEL_MAX_CONCURRENT as measured at the stand-in."""

import threading
import time

import pytest

from loopsite.llm import model_limits
from reviews import generation, halo
from reviews.models import GateRun, GenerationJob
from reviews.tasks import run_gate_task
from runs.model_limits import BlockingEndpointLimiter, StatusFile, endpoint_key
from tests.reviews import halo_samples as samples

from .gate_builders import approved_suite, expected_passes, queued_gate
from .gen_builders import approved_cycle, run_chain

pytestmark = pytest.mark.django_db


@pytest.fixture
def limits(settings):
    import redis

    try:
        redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=1).ping()
    except Exception:  # noqa: BLE001
        pytest.skip(f"Redis is not reachable at {settings.REDIS_URL}")
    return settings


def test_insights_and_eval_generation_complete_under_429s(standin_rate_limited, limits, reviewer, approver):
    limits.MODEL_MAX_CONCURRENT = 1
    cycle, runs = approved_cycle(reviewer, approver)
    run_chain(cycle)
    insights_job, evals_job = generation.latest_chain(cycle)
    assert insights_job.status == evals_job.status == GenerationJob.Status.SUCCEEDED, (
        insights_job.last_error, evals_job.last_error)
    assert cycle.eval_cases.count() == len(runs)
    server = standin_rate_limited
    assert server.rate_limiter.refused == server.rate_limiter.served == 2  # each step's call refused once, then served
    assert server.peak_in_flight == 1


def test_the_gates_judge_waits_its_turn_and_out_429s(standin_rate_limited, limits, approver):
    """Another caller (say an agent run) holds one of the endpoint's two slots for the whole gate: the judge
    calls get the other one only, though promptfoo would judge two cases at once."""
    limits.MODEL_MAX_CONCURRENT = 2
    limits.GATE_CONCURRENCY = 8
    server = standin_rate_limited
    other = BlockingEndpointLimiter(redis_url=limits.REDIS_URL, key=endpoint_key(server.base_url), max_concurrent=2,
                                    lease_seconds=120)
    held = other.acquire(status=StatusFile(None))
    assert held is not None
    try:
        cycle, _, _ = approved_suite(approver)
        gate_run = queued_gate(cycle)
        run_gate_task.apply(args=[gate_run.pk], throw=True)
    finally:
        other.release(held)
    gate_run.refresh_from_db()
    assert gate_run.status == GateRun.Status.SUCCEEDED, gate_run.last_error
    assert gate_run.errors == 0 and gate_run.total == 5
    assert {row.eval_id: row.passed for row in gate_run.rows.all()} == expected_passes()
    assert server.rate_limiter.refused == server.rate_limiter.served >= 5  # every judge call refused once, then served
    assert server.peak_in_flight == 1


def test_halo_waits_for_a_slot_and_completes_under_429s(standin_rate_limited, limits, tmp_path):
    """Another caller holds the endpoint's only slot: HALO, started, makes no call until it is given back; then
    it completes, waiting out the 429s, one call at a time."""
    limits.MODEL_MAX_CONCURRENT = 1
    server = standin_rate_limited
    options = halo.options_from_settings(status_interval=0.5)
    assert options.model_limits == model_limits(lease_seconds=halo.HALO_CALL_TIMEOUT_SECONDS + 30)
    other = BlockingEndpointLimiter(redis_url=limits.REDIS_URL, key=endpoint_key(server.base_url), max_concurrent=1,
                                    lease_seconds=120)
    held = other.acquire(status=StatusFile(None))
    started, outcome = threading.Event(), {}

    def on_event(event: dict) -> None:
        if event.get("type") == "status":
            started.set()

    def run() -> None:
        path = halo.write_context(halo.build_context_lines(**samples.context_kwargs()), tmp_path / "context.jsonl")
        try:
            outcome["report"] = halo.run_halo(context_path=path, prompt=halo.render_report_prompt(), options=options,
                                              on_event=on_event, timeout=180, temp_root=tmp_path)
        except Exception as exc:  # noqa: BLE001 - reported below
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    try:
        assert started.wait(timeout=60), "HALO's child did not start"
        time.sleep(3)  # HALO's first model call comes about a second after it starts, unlimited
        calls_while_held = server.model_calls
    finally:
        other.release(held)
    thread.join(timeout=180)
    assert calls_while_held == 0
    assert "error" not in outcome and outcome["report"].strip()
    assert server.rate_limiter.refused > 0 and server.rate_limiter.served >= server.rate_limiter.refused
    assert server.peak_in_flight == 1
