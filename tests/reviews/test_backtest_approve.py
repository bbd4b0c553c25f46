"""Approving a case its back-test speaks against needs a written reason, kept on the case and audited;
the proposals list and the suite page show the back-test and mark such cases."""

import pytest
from django.urls import reverse

from loopsite.models import AuditEvent
from reviews import backtest
from reviews.models import ApprovalReasonRequired, EvalCase

from .backtest_builders import CATCHING, MISSING, case_for, reviewed_run, run_queued

pytestmark = pytest.mark.django_db

HTMX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def cases(standin, reviewer, approver):
    cycle, run, feedback = reviewed_run(reviewer, approver)
    catching = case_for(cycle, run, feedback, checks=CATCHING, eval_id="catching")
    missing = case_for(cycle, run, feedback, checks=MISSING, eval_id="missing",
                       pass_example="The security review: Type I is complete, Type II is in progress.")
    for case in (catching, missing):
        backtest.request_backtest(case=case)
        run_queued(case)
    return catching, missing


def test_a_case_that_does_not_catch_its_failure_needs_a_reason(client_for, approver, cases):
    _, missing = cases
    url = reverse("reviews:eval-approve", args=[missing.pk])
    response = client_for(approver).post(url, {"reason": "  "}, **HTMX)
    body = response.content.decode()
    assert response.status_code == 200
    assert ("Not approved: It does not catch the failure it came from. Approving it anyway needs a written reason: "
            "fill in “Reason for approving anyway”.") in body
    assert "Write why you approve it anyway." in body
    missing.refresh_from_db()
    assert missing.status == EvalCase.Status.PROPOSED
    assert not AuditEvent.objects.filter(action="evalcase.approve").exists()

    response = client_for(approver).post(url, {"reason": "The rubric is checked by hand for now."}, **HTMX)
    assert response.status_code == 200
    missing.refresh_from_db()
    assert missing.status == EvalCase.Status.APPROVED
    assert missing.approval_concern == "It does not catch the failure it came from."
    assert missing.approval_reason == "The rubric is checked by hand for now."
    event = AuditEvent.objects.get(action="evalcase.approve", object_id=str(missing.pk))
    assert event.actor == approver and event.after["approval_reason"] == "The rubric is checked by hand for now."
    assert event.after["approval_concern"] == "It does not catch the failure it came from."


def test_a_case_that_catches_its_failure_needs_no_reason(client_for, approver, cases):
    catching, _ = cases
    response = client_for(approver).post(reverse("reviews:eval-approve", args=[catching.pk]), **HTMX)
    assert b"Approved: the case is in the regression suite." in response.content
    catching.refresh_from_db()
    assert catching.status == EvalCase.Status.APPROVED and catching.approval_reason == catching.approval_concern == ""


def test_an_edit_not_yet_back_tested_needs_a_reason(approver, cases):
    catching, _ = cases
    catching.edit(by=approver, content={"pass_example": "Type II is in progress."})
    with pytest.raises(ApprovalReasonRequired, match="changed since its last back-test"):
        catching.approve(by=approver)
    run_queued(catching)
    catching.approve(by=approver)  # the new version still catches it
    assert catching.status == EvalCase.Status.APPROVED


def test_the_case_page_asks_for_the_reason_and_says_why(client_for, approver, cases):
    _, missing = cases
    body = client_for(approver).get(missing.get_absolute_url()).content.decode()
    assert ('data-testid="approval-concern">It does not catch the failure it came from. Approving it needs a written '
            "reason.</p>") in body
    assert '<textarea id="approve-reason" name="reason" rows="2" required>' in body


def test_the_list_shows_whether_each_proposal_catches_its_failure(client_for, reviewer, cases):
    catching, missing = cases
    body = client_for(reviewer).get(reverse("reviews:evals", args=[catching.cycle_id])).content.decode()
    card = body.split(f'data-testid="case-card-{catching.pk}"')[1].split("</article>")[0]
    assert 'data-testid="catches-cell" data-label="yes"' in card
    card = body.split(f'data-testid="case-card-{missing.pk}"')[1].split("</article>")[0]
    assert 'data-testid="catches-cell" data-label="no"' in card


def test_the_suite_marks_a_case_approved_against_its_back_test(client_for, approver, reviewer, cases):
    catching, missing = cases
    catching.approve(by=approver)
    missing.approve(by=approver, reason="Kept while the judge is calibrated.")
    body = client_for(reviewer).get(reverse("reviews:suite")).content.decode()
    row = body.split(f'data-testid="suite-row-{missing.pk}"')[1].split("</tr>")[0]
    assert 'data-label="no"' in row and 'data-testid="approved-anyway"' in row
    assert "It does not catch the failure it came from. Reason: Kept while the judge is calibrated." in row
    row = body.split(f'data-testid="suite-row-{catching.pk}"')[1].split("</tr>")[0]
    assert 'data-label="yes"' in row and "approved-anyway" not in row


def test_the_lists_read_every_cases_back_test_at_once_and_agree_with_each_cases_own(
        cases, django_assert_num_queries):
    from reviews.eval_views import _cases

    catching, missing = cases
    cycle, run, feedback = catching.cycle, catching.source_run, catching.source_feedback.get()
    case_for(cycle, run, feedback, eval_id="untested")
    queued = case_for(cycle, run, feedback, eval_id="queued")
    backtest.request_backtest(case=queued)
    EvalCase.objects.filter(pk=missing.pk).update(rubric="Changed since its back-test.")  # stale now
    listed = list(_cases().filter(cycle=cycle).order_by("eval_id"))
    with django_assert_num_queries(2):
        states = backtest.backtest_states(listed)
    for case in listed:
        alone = backtest.backtest_state(case)
        assert (states[case.pk].label, states[case.pk].concern, states[case.pk].evidence) == (
            alone.label, alone.concern, alone.evidence), case.eval_id
    assert [states[case.pk].label for case in listed] == ["yes", "stale", "queued", "not run"]
