"""reviews:halo (the HALO page, its polled panel, Run HALO) and reviews:halo-context."""

import json

import pytest
from django.urls import reverse
from django.utils import timezone

from reviews.models import Optimization, OptimizationEvent
from reviews.tasks import run_optimization_task

from .optimization_builders import finished_optimization, halo_cycle, queued_optimization

pytestmark = pytest.mark.django_db

HX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def cycle(approver):
    return halo_cycle(approver)


def test_it_shows_the_input_summary_before_halo_ran(client_for, reviewer, cycle):
    response = client_for(reviewer).get(reverse("reviews:halo", args=[cycle.pk]))
    assert response.status_code == 200
    html = response.content.decode()
    assert "HALO input summary" in html
    assert "<td>Human feedback</td><td class=\"num\">4</td>" in html
    assert "<td>Promptfoo row results</td><td class=\"num\">5</td>" in html
    assert "<td>SDK execution traces</td><td class=\"num\">5</td>" in html
    assert 'data-testid="halo-none"' in html
    assert 'data-testid="halo-form"' not in html  # reviewers cannot run HALO
    assert reverse("reviews:halo-context", args=[cycle.pk]) in html


def test_an_outsider_gets_403(client_for, outsider, cycle):
    client = client_for(outsider)
    assert client.get(reverse("reviews:halo", args=[cycle.pk])).status_code == 403
    assert client.get(reverse("reviews:halo-context", args=[cycle.pk])).status_code == 403


def test_a_reviewer_cannot_run_halo(client_for, reviewer, cycle):
    response = client_for(reviewer).post(reverse("reviews:halo", args=[cycle.pk]),
                                         {"maximum_depth": 1, "maximum_turns": 20, "maximum_parallel_subagents": 2})
    assert response.status_code == 403
    assert not Optimization.objects.exists()


def test_an_engineer_runs_halo_with_the_chosen_options(client_for, engineer, cycle, monkeypatch,
                                                       django_capture_on_commit_callbacks):
    sent = []
    monkeypatch.setattr(run_optimization_task, "delay", lambda pk: sent.append(pk))
    with django_capture_on_commit_callbacks(execute=True):
        response = client_for(engineer).post(reverse("reviews:halo", args=[cycle.pk]),
                                             {"maximum_depth": 0, "maximum_turns": 12, "maximum_parallel_subagents": 3},
                                             **HX)
    assert response.status_code == 200
    optimization = Optimization.objects.get(cycle=cycle)
    assert sent == [optimization.pk]
    assert (optimization.options["maximum_depth"], optimization.options["maximum_turns"],
            optimization.options["maximum_parallel_subagents"]) == (0, 12, 3)
    assert optimization.requested_by == engineer
    html = response.content.decode()
    assert 'id="halo-panel"' in html and 'hx-trigger="every 2s"' in html  # the panel polls while queued
    assert "Waiting for a worker" in html and "disabled" in html


def test_bad_options_are_refused_with_the_field_named(client_for, approver, cycle):
    response = client_for(approver).post(reverse("reviews:halo", args=[cycle.pk]),
                                         {"maximum_depth": 7, "maximum_turns": 20, "maximum_parallel_subagents": 2}, **HX)
    assert response.status_code == 200
    assert "Not started: fix the marked fields." in response.content.decode()
    assert "less than or equal to 3" in response.content.decode()
    assert not Optimization.objects.exists()


def test_a_second_run_while_one_is_active_is_refused(client_for, approver, cycle):
    queued_optimization(cycle)
    response = client_for(approver).post(reverse("reviews:halo", args=[cycle.pk]),
                                         {"maximum_depth": 1, "maximum_turns": 20, "maximum_parallel_subagents": 2}, **HX)
    assert "HALO is already running for this cycle" in response.content.decode()
    assert Optimization.objects.count() == 1


