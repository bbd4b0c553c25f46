"""reviews:cycle-dashboard (and its panel on the cycle page), reviews:dashboard-gate."""

import re

import pytest
from django.urls import reverse

from reviews.models import EvalCase, GateRun, Optimization
from reviews.tasks import run_gate_task, run_optimization_task
from runs.models import Run

from .builders import make_cycle, make_run
from .gen_builders import approve, reviewed_cycle
from .optimization_builders import approve_feedback, finished_optimization, halo_cycle, queued_optimization

pytestmark = pytest.mark.django_db

HX = {"HTTP_HX_REQUEST": "true"}


def steps(html: str) -> dict[str, str]:
    return dict(re.findall(r'data-testid="step-([a-z]+)" data-state="([a-z]+)"', html))


def text_of(html: str, testid: str) -> str:
    match = re.search(rf'data-testid="{testid}">([^<]*)<', html)
    return match.group(1).strip() if match else ""


def dashboard(client, cycle, **extra):
    return client.get(reverse("reviews:cycle-dashboard", args=[cycle.pk]), **extra)


def test_runs_still_going_are_waited_for_and_the_panel_polls(client_for, reviewer):
    runs = [make_run() for _ in range(3)]
    Run.objects.filter(pk__in=[runs[0].pk, runs[1].pk]).update(status=Run.Status.RUNNING, finished_at=None)
    cycle = make_cycle(*runs)
    response = dashboard(client_for(reviewer), cycle, **HX)
    assert response.status_code == 200
    html = response.content.decode()
    assert steps(html) == {"runs": "active", "feedback": "waiting", "insights": "waiting", "proposals": "waiting",
                           "approved": "waiting", "gate": "waiting", "halo": "waiting", "handoff": "waiting"}
    assert text_of(html, "counts-runs") == "1/3 done"
    assert text_of(html, "waiting-runs") == "waiting for 2 runs to finish"
    assert text_of(html, "waiting-feedback") == "waiting for 3 runs to be reviewed"
    assert text_of(html, "waiting-insights") == "waiting for every run to be approved"
    assert 'hx-trigger="every 2s"' in html


def test_feedback_waits_for_approvals(client_for, reviewer, approver, monkeypatch):
    from reviews.tasks import generate_insights_task

    monkeypatch.setattr(generate_insights_task, "delay", lambda pk: None)
    cycle, runs = reviewed_cycle(reviewer, count=5)
    for run in runs[:3]:
        approve(cycle, run, approver)
    html = dashboard(client_for(reviewer), cycle).content.decode()
    assert steps(html)["feedback"] == "active"
    assert text_of(html, "counts-feedback") == "5 reviewed · 3 approved · 5 total"
    assert text_of(html, "waiting-feedback") == "waiting for 2 runs to be approved"
    assert steps(html)["runs"] == "done"


def test_undecided_proposals_hold_the_gate(client_for, reviewer, approver):
    cycle = halo_cycle(approver, with_gate=False)
    EvalCase.objects.filter(eval_id__in=["eval-arr", "eval-soc2"]).update(status=EvalCase.Status.PROPOSED)
    html = dashboard(client_for(reviewer), cycle).content.decode()
    found = steps(html)
    assert found["feedback"] == "waiting"  # four of the five runs have approved feedback
    assert found["insights"] == "done" and found["proposals"] == "done"
    assert found["approved"] == "active"
    assert text_of(html, "counts-approved") == "3 approved · 0 rejected · 2 to decide"
    assert text_of(html, "waiting-approved") == "waiting for 2 proposals to be decided"
    assert text_of(html, "waiting-gate") == "waiting for 2 proposals to be decided"
    assert text_of(html, "waiting-halo") == "waiting for the gate to finish"


