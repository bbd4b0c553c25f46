"""The gate page (cases × runs, totals, log, live status, Re-run) and the gate panel on the cycle page."""

import pytest
from django.urls import reverse

from reviews.models import GateRun
from reviews.tasks import run_gate_task
from runs.models import Run

from .gate_builders import approved_suite, queued_gate

pytestmark = pytest.mark.django_db

HTMX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def finished(standin, approver):
    cycle, runs, cases = approved_suite(approver)
    Run.objects.filter(pk=runs[0].pk).update(final_answer="Runway is 11 months. <script>alert(1)</script>")
    gate_run = queued_gate(cycle)
    run_gate_task.apply(args=[gate_run.pk], throw=True)
    gate_run.refresh_from_db()
    return gate_run, runs, cases


def test_it_shows_every_case_with_its_run_result_score_and_reason(client_for, reviewer, finished):
    gate_run, runs, cases = finished
    body = client_for(reviewer).get(reverse("reviews:gate-detail", args=[gate_run.pk])).content.decode()
    assert 'data-status="succeeded"' in body and 'hx-trigger="every 2s"' not in body
    assert "<strong>2 of 5 passed</strong>" in body
    for case, run in zip(cases, runs, strict=True):
        row = body.split(f'data-testid="gate-row-{case.pk}"')[1].split("</tr>")[0]
        assert f'<a href="{case.get_absolute_url()}">' in row
        assert f'<a href="{run.get_absolute_url()}">#{run.pk} {run.label}</a>' in row
    soc2 = body.split(f'data-testid="gate-row-{cases[3].pk}"')[1].split("</tr>")[0]
    assert '<span class="badge badge-fail">fail</span>' in soc2
    assert "Expected output to not contain &quot;SOC 2 complete&quot;" in soc2  # escaped
    assert 'data-testid="gate-log"' in body and "Results:" in body
    assert 'data-testid="gate-rerun"' not in body  # reviewers do not re-run


def test_model_and_answer_text_is_escaped(client_for, reviewer, finished, approver):
    gate_run, _, _ = finished
    gate_run.rows.filter(eval_id="runway-financing-risk").update(reason="<b>bold</b> claim")
    body = client_for(reviewer).get(reverse("reviews:gate-detail", args=[gate_run.pk])).content.decode()
    assert "<b>bold</b>" not in body and "&lt;b&gt;bold&lt;/b&gt; claim" in body


def test_engineers_can_rerun_a_finished_gate(client_for, engineer, finished, django_capture_on_commit_callbacks):
    gate_run, _, _ = finished
    url = reverse("reviews:gate-rerun", args=[gate_run.pk])
    with django_capture_on_commit_callbacks() as callbacks:
        response = client_for(engineer).post(url, **HTMX)
    assert response.status_code == 200 and len(callbacks) == 1
    body = response.content.decode()
    assert body.lstrip().startswith('<div id="gate-body"') and 'hx-trigger="every 2s"' in body
    assert 'data-status="queued"' in body
    gate_run.refresh_from_db()
    assert gate_run.status == GateRun.Status.QUEUED


def test_rerun_needs_the_engineer_or_approver_role(client_for, reviewer, finished):
    gate_run, _, _ = finished
    assert client_for(reviewer).post(reverse("reviews:gate-rerun", args=[gate_run.pk])).status_code == 403


def test_it_rejects_get_on_rerun(client_for, engineer, finished):
    gate_run, _, _ = finished
    assert client_for(engineer).get(reverse("reviews:gate-rerun", args=[gate_run.pk])).status_code == 405


def test_the_polled_status_keeps_polling_while_active_and_stops_when_done(client_for, reviewer, approver):
    cycle, _, _ = approved_suite(approver)
    gate_run = queued_gate(cycle)
    url = reverse("reviews:gate-detail", args=[gate_run.pk])
    response = client_for(reviewer).get(url, **HTMX)
    assert response.status_code == 200 and 'hx-trigger="every 2s"' in response.content.decode()
    GateRun.objects.filter(pk=gate_run.pk).update(status=GateRun.Status.FAILED, last_error="promptfoo is not installed")
    response = client_for(reviewer).get(url, **HTMX)
    assert response.status_code == 286
    body = response.content.decode()
    assert 'hx-trigger' not in body and "<strong>Failed:</strong> promptfoo is not installed" in body


def test_a_failed_gate_shows_its_reason_and_rerun_to_approvers(client_for, approver):
    cycle, _, _ = approved_suite(approver)
    gate_run = queued_gate(cycle)
    GateRun.objects.filter(pk=gate_run.pk).update(status=GateRun.Status.FAILED, last_error="The judge did not answer.")
    body = client_for(approver).get(reverse("reviews:gate-detail", args=[gate_run.pk])).content.decode()
    assert 'data-testid="gate-error"' in body and "The judge did not answer." in body
    assert 'data-testid="gate-rerun"' in body


def test_outsiders_cannot_see_gate_runs(client_for, outsider, approver):
    cycle, _, _ = approved_suite(approver)
    gate_run = queued_gate(cycle)
    assert client_for(outsider).get(reverse("reviews:gate-detail", args=[gate_run.pk])).status_code == 403


def test_the_cycle_page_has_the_gate_panel_with_a_run_button(client_for, engineer, reviewer, approver,
                                                              django_capture_on_commit_callbacks):
    cycle, _, _ = approved_suite(approver)
    page = client_for(engineer).get(cycle.get_absolute_url()).content.decode()
    assert 'data-testid="gate-panel"' in page and 'data-testid="run-gate"' in page
    assert 'data-testid="run-gate"' not in client_for(reviewer).get(cycle.get_absolute_url()).content.decode()

    with django_capture_on_commit_callbacks() as callbacks:
        response = client_for(engineer).post(reverse("reviews:cycle-gate", args=[cycle.pk]), **HTMX)
    gate_run = GateRun.objects.get(cycle=cycle)
    assert len(callbacks) == 1 and gate_run.status == GateRun.Status.QUEUED and gate_run.requested_by == engineer
    body = response.content.decode()
    assert body.lstrip().startswith('<section id="gate"') and 'hx-trigger="every 2s"' in body
    assert f'href="{gate_run.get_absolute_url()}"' in body and 'data-testid="run-gate"' not in body

    # Idempotent while one is queued: the same gate run comes back.
    with django_capture_on_commit_callbacks():
        client_for(engineer).post(reverse("reviews:cycle-gate", args=[cycle.pk]))
    assert GateRun.objects.filter(cycle=cycle).count() == 1


def test_the_cycle_gate_url_without_htmx_goes_to_the_latest_gate_page(client_for, reviewer, approver):
    cycle, _, _ = approved_suite(approver)
    assert client_for(reviewer).get(reverse("reviews:cycle-gate", args=[cycle.pk]))["Location"] == cycle.get_absolute_url()
    gate_run = queued_gate(cycle)
    assert client_for(reviewer).get(reverse("reviews:cycle-gate", args=[cycle.pk]))["Location"] == gate_run.get_absolute_url()


def test_scores_are_rounded(client_for, reviewer, finished):
    gate_run, _, _ = finished
    gate_run.rows.filter(eval_id="runway-financing-risk").update(score=0.8889999999999999)
    body = client_for(reviewer).get(reverse("reviews:gate-detail", args=[gate_run.pk])).content.decode()
    assert ">0.889</td>" in body and "0.8889999" not in body