def test_the_panel_shows_live_progress_and_keeps_polling_while_running(client_for, reviewer, cycle):
    optimization = queued_optimization(cycle)
    assert optimization.claim()
    events = [
        ("status", {"elapsed": 2.0}),
        ("tool_call", {"name": "get_dataset_overview", "arguments": "{}", "agent": "root", "depth": 0}),
        ("tool_result", {"name": "get_dataset_overview", "chars": 812, "agent": "root", "depth": 0}),
        ("text", {"delta": "Reading the ", "agent": "root", "depth": 0}),
        ("text", {"delta": "gate rows.", "agent": "root", "depth": 0}),
        ("tool_call", {"name": "query_traces", "arguments": '{"filters": {"has_errors": true}}', "agent": "sub",
                       "depth": 1}),
    ]
    for seq, (kind, data) in enumerate(events, start=1):
        OptimizationEvent.objects.create(optimization=optimization, seq=seq, type=kind, data=data)
    response = client_for(reviewer).get(reverse("reviews:halo", args=[cycle.pk]), **HX)
    assert response.status_code == 200
    html = response.content.decode()
    assert 'hx-trigger="every 2s"' in html
    assert html.count('data-testid="tool-call"') == 2
    assert "→ 812 characters" in html
    assert "Reading the gate rows." in html  # consecutive text of one agent is joined
    assert 'data-testid="halo-elapsed"' in html and "2 tool calls" in html


def test_the_panel_stops_polling_once_finished(client_for, reviewer, cycle):
    finished_optimization(cycle, "## Executive summary\nDone.\n")
    response = client_for(reviewer).get(reverse("reviews:halo", args=[cycle.pk]), **HX)
    assert response.status_code == 286
    assert "every 2s" not in response.content.decode()


def test_missing_sections_are_named(client_for, reviewer, cycle):
    optimization = finished_optimization(cycle, "## Executive summary\nx\n",
                                         missing=["## Insights by feedback source", "## Machine-readable summary"])
    optimization.retried = True
    optimization.save(update_fields=["retried"])
    OptimizationEvent.objects.create(optimization=optimization, seq=1, type="retry",
                                     data={"missing": ["## Insights by feedback source"]})
    html = client_for(reviewer).get(reverse("reviews:halo", args=[cycle.pk])).content.decode()
    assert "lacks 2 required sections" in html
    assert "<code>## Insights by feedback source</code>" in html and "<code>## Machine-readable summary</code>" in html
    assert 'data-testid="retry-entry"' in html


def test_a_failure_is_shown_with_its_reason(client_for, engineer, cycle):
    finished_optimization(cycle, "", status=Optimization.Status.FAILED,
                          error="HALO failed: APIConnectionError: Connection error.")
    html = client_for(engineer).get(reverse("reviews:halo", args=[cycle.pk])).content.decode()
    assert 'data-testid="halo-failure"' in html
    assert "HALO failed: APIConnectionError: Connection error." in html
    assert "Re-run HALO" in html


def test_the_context_download_is_the_jsonl_halo_reads(client_for, reviewer, cycle):
    response = client_for(reviewer).get(reverse("reviews:halo-context", args=[cycle.pk]))
    assert response.status_code == 200
    assert response["Content-Disposition"] == f'attachment; filename="cycle-{cycle.pk}-halo_optimization_context.jsonl"'
    lines = [json.loads(line) for line in response.content.decode().splitlines()]
    assert len(lines) == 15 + 1 + 4 + 2 + 5 + 1 + 5
    assert sum(1 for line in lines if line["name"] == "eval_gate.result") == 5


def test_a_context_that_cannot_be_built_is_explained(client_for, reviewer, cycle):
    from runs.models import Span

    span = Span.objects.filter(run__cycles=cycle).first()
    span.data = {**span.data, "start_time": None}
    span.save(update_fields=["data"])
    response = client_for(reviewer).get(reverse("reviews:halo-context", args=[cycle.pk]))
    assert response.status_code == 409
    assert "Optimization context line 1" in response.content.decode()
    page = client_for(reviewer).get(reverse("reviews:halo", args=[cycle.pk])).content.decode()
    assert "The optimization context cannot be built" in page


def test_a_real_halo_failure_shows_quickly(client_for, engineer, cycle, settings, refused_url):
    """STANDIN_URL at a closed port and one allowed model failure: the page shows why, within seconds."""
    import time

    settings.STANDIN_IN_USE = True
    settings.STANDIN_URL = refused_url
    settings.HALO_MAX_LLM_FAILURES = 1
    optimization = queued_optimization(cycle, maximum_depth=0)
    started = time.monotonic()
    run_optimization_task.apply(args=[optimization.pk], throw=True)
    assert time.monotonic() - started < 60
    html = client_for(engineer).get(reverse("reviews:halo", args=[cycle.pk])).content.decode()
    assert 'data-testid="halo-failure"' in html and "HALO failed:" in html
    assert timezone.now() >= Optimization.objects.get().finished_at
