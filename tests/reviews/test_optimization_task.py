"""The HALO task: a run against the stand-in, missing sections, failures, the sweep."""

import time
from datetime import timedelta

import pytest
from django.utils import timezone

from reviews import halo, optimization as optimization_module
from reviews.models import Optimization
from reviews.optimization import run_optimization
from reviews.tasks import run_optimization_task

from .optimization_builders import halo_cycle, queued_optimization

pytestmark = pytest.mark.django_db


def test_a_halo_run_stores_the_handoff_the_events_and_the_input_summary(approver, standin, settings):
    settings.HALO_MAXIMUM_DEPTH = 1
    cycle = halo_cycle(approver)
    optimization = queued_optimization(cycle, approver)
    run_optimization_task.apply(args=[optimization.pk], throw=True)
    optimization.refresh_from_db()
    assert optimization.status == Optimization.Status.SUCCEEDED, optimization.last_error
    assert optimization.attempts == 1 and optimization.finished_at is not None
    assert halo.check_sections(optimization.handoff) == []
    assert optimization.handoff.startswith("## Executive summary")
    assert "**Eval gate: failed** — 3 of 5 passed, 2 failed." in optimization.handoff
    assert optimization.report.endswith(optimization.handoff.strip()) or optimization.handoff.strip() in optimization.report
    assert optimization.missing_sections == [] and optimization.retried is False
    assert optimization.model_name == settings.OPENAI_HALO_MODEL and optimization.endpoint == standin
    assert {row["signal"]: row["count"] for row in optimization.context_stats}["Promptfoo row results"] == 5
    events = list(optimization.events.all())
    assert [event.seq for event in events] == list(range(1, len(events) + 1))
    types = [event.type for event in events]
    assert types[0] == "status" and types[-1] == "report"
    calls = [event.data["name"] for event in events if event.type == "tool_call"]
    assert calls[:2] == ["get_dataset_overview", "call_subagent"]
    assert "text" in types
    assert events[-1].data["chars"] == len(optimization.report)  # the report itself is not copied into events


def test_a_second_delivery_does_nothing(approver, monkeypatch):
    cycle = halo_cycle(approver)
    optimization = queued_optimization(cycle)
    Optimization.objects.filter(pk=optimization.pk).update(status=Optimization.Status.SUCCEEDED)
    called = []
    monkeypatch.setattr(optimization_module, "run_optimization", lambda **kw: called.append(kw))
    run_optimization_task.apply(args=[optimization.pk], throw=True)
    assert called == []


INCOMPLETE = """Preamble from HALO.

## Executive summary
Good.

## Top 3 changes to implement first
1. Roll up.

## Ranked recommendation table
| Rank | Recommendation |
|---|---|

## Supporting diagnosis and evidence
Evidence.

## Detailed recommendations
Details.

## Machine-readable summary
```json
{"top_priorities": []}
```
"""


def test_sections_still_missing_after_the_re_prompt_are_stored(approver, monkeypatch):
    prompts = []

    def fake_run_halo(*, context_path, prompt, options, on_event=None, timeout=600.0, history=None, temp_root=None):
        prompts.append(prompt)
        on_event({"type": "status", "elapsed": 0.1})
        on_event({"type": "tool_call", "name": "get_dataset_overview", "arguments": "{}", "agent": "root", "depth": 0})
        on_event({"type": "report", "text": INCOMPLETE, "elapsed": 0.2})
        return INCOMPLETE

    monkeypatch.setattr(halo, "run_halo", fake_run_halo)
    cycle = halo_cycle(approver)
    optimization = queued_optimization(cycle)
    run_optimization_task.apply(args=[optimization.pk], throw=True)
    optimization.refresh_from_db()
    assert len(prompts) == 2 and "## Insights by feedback source" in prompts[1]
    assert optimization.status == Optimization.Status.SUCCEEDED
    assert optimization.missing_sections == ["## Insights by feedback source"]
    assert optimization.retried is True
    assert optimization.handoff.startswith("## Executive summary")
    retry = optimization.events.get(type="retry")
    assert retry.data == {"missing": ["## Insights by feedback source"]}


