""""Try it": a case checked against its source run's answer at once, assertions here, rubric via the judge."""

import pytest
from django.urls import reverse

from reviews.models import EvalCase
from reviews.suite import ask_judge, literal_check, try_case

from .gen_builders import proposed_cases

pytestmark = pytest.mark.django_db

HTMX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def cases(standin, reviewer, approver):
    return proposed_cases(reviewer, approver, count=4)


def test_a_case_the_answer_breaks_fails_with_a_verdict_per_check(client_for, approver, cases):
    case = cases["trace-04"]  # the answer says "SOC 2 is complete" and never mentions Type I
    response = client_for(approver).post(reverse("reviews:eval-try", args=[case.pk]), **HTMX)
    assert response.status_code == 200
    body = response.content.decode()
    assert body.lstrip().startswith('<div id="try-result"')
    assert '<span class="badge badge-fail" data-testid="verdict">fails</span>' in body
    rows = body.split('data-testid="try-assertion"')[1:]
    assert "<code>icontains</code></td><td><code>Type I</code>" in rows[0] and "badge-fail" in rows[0]
    assert "<code>not-contains</code></td><td><code>SOC 2 is complete</code>" in rows[1] and "badge-fail" in rows[1]
    rubric = body.split('data-testid="try-rubric"')[1]
    assert "judge gpt-5.5, score 0.00 (needs 0.80)" in rubric
    assert "Fails: required" in rubric and "says “SOC 2 is complete”" in rubric


def test_a_case_the_answer_meets_passes(client_for, engineer, cases):
    case = cases["trace-01"]
    response = client_for(engineer).post(reverse("reviews:eval-try", args=[case.pk]), **HTMX)
    body = response.content.decode()
    assert '<span class="badge badge-pass" data-testid="verdict">passes</span>' in body
    assert "All 3 rubric checks met" in body


def test_it_changes_nothing(approver, cases):
    case = cases["trace-04"]
    before = EvalCase.objects.filter(pk=case.pk).values().get()
    try_case(case=case)
    assert EvalCase.objects.filter(pk=case.pk).values().get() == before


def test_a_broken_judge_is_reported_not_passed(standin_broken_server, settings, approver, cases):
    settings.STANDIN_URL = standin_broken_server  # the cases exist; now the judge answers broken JSON
    result = try_case(case=cases["trace-01"])
    assert result.passed is None
    assert result.rubric["error"].startswith("ValueError: The judge")


def test_an_unreachable_judge_fails_fast(settings, approver, cases):
    settings.STANDIN_URL = "http://127.0.0.1:9/v1"
    verdict = ask_judge(output="anything", rubric='Mentions "x".')
    assert verdict["passed"] is False and verdict["error"].startswith("APIConnectionError")


def test_reviewers_cannot_use_it(client_for, reviewer, cases):
    assert client_for(reviewer).post(reverse("reviews:eval-try", args=[cases["trace-01"].pk])).status_code == 403


def test_without_htmx_it_renders_the_case_page_with_the_result(client_for, approver, cases):
    response = client_for(approver).post(reverse("reviews:eval-try", args=[cases["trace-01"].pk]))
    assert response.status_code == 200
    assert b"<html" in response.content and b'data-testid="verdict">passes' in response.content


@pytest.mark.parametrize("kind,value,output,expected", [
    ("contains", "SOC 2", "soc 2 is done", False),
    ("icontains", "SOC 2", "soc 2 is done", True),
    ("not-contains", "complete", "SOC 2 is complete", False),
    ("not-contains", "Complete", "SOC 2 is complete", True),
])
def test_literal_checks_follow_promptfoo(kind, value, output, expected):
    assert literal_check(kind, value, output) is expected
