"""The generation panel on the cycle page: start, poll, failure with raw output, retry, insights."""

import pytest
from django.urls import reverse

from loopsite.models import AuditEvent
from reviews.models import Feedback, GenerationJob

from .gen_builders import approved_cycle, no_broker, run_chain

pytestmark = pytest.mark.django_db

HTMX = {"HTTP_HX_REQUEST": "true"}


def test_an_approver_sees_the_button_once_a_run_is_approved(client_for, reviewer, approver):
    cycle, _ = approved_cycle(reviewer, approver, count=2, approve_count=1)
    page = client_for(approver).get(cycle.get_absolute_url())
    assert page.status_code == 200
    assert b'data-testid="generate"' in page.content and b"Generate eval proposals" in page.content


def test_reviewers_do_not_get_the_button(client_for, reviewer, approver):
    cycle, _ = approved_cycle(reviewer, approver, count=2, approve_count=1)
    page = client_for(reviewer).get(cycle.get_absolute_url())
    assert page.status_code == 200
    assert b'data-testid="generate"' not in page.content


def test_no_button_without_an_approved_run(client_for, reviewer, approver):
    cycle, _ = approved_cycle(reviewer, approver, count=2, approve_count=0)
    page = client_for(approver).get(cycle.get_absolute_url())
    assert b'data-testid="generate"' not in page.content


def test_the_button_queues_the_chain_and_the_panel_starts_polling(client_for, reviewer, approver, monkeypatch,
                                                                  django_capture_on_commit_callbacks):
    cycle, _ = approved_cycle(reviewer, approver, count=2, approve_count=1)
    url = reverse("reviews:generation", args=[cycle.pk])
    with no_broker(monkeypatch) as sent, django_capture_on_commit_callbacks(execute=True):
        response = client_for(approver).post(url, **HTMX)
    job = GenerationJob.objects.get()
    assert response.status_code == 200
    assert sent == [("reviews.generate_insights", job.pk)]
    body = response.content.decode()
    assert f'hx-get="{url}" hx-trigger="every 2s"' in body
    assert 'data-testid="step-1" data-status="queued"' in body
    assert 'data-testid="step-2" data-status="waiting"' in body
    assert 'data-testid="generate"' not in body  # no second chain while one is queued


def test_a_reviewer_cannot_start_it(client_for, reviewer, approver):
    cycle, _ = approved_cycle(reviewer, approver, count=2, approve_count=1)
    response = client_for(reviewer).post(reverse("reviews:generation", args=[cycle.pk]), **HTMX)
    assert response.status_code == 403
    assert not GenerationJob.objects.exists()


def test_polling_stops_when_the_chain_is_done(standin, client_for, reviewer, approver):
    cycle, _ = approved_cycle(reviewer, approver, count=2)
    url = reverse("reviews:generation", args=[cycle.pk])
    running = client_for(approver).get(url, **HTMX)
    assert running.status_code == 200 and b'hx-trigger="every 2s"' in running.content
    run_chain(cycle)
    done = client_for(approver).get(url, **HTMX)
    assert done.status_code == 286  # HttpResponseStopPolling
    body = done.content.decode()
    assert 'hx-trigger' not in body.split('data-testid="generation"')[1].split(">")[0]
    assert 'data-testid="step-1" data-status="succeeded"' in body
    assert 'data-testid="step-2" data-status="succeeded"' in body
    assert "Eval proposals (2, 2 to decide)" in body


def test_the_page_without_htmx_is_a_full_page(client_for, reviewer, approver):
    cycle, _ = approved_cycle(reviewer, approver, count=1)
    page = client_for(reviewer).get(reverse("reviews:generation", args=[cycle.pk]))
    assert page.status_code == 200
    assert b"<html" in page.content and b'data-testid="generation"' in page.content


def test_a_failure_shows_the_error_the_escaped_raw_output_and_retry(standin_broken, client_for, reviewer, approver):
    cycle, _ = approved_cycle(reviewer, approver, count=2)
    feedback_before = list(Feedback.objects.filter(cycle=cycle).values_list("pk", "status", "version", "summary"))
    run_chain(cycle)
    job = GenerationJob.objects.get()
    assert job.status == GenerationJob.Status.FAILED
    job.raw_output += "\n<script>alert('x')</script>"
    job.save(update_fields=["raw_output"])

    page = client_for(approver).get(cycle.get_absolute_url())
    body = page.content.decode()
    assert f'data-testid="failure-{job.pk}"' in body
    assert "The model&#x27;s output was not usable: Invalid JSON" in body
    assert "<details><summary>Raw model output" in body
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in body and "<script>alert" not in body
    assert f'action="{reverse("reviews:generation-retry", args=[job.pk])}"' in body
    assert list(Feedback.objects.filter(cycle=cycle).values_list("pk", "status", "version", "summary")) == feedback_before


def test_retry_requeues_the_failed_step_and_it_can_then_succeed(standin_broken, client_for, reviewer, approver, engineer,
                                                               monkeypatch, django_capture_on_commit_callbacks, settings,
                                                               standin_server):
    cycle, _ = approved_cycle(reviewer, approver, count=2)
    run_chain(cycle)
    job = GenerationJob.objects.get()
    url = reverse("reviews:generation-retry", args=[job.pk])
    assert client_for(reviewer).post(url, **HTMX).status_code == 403

    with no_broker(monkeypatch) as sent, django_capture_on_commit_callbacks(execute=True):
        response = client_for(engineer).post(url, **HTMX)
    assert response.status_code == 200
    job.refresh_from_db()
    assert job.status == GenerationJob.Status.QUEUED
    assert sent == [("reviews.generate_insights", job.pk)]
    assert AuditEvent.objects.filter(action="generation.retry", object_id=str(job.pk), actor=engineer).exists()
    assert b'hx-trigger="every 2s"' in response.content

    settings.STANDIN_URL = standin_server  # the model is fixed: a working stand-in
    run_chain(cycle)
    job.refresh_from_db()
    assert job.status == GenerationJob.Status.SUCCEEDED and job.attempts == 2
    assert cycle.eval_cases.count() == 2


def test_retrying_a_step_that_did_not_fail_is_refused(client_for, reviewer, approver):
    cycle, _ = approved_cycle(reviewer, approver, count=1)
    job = GenerationJob.objects.get()
    response = client_for(approver).post(reverse("reviews:generation-retry", args=[job.pk]), **HTMX)
    assert response.status_code == 200
    assert b"Only a failed step can be retried." in response.content


def test_insights_appear_beside_the_feedback_marked_as_model_generated(standin, client_for, reviewer, approver):
    cycle, runs = approved_cycle(reviewer, approver, count=2)
    run_chain(cycle)
    body = client_for(reviewer).get(cycle.get_absolute_url()).content.decode()
    assert 'data-testid="insights"' in body
    row = body.split(f'data-testid="insight-row-{runs[0].pk}"')[1].split("</tr>")[0]
    assert "State the 11-month runway and rising burn as financing risk." in row  # the human feedback
    assert "Cites 1 dataroom file(s) for its claims: finance/runway.csv." in row  # the model's insight
    assert "Model-generated by gpt-5.5" in row

    approval = client_for(approver).get(reverse("reviews:run-approve", args=[cycle.pk, runs[0].pk])).content.decode()
    assert 'data-testid="run-insights"' in approval
    assert "finance/runway.csv" in approval and "model-generated" in approval
