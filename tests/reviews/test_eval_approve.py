"""Approving and rejecting eval proposals: approvers only, reasons required, every decision audited."""

import json

import pytest
from django.urls import reverse

from loopsite.models import AuditEvent
from reviews.models import EvalCase

from .gen_builders import PENDING_REASON, proposed_cases

pytestmark = pytest.mark.django_db

HTMX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def cases(standin, reviewer, approver):
    return proposed_cases(reviewer, approver, count=3)


def test_approving_puts_the_case_in_the_suite_and_audits_it(client_for, approver, cases):
    case = cases["trace-01"]
    response = client_for(approver).post(reverse("reviews:eval-approve", args=[case.pk]),
                                         {"reason": PENDING_REASON}, **HTMX)
    assert response.status_code == 200
    assert response["HX-Trigger"] == json.dumps({"evalCaseChanged": {"case": case.pk, "status": "approved"}})
    assert b"Approved: the case is in the regression suite." in response.content
    case.refresh_from_db()
    assert case.status == EvalCase.Status.APPROVED
    assert case.approved_by == approver and case.approved_at is not None
    event = AuditEvent.objects.get(action="evalcase.approve", object_id=str(case.pk))
    assert event.actor == approver
    assert event.before["status"] == "proposed" and event.after["status"] == "approved"
    assert event.after["approved_by"] == "april"
    assert case.approval_reason == PENDING_REASON and case.approval_concern.startswith("Its back-test has not finished")


def test_a_proposal_whose_back_test_has_not_finished_needs_a_reason(client_for, approver, cases):
    case = cases["trace-01"]
    assert case.backtest_state().label == "queued"
    response = client_for(approver).post(reverse("reviews:eval-approve", args=[case.pk]), **HTMX)
    assert response.status_code == 200
    assert "Not approved: Its back-test has not finished" in response.content.decode()
    case.refresh_from_db()
    assert case.status == EvalCase.Status.PROPOSED
    assert not AuditEvent.objects.filter(action="evalcase.approve").exists()


def test_approving_from_the_list_answers_with_the_card(client_for, approver, cases):
    case = cases["trace-02"]
    response = client_for(approver).post(reverse("reviews:eval-approve", args=[case.pk]),
                                         {"from": "list", "reason": PENDING_REASON}, **HTMX)
    body = response.content.decode()
    assert body.lstrip().startswith(f'<article class="card eval-card" id="case-card-{case.pk}"')
    assert '<span class="badge badge-approved" data-testid="case-status">Approved</span>' in body


def test_rejecting_needs_a_reason(client_for, approver, cases):
    case = cases["trace-03"]
    response = client_for(approver).post(reverse("reviews:eval-reject", args=[case.pk]), {"reason": "  "}, **HTMX)
    assert response.status_code == 200
    assert b"Say why this case is rejected." in response.content
    case.refresh_from_db()
    assert case.status == EvalCase.Status.PROPOSED
    assert not AuditEvent.objects.filter(action="evalcase.reject").exists()


def test_rejecting_with_a_reason_is_audited(client_for, approver, cases):
    case = cases["trace-03"]
    response = client_for(approver).post(reverse("reviews:eval-reject", args=[case.pk]),
                                         {"reason": "Restates one trace; not reusable."}, **HTMX)
    assert response.status_code == 200
    case.refresh_from_db()
    assert case.status == EvalCase.Status.REJECTED
    assert case.reject_reason == "Restates one trace; not reusable."
    event = AuditEvent.objects.get(action="evalcase.reject", object_id=str(case.pk))
    assert event.actor == approver and event.after["reject_reason"] == "Restates one trace; not reusable."


def test_a_decided_case_cannot_be_decided_again(client_for, approver, cases):
    case = cases["trace-01"]
    client_for(approver).post(reverse("reviews:eval-approve", args=[case.pk]), {"reason": PENDING_REASON}, **HTMX)
    response = client_for(approver).post(reverse("reviews:eval-reject", args=[case.pk]), {"reason": "Changed my mind"},
                                         **HTMX)
    assert b"The case is approved: it cannot be rejected." in response.content
    case.refresh_from_db()
    assert case.status == EvalCase.Status.APPROVED


def test_a_case_that_cannot_run_cannot_be_approved(approver, cases):
    case = cases["trace-01"]
    EvalCase.objects.filter(pk=case.pk).update(scoring_method="llm_judge", rubric="")
    case.refresh_from_db()
    from reviews.models import EvalCaseStateError

    with pytest.raises(EvalCaseStateError, match="needs a rubric"):
        case.approve(by=approver)


@pytest.mark.parametrize("action", ["eval-approve", "eval-reject", "eval-retire", "eval-restore"])
def test_reviewers_get_403(client_for, reviewer, cases, action):
    case = cases["trace-01"]
    response = client_for(reviewer).post(reverse(f"reviews:{action}", args=[case.pk]), {"reason": "x"})
    assert response.status_code == 403
    case.refresh_from_db()
    assert case.status == EvalCase.Status.PROPOSED


def test_outsiders_see_nothing(client_for, outsider, cases):
    case = cases["trace-01"]
    client = client_for(outsider)
    assert client.get(reverse("reviews:evals", args=[case.cycle_id])).status_code == 403
    assert client.get(case.get_absolute_url()).status_code == 403
    assert client.get(reverse("reviews:suite")).status_code == 403
    assert client.get(reverse("reviews:suite-download")).status_code == 403


def test_the_list_shows_provenance_and_the_checks(client_for, reviewer, cases):
    case = cases["trace-03"]
    body = client_for(reviewer).get(reverse("reviews:evals", args=[case.cycle_id])).content.decode()
    card = body.split(f'data-testid="case-card-{case.pk}"')[1].split("</article>")[0]
    assert f'href="{case.source_run.get_absolute_url()}" data-testid="source-run">#{case.source_run.pk} trace-03' in card
    assert "<strong>Must:</strong> Roll up to Northstar Holdings" in card
    assert "<strong>Must not:</strong> Do not stop at legal-entity concentration" in card
    assert "Reviewed by rita · feedback approved by april" in " ".join(card.split())
    assert 'data-testid="source-insight"' in card
    assert "<code>icontains</code></td><td><code>Northstar Holdings</code>" in card
    assert "proposed by gpt-5.5" in card
    assert 'data-testid="approve"' not in card  # reviewers do not decide


def test_without_htmx_a_decision_redirects_to_next(client_for, approver, cases):
    case = cases["trace-01"]
    back = reverse("reviews:evals", args=[case.cycle_id]) + "?status=proposed"
    response = client_for(approver).post(reverse("reviews:eval-approve", args=[case.pk]),
                                         {"next": back, "reason": PENDING_REASON})
    assert response.status_code == 302 and response["Location"] == back
    evil = client_for(approver).post(reverse("reviews:eval-reject", args=[cases["trace-02"].pk]),
                                     {"next": "https://evil.example/", "reason": "dup"})
    assert evil["Location"] == cases["trace-02"].get_absolute_url()
