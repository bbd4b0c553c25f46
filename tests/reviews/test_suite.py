"""The regression suite page: approved and retired cases across cycles with provenance; retire and restore."""

import pytest
from django.urls import reverse

from loopsite.models import AuditEvent
from reviews.models import EvalCase

from .gen_builders import PENDING_REASON, proposed_cases

pytestmark = pytest.mark.django_db


@pytest.fixture
def suite(standin, reviewer, approver):
    cases = proposed_cases(reviewer, approver, count=3)
    cases["trace-01"].edit(by=approver, content={"title": "Runway and burn as financing risk"})
    for label in ("trace-01", "trace-02"):
        cases[label].approve(by=approver, reason=PENDING_REASON)  # their back-tests are still queued
    cases["trace-03"].reject(by=approver, reason="Too specific.")
    return cases


def test_it_lists_approved_cases_with_provenance(client_for, reviewer, suite):
    body = client_for(reviewer).get(reverse("reviews:suite")).content.decode()
    case = suite["trace-01"]
    row = body.split(f'data-testid="suite-row-{case.pk}"')[1].split("</tr>")[0]
    assert "Runway and burn as financing risk" in row and "financial-risk-trace-01" in row
    assert f'<a href="{case.cycle.get_absolute_url()}">v001 review</a>' in row
    assert f'<a href="{case.source_run.get_absolute_url()}">#{case.source_run.pk} trace-01</a>' in row
    assert "reviewed by rita;" in row and "approved by april" in row
    assert "<td>1</td>" in row  # one edit
    assert "badge-approved" in row
    assert f'data-testid="suite-row-{suite["trace-03"].pk}"' not in body  # rejected: never in the suite
    assert "Active (2)" in body and "Retired (0)" in body
    assert 'data-testid="retire"' not in body  # reviewers do not retire


def test_retiring_and_restoring_is_for_approvers_and_audited(client_for, approver, reviewer, suite):
    case = suite["trace-02"]
    assert client_for(reviewer).post(reverse("reviews:eval-retire", args=[case.pk])).status_code == 403
    back = reverse("reviews:suite") + "?show=all"
    response = client_for(approver).post(reverse("reviews:eval-retire", args=[case.pk]), {"next": back})
    assert response.status_code == 302 and response["Location"] == back
    case.refresh_from_db()
    assert case.status == EvalCase.Status.RETIRED

    active = client_for(approver).get(reverse("reviews:suite")).content.decode()
    assert f'data-testid="suite-row-{case.pk}"' not in active
    retired = client_for(approver).get(reverse("reviews:suite") + "?show=retired").content.decode()
    assert f'data-testid="suite-row-{case.pk}"' in retired and 'data-testid="restore"' in retired

    client_for(approver).post(reverse("reviews:eval-restore", args=[case.pk]))
    case.refresh_from_db()
    assert case.status == EvalCase.Status.APPROVED
    assert list(AuditEvent.objects.filter(object_id=str(case.pk), action__in=["evalcase.retire", "evalcase.restore"])
                .order_by("pk").values_list("action", "actor__username")) == [
        ("evalcase.retire", "april"), ("evalcase.restore", "april")]


def test_only_approved_cases_can_be_retired(approver, suite):
    from reviews.models import EvalCaseStateError

    with pytest.raises(EvalCaseStateError, match="The case is rejected: it cannot be retired."):
        suite["trace-03"].retire(by=approver)