def test_a_finished_cycle_shows_every_step_done_and_stops_polling(client_for, reviewer, approver):
    cycle = halo_cycle(approver)
    approve_feedback(cycle, cycle.runs.get(label="trace-05"), approver, {  # now every run is approved
        "summary": "Refuse official NRR.", "theme": "unsupported_metrics",
        "required_observations": ["Mark official NRR unsupported"], "prohibited_claims": []})
    optimization = finished_optimization(cycle, "## Executive summary\nDone.\n", missing=["## Machine-readable summary"])
    response = dashboard(client_for(reviewer), cycle, **HX)
    assert response.status_code == 286
    html = response.content.decode()
    assert set(steps(html).values()) == {"done"}, steps(html)
    assert text_of(html, "counts-gate") == "3 passed · 2 failed of 5"
    assert text_of(html, "counts-handoff") == "6/7 sections"
    assert text_of(html, "detail-handoff") == "missing: Machine-readable summary"
    assert reverse("reviews:handoff", args=[optimization.pk]) in html
    assert reverse("reviews:halo", args=[cycle.pk]) in html
    assert 'hx-trigger="every 2s"' not in html


def test_a_running_halo_and_a_failed_gate(client_for, reviewer, approver):
    cycle = halo_cycle(approver)
    GateRun.objects.create(cycle=cycle, harness=cycle.harness, status=GateRun.Status.FAILED,
                           last_error="The judge did not answer.")
    html = dashboard(client_for(reviewer), cycle).content.decode()
    assert steps(html)["gate"] == "failed" and "The judge did not answer." in html
    assert text_of(html, "waiting-halo").startswith("waiting for the gate to pass")
    optimization = queued_optimization(cycle)
    assert optimization.claim()
    response = dashboard(client_for(reviewer), cycle, **HX)
    assert response.status_code == 200 and steps(response.content.decode())["halo"] == "active"


def test_the_cycle_page_includes_the_dashboard(client_for, reviewer, approver):
    cycle = halo_cycle(approver)
    html = client_for(reviewer).get(reverse("reviews:cycle-detail", args=[cycle.pk])).content.decode()
    assert 'data-testid="dashboard"' in html and 'data-testid="step-halo"' in html
    assert reverse("reviews:cycle-dashboard", args=[cycle.pk]) in html


def test_only_engineers_and_approvers_get_the_buttons(client_for, reviewer, engineer, approver):
    cycle = halo_cycle(approver)
    html = dashboard(client_for(reviewer), cycle).content.decode()
    assert 'data-testid="rerun-gate"' not in html and 'data-testid="rerun-halo"' not in html
    html = dashboard(client_for(engineer), cycle).content.decode()
    assert 'data-testid="rerun-gate"' in html and 'data-testid="rerun-halo"' in html


def test_rerun_gate_queues_a_gate_run(client_for, engineer, approver, monkeypatch, django_capture_on_commit_callbacks):
    sent = []
    monkeypatch.setattr(run_gate_task, "delay", lambda pk: sent.append(pk))
    cycle = halo_cycle(approver)
    with django_capture_on_commit_callbacks(execute=True):
        response = client_for(engineer).post(reverse("reviews:dashboard-gate", args=[cycle.pk]), **HX)
    assert response.status_code == 200
    queued = GateRun.objects.get(cycle=cycle, status=GateRun.Status.QUEUED)
    assert sent == [queued.pk]
    html = response.content.decode()
    assert steps(html)["gate"] == "active" and 'hx-trigger="every 2s"' in html
    assert 'data-testid="rerun-gate"' not in html  # not while it is active


def test_run_halo_from_the_dashboard_answers_the_dashboard(client_for, approver, monkeypatch,
                                                           django_capture_on_commit_callbacks):
    sent = []
    monkeypatch.setattr(run_optimization_task, "delay", lambda pk: sent.append(pk))
    cycle = halo_cycle(approver)
    with django_capture_on_commit_callbacks(execute=True):
        response = client_for(approver).post(reverse("reviews:halo", args=[cycle.pk]), {
            "from": "dashboard", "maximum_depth": 1, "maximum_turns": 20, "maximum_parallel_subagents": 2}, **HX)
    assert response.status_code == 200
    assert 'id="dashboard"' in response.content.decode()
    assert sent == [Optimization.objects.get(cycle=cycle).pk]


def test_reviewers_cannot_rerun_and_outsiders_cannot_look(client_for, reviewer, outsider, approver):
    cycle = halo_cycle(approver)
    assert client_for(reviewer).post(reverse("reviews:dashboard-gate", args=[cycle.pk])).status_code == 403
    assert not GateRun.objects.filter(status=GateRun.Status.QUEUED).exists()
    assert dashboard(client_for(outsider), cycle).status_code == 403
