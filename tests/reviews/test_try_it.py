""""Try it" is the back-test: the case page shows it at the top, polls it while it runs, and
"Re-run back-test" queues it for the worker. No model and no promptfoo run inside the request."""

import json

import pytest
from django.urls import reverse
from django_htmx.http import HttpResponseStopPolling

from reviews import backtest, promptfoo
from reviews.models import BackTestRun

from .backtest_builders import CATCHING, case_for, reviewed_run, run_queued

pytestmark = pytest.mark.django_db

HTMX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def case(standin, reviewer, approver):
    cycle, run, feedback = reviewed_run(reviewer, approver)
    return case_for(cycle, run, feedback, checks=CATCHING)


@pytest.fixture
def no_promptfoo_here(monkeypatch):
    def refuse(**kwargs):
        raise AssertionError("promptfoo must not run in a web request")

    monkeypatch.setattr(promptfoo, "run_config", refuse)


def test_rerun_queues_a_back_test_and_answers_with_the_polling_panel(client_for, approver, case, no_promptfoo_here,
                                                                     django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks() as callbacks:
        response = client_for(approver).post(reverse("reviews:eval-backtest-rerun", args=[case.pk]), **HTMX)
    assert response.status_code == 200
    body = response.content.decode()
    assert body.lstrip().startswith('<section class="card backtest" id="backtest"')
    assert f'hx-get="{reverse("reviews:eval-backtest", args=[case.pk])}" hx-trigger="every 2s"' in body
    assert 'data-testid="catches">back-test queued…' in body
    queued = case.backtest_runs.get()
    assert (queued.status, queued.purpose, queued.requested_by) == ("queued", BackTestRun.Purpose.RERUN, approver)
    assert len(callbacks) == 1 and not queued.rows.exists()


def test_the_polled_panel_stops_polling_with_the_result(client_for, engineer, case):
    backtest.request_backtest(case=case)
    client = client_for(engineer)
    url = reverse("reviews:eval-backtest", args=[case.pk])
    assert client.get(url, **HTMX).status_code == 200
    run_queued(case)
    response = client.get(url, **HTMX)
    assert response.status_code == HttpResponseStopPolling.status_code
    assert response["HX-Trigger"] == json.dumps({"backtestFinished": {"case": case.pk}})
    body = response.content.decode()
    assert 'hx-trigger="every 2s"' not in body
    assert 'Catches the failure it came from:\n      <span class="badge badge-pass" data-testid="catches">yes</span>' in body
    assert body.count('data-testid="backtest-row"') == 3
    assert 'data-target="source_run" data-outcome="fail"' in body and 'data-target="pass_example" data-outcome="pass"' in body


def test_the_case_page_shows_the_back_test_at_the_top(client_for, reviewer, case):
    backtest.request_backtest(case=case)
    run_queued(case)
    body = client_for(reviewer).get(case.get_absolute_url()).content.decode()
    assert body.index('id="backtest"') < body.index("<h2>The case</h2>")
    assert 'data-testid="catches">yes</span>' in body
    assert 'data-testid="rerun-backtest"' not in body  # reviewers see it, approvers and engineers re-run it
    assert "Try it on the source run" not in body


def test_reviewers_cannot_rerun_it(client_for, reviewer, case):
    assert client_for(reviewer).post(reverse("reviews:eval-backtest-rerun", args=[case.pk])).status_code == 403
    assert not case.backtest_runs.exists()


def test_without_htmx_rerun_redirects_to_the_case(client_for, approver, case, no_promptfoo_here):
    response = client_for(approver).post(reverse("reviews:eval-backtest-rerun", args=[case.pk]))
    assert response.status_code == 302 and response["Location"] == case.get_absolute_url()
    assert client_for(approver).get(reverse("reviews:eval-backtest", args=[case.pk])).status_code == 302


def test_it_rejects_get_for_rerun(client_for, approver, case):
    assert client_for(approver).get(reverse("reviews:eval-backtest-rerun", args=[case.pk])).status_code == 405
