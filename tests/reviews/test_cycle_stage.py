"""Cycle badges derived from the pipeline's rows; the gate and HALO offered only when their inputs exist."""

import pytest
from django.urls import reverse

from reviews.models import Cycle, EvalCase, GateRun, GenerationJob, Optimization

from .builders import make_cycle, make_run
from .optimization_builders import finished_optimization, halo_cycle

pytestmark = pytest.mark.django_db


def stage_in(body: str) -> str:
    return body.split('data-testid="cycle-stage">')[1].split("<")[0]


def test_a_cycle_stored_as_generating_with_proposals_done_says_proposed(client_for, reviewer, approver):
    cycle = halo_cycle(approver, with_gate=False)
    Cycle.objects.filter(pk=cycle.pk).update(status=Cycle.Status.GENERATING)  # left behind by a lost step
    cycle.eval_cases.filter(eval_id=cycle.eval_cases.first().eval_id).update(status=EvalCase.Status.PROPOSED)
    body = client_for(reviewer).get(reverse("reviews:cycle-list")).content.decode()
    assert stage_in(body) == "Evals proposed: 1 to decide"
    assert "Generating evals" not in body


def test_after_the_gate_and_halo_the_badge_says_handoff_ready(client_for, reviewer, approver):
    cycle = halo_cycle(approver)  # stored status: proposed; every case approved; the gate succeeded
    client = client_for(reviewer)
    assert stage_in(client.get(reverse("reviews:cycle-list")).content.decode()) == "Gate done"
    finished_optimization(cycle, "# Handoff")
    assert stage_in(client.get(reverse("reviews:cycle-list")).content.decode()) == "Handoff ready"
    assert stage_in(client.get(cycle.get_absolute_url()).content.decode()) == "Handoff ready"


def test_working_steps_win(client_for, reviewer, approver):
    cycle = halo_cycle(approver)
    GenerationJob.objects.create(cycle=cycle, kind="insights", status="running")
    assert stage_in(client_for(reviewer).get(cycle.get_absolute_url()).content.decode()) == "Generating evals"
    Optimization.objects.create(cycle=cycle, status="queued")
    assert stage_in(client_for(reviewer).get(cycle.get_absolute_url()).content.decode()) == "HALO running"


def test_a_new_cycle_is_reviewing(client_for, reviewer):
    cycle = make_cycle(make_run())
    assert stage_in(client_for(reviewer).get(cycle.get_absolute_url()).content.decode()) == "Reviewing"


def test_halo_is_not_offered_without_approved_feedback(client_for, approver):
    cycle = make_cycle(make_run())
    client = client_for(approver)
    dashboard = client.get(reverse("reviews:cycle-dashboard", args=[cycle.pk])).content.decode()
    assert 'data-testid="rerun-halo"' not in dashboard and 'data-testid="rerun-gate"' not in dashboard
    assert "HALO waits for approved feedback" in dashboard and "The gate waits for approved evals" in dashboard
    page = client.get(reverse("reviews:halo", args=[cycle.pk])).content.decode()
    assert 'data-testid="run-halo"' not in page and 'data-testid="halo-waits"' in page
    response = client.post(reverse("reviews:halo", args=[cycle.pk]), {
        "from": "dashboard", "maximum_depth": 1, "maximum_turns": 20, "maximum_parallel_subagents": 2}, HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    assert "Not started: HALO waits for approved feedback" in response.content.decode()
    assert not Optimization.objects.exists()


def test_the_gate_is_not_started_without_approved_evals(client_for, engineer):
    cycle = make_cycle(make_run())
    response = client_for(engineer).post(reverse("reviews:dashboard-gate", args=[cycle.pk]), HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    assert "Not started: the gate waits for approved evals from this cycle." in response.content.decode()
    assert not GateRun.objects.exists()


def test_halo_waits_while_the_gate_is_judging(client_for, approver):
    cycle = halo_cycle(approver, with_gate=False)
    GateRun.objects.create(cycle=cycle, harness=cycle.harness, status=GateRun.Status.RUNNING)
    body = client_for(approver).get(reverse("reviews:cycle-dashboard", args=[cycle.pk])).content.decode()
    assert "HALO waits for the gate to finish." in body and 'data-testid="rerun-halo"' not in body