def test_an_unreachable_model_fails_quickly_with_the_reason(approver, settings, refused_url):
    settings.STANDIN_IN_USE = True
    settings.STANDIN_URL = refused_url
    settings.HALO_MAX_LLM_FAILURES = 1
    cycle = halo_cycle(approver)
    optimization = queued_optimization(cycle, maximum_depth=0)
    started = time.monotonic()
    run_optimization_task.apply(args=[optimization.pk], throw=True)
    seconds = time.monotonic() - started
    optimization.refresh_from_db()
    assert optimization.status == Optimization.Status.FAILED
    assert optimization.last_error.startswith("HALO failed:")
    assert "Connection" in optimization.last_error or "connect" in optimization.last_error
    assert optimization.handoff == "" and optimization.finished_at is not None
    assert optimization.events.filter(type="error").exists()
    assert seconds < 60


def test_a_context_that_cannot_be_built_fails_with_the_line(approver):
    from runs.models import Span

    cycle = halo_cycle(approver)
    span = Span.objects.filter(run__cycles=cycle).first()
    span.data = {**span.data, "span_id": None}
    span.save(update_fields=["data"])
    optimization = queued_optimization(cycle)
    run_optimization_task.apply(args=[optimization.pk], throw=True)
    optimization.refresh_from_db()
    assert optimization.status == Optimization.Status.FAILED
    assert optimization.last_error.startswith("The optimization context could not be built: Optimization context line 1")


def test_the_sweep_requeues_a_lost_worker_then_fails_it(approver, settings, monkeypatch):
    sent = []
    monkeypatch.setattr(optimization_module, "enqueue", lambda optimization: sent.append(optimization.pk))
    settings.RUN_MAX_ATTEMPTS = 2
    cycle = halo_cycle(approver)
    optimization = queued_optimization(cycle)
    assert optimization.claim()
    old = timezone.now() - timedelta(seconds=settings.WORK_STALE_SECONDS + 5)
    Optimization.objects.filter(pk=optimization.pk).update(heartbeat_at=old)
    assert Optimization.sweep()["requeued"] == 1
    optimization.refresh_from_db()
    assert optimization.status == Optimization.Status.QUEUED and sent == [optimization.pk]
    assert optimization.claim() and optimization.attempts == 2
    Optimization.objects.filter(pk=optimization.pk).update(heartbeat_at=old)
    assert Optimization.sweep()["failed"] == 1
    optimization.refresh_from_db()
    assert optimization.status == Optimization.Status.FAILED
    assert "Re-run HALO" in optimization.last_error


def test_the_sweep_re_enqueues_a_queued_row_whose_message_was_lost(approver, monkeypatch):
    sent = []
    monkeypatch.setattr(optimization_module, "enqueue", lambda optimization: sent.append(optimization.pk))
    cycle = halo_cycle(approver)
    optimization = queued_optimization(cycle)
    Optimization.objects.filter(pk=optimization.pk).update(heartbeat_at=timezone.now() - timedelta(minutes=10))
    assert Optimization.sweep() == {"requeued": 0, "failed": 0, "reenqueued": 1}
    assert Optimization.sweep()["reenqueued"] == 0
    assert sent == [optimization.pk]


def test_a_row_swept_away_while_halo_runs_keeps_nothing(approver, monkeypatch):
    def fake_run_halo(*, context_path, prompt, options, on_event=None, timeout=600.0, history=None, temp_root=None):
        Optimization.objects.filter(pk=optimization.pk).update(status=Optimization.Status.QUEUED)
        return "## Executive summary\nx\n"

    monkeypatch.setattr(halo, "run_halo", fake_run_halo)
    cycle = halo_cycle(approver)
    optimization = queued_optimization(cycle)
    assert optimization.claim()
    run_optimization(optimization=optimization)
    optimization.refresh_from_db()
    assert optimization.status == Optimization.Status.QUEUED and optimization.report == ""
