"""The comparison page of a candidate gate run: per case both sides, regressions first, fixes, delta, promote."""

import pytest
from django.urls import reverse
from django.utils import timezone

from reviews.models import GateRow, GateRun
from runs.models import Harness

from .builders import make_run
from .gate_builders import approved_suite, v001

pytestmark = pytest.mark.django_db

HTMX = {"HTTP_HX_REQUEST": "true"}

# eval_id -> (baseline passes, candidate passes); approved_suite's order
OUTCOMES = {
    "runway-financing-risk": (True, True),
    "finance-arr-first": (False, True),
    "parent-rollup": (True, False),
    "soc2-precision": (False, True),
    "nrr-unsupported": (True, True),
}


def _gate(harness, cycle, cases, runs, passes, *, kind="baseline", baseline=None, reason="judged"):
    gate_run = GateRun.objects.create(
        harness=harness, cycle=cycle, kind=kind, baseline=baseline, status=GateRun.Status.SUCCEEDED,
        finished_at=timezone.now(), total=len(cases), passed=sum(passes), failed=len(cases) - sum(passes),
    )
    for position, (case, run, passed) in enumerate(zip(cases, runs, passes, strict=True)):
        GateRow.objects.create(gate_run=gate_run, eval_case=case, run=run, position=position, eval_id=case.eval_id,
                               title=case.title, passed=passed, score=1.0 if passed else 0.0,
                               reason=f"{reason} {case.eval_id}")
    return gate_run


@pytest.fixture
def compared(approver, engineer):
    cycle, runs, cases = approved_suite(approver)
    base = _gate(v001(), cycle, cases, runs, [OUTCOMES[c.eval_id][0] for c in cases])
    v002 = v001().create_child(by=engineer, version="v002", system_prompt="Better.", tool_policy={}, model_settings={})
    new_runs = [make_run(harness=v002, label=run.label, answer="new answer") for run in runs]
    from reviews.models import Cycle

    new_cycle = Cycle.objects.create(harness=v002, name="v002 evaluation")
    new_cycle.runs.set(new_runs)
    cand = _gate(v002, new_cycle, cases, new_runs, [OUTCOMES[c.eval_id][1] for c in cases], kind="candidate",
                 baseline=base, reason="<i>candidate</i>")
    return {"base": base, "cand": cand, "cases": cases, "runs": runs, "new_runs": new_runs, "v002": v002}


def test_regressions_come_first_in_red_then_fixes_with_the_delta(client_for, reviewer, compared):
    body = client_for(reviewer).get(reverse("reviews:gate-compare", args=[compared["cand"].pk])).content.decode()
    table = body.split('data-testid="compare-rows"')[1]
    order = [part.split('"')[0] for part in table.split('data-outcome="')[1:]]
    assert order == ["regression", "fix", "fix", "pass", "pass"]
    parent = compared["cases"][2]
    row = body.split(f'data-testid="compare-row-{parent.pk}"')[0].rsplit("<tr", 1)[1]
    assert 'class="outcome-row-regression"' in row
    assert 'data-testid="regression-count">1 regression</span>' in body
    assert 'data-testid="fix-count">2 fixes</span>' in body
    assert "+20 points" in body  # 3/5 -> 4/5
    assert 'data-testid="promote-panel"' not in body  # reviewers do not promote


def test_each_side_links_to_its_runs_trace_and_escapes_reasons(client_for, reviewer, compared):
    body = client_for(reviewer).get(reverse("reviews:gate-compare", args=[compared["cand"].pk])).content.decode()
    case = compared["cases"][1]
    row = body.split(f'data-testid="compare-row-{case.pk}"')[1].split("</tr>")[0]
    assert f'<a href="{compared["runs"][1].get_absolute_url()}">run #{compared["runs"][1].pk} trace</a>' in row
    assert f'<a href="{compared["new_runs"][1].get_absolute_url()}">run #{compared["new_runs"][1].pk} trace</a>' in row
    assert f'<a href="{case.get_absolute_url()}">' in row
    assert "&lt;i&gt;candidate&lt;/i&gt; finance-arr-first" in row and "<i>candidate</i>" not in row


def test_approvers_are_refused_on_a_regression_without_a_reason(client_for, approver, compared):
    url = reverse("reviews:gate-promote", args=[compared["cand"].pk])
    page = client_for(approver).get(reverse("reviews:gate-compare", args=[compared["cand"].pk])).content.decode()
    assert 'data-testid="promote-panel"' in page and "override_reason" in page
    body = client_for(approver).post(url, **HTMX).content.decode()
    assert "Promotion of v002 is refused: 1 case(s) pass on v001 and fail on v002 (parent-rollup)." in body
    compared["v002"].refresh_from_db()
    assert compared["v002"].status == Harness.Status.DRAFT

    body = client_for(approver).post(url, {"override_reason": "Known gap, fixed in v003."}, **HTMX).content.decode()
    assert 'data-testid="compare-note">v002 is now the promoted version.' in body
    compared["v002"].refresh_from_db()
    assert compared["v002"].status == Harness.Status.PROMOTED


def test_promotion_is_for_approvers_only(client_for, reviewer, engineer, compared):
    url = reverse("reviews:gate-promote", args=[compared["cand"].pk])
    assert client_for(reviewer).post(url, {"override_reason": "x"}).status_code == 403
    assert client_for(engineer).post(url, {"override_reason": "x"}).status_code == 403
    compared["v002"].refresh_from_db()
    assert compared["v002"].status == Harness.Status.DRAFT


def test_the_page_waits_and_polls_until_both_gate_runs_succeed(client_for, reviewer, compared):
    cand = compared["cand"]
    GateRun.objects.filter(pk=cand.pk).update(status=GateRun.Status.WAITING)
    url = reverse("reviews:gate-compare", args=[cand.pk])
    body = client_for(reviewer).get(url, **HTMX).content.decode()
    assert 'data-testid="compare-pending"' in body and 'hx-trigger="every 2s"' in body
    GateRun.objects.filter(pk=cand.pk).update(status=GateRun.Status.FAILED, last_error="judge down")
    response = client_for(reviewer).get(url, **HTMX)
    assert response.status_code == 286 and "judge down" in response.content.decode()
    assert b'data-testid="promote-panel"' not in response.content


def test_only_candidate_gate_runs_have_a_comparison(client_for, reviewer, compared):
    assert client_for(reviewer).get(reverse("reviews:gate-compare", args=[compared["base"].pk])).status_code == 404


def test_the_harness_promote_panel_uses_the_latest_comparison(client_for, approver, compared):
    from runs.promotion import comparison_for

    result = comparison_for(compared["v002"])
    assert result is not None and [row.case_id for row in result.regressions] == ["parent-rollup"]
    assert result.source == f"gate runs {compared['base'].pk} (v001) and {compared['cand'].pk} (v002)"


def test_a_draft_harness_page_offers_evaluate_candidate_to_engineers(client_for, engineer, reviewer, compared):
    url = compared["v002"].get_absolute_url()
    body = client_for(engineer).get(url).content.decode()
    assert 'data-testid="evaluate-candidate-button"' in body
    assert f'href="{reverse("reviews:gate-compare", args=[compared["cand"].pk])}"' in body
    assert 'data-testid="evaluate-candidate-button"' not in client_for(reviewer).get(url).content.decode()


def test_evaluate_candidate_starts_the_runs_and_goes_to_the_comparison(client_for, engineer, compared,
                                                                      django_capture_on_commit_callbacks):
    v003 = compared["v002"].create_child(by=engineer, version="v003", system_prompt="Even better.", tool_policy={},
                                         model_settings={})
    with django_capture_on_commit_callbacks():
        response = client_for(engineer).post(reverse("reviews:harness-evaluate", args=["v003"]), {"baseline": "v002"})
    gate_run = GateRun.objects.get(harness=v003)
    assert response.status_code == 302 and response["Location"] == reverse("reviews:gate-compare", args=[gate_run.pk])
    assert gate_run.status == GateRun.Status.WAITING and gate_run.baseline == compared["cand"]
    assert gate_run.cycle.runs.count() == 5


def test_evaluate_candidate_needs_the_engineer_role(client_for, approver, compared):
    response = client_for(approver).post(reverse("reviews:harness-evaluate", args=["v002"]), {"baseline": "v001"})
    assert response.status_code == 403


def test_every_case_is_counted_and_unrun_or_errored_cases_are_not_verified(client_for, approver, compared):
    """The reported bug: "0 regressions · 1 not run" when 4 of 10 cases were not run, and a delta over different
    case sets. Now the counts add up to the suite and the delta is on the cases both sides ran."""
    cand, cases = compared["cand"], {case.eval_id: case for case in compared["cases"]}
    cand.rows.filter(eval_case__in=[cases["finance-arr-first"], cases["nrr-unsupported"]]).delete()
    cand.rows.filter(eval_case=cases["soc2-precision"]).update(
        passed=False, error=f"Run #{compared['new_runs'][3].pk} failed, so there is no answer to judge: boom")
    cand.config = {"skipped": [{"case_id": cases["nrr-unsupported"].pk, "eval_id": "nrr-unsupported",
                                "reason": f"No run of its question in cycle {cand.cycle_id}."}]}
    cand.save(update_fields=["config"])

    body = client_for(approver).get(reverse("reviews:gate-compare", args=[cand.pk])).content.decode()
    assert 'data-testid="case-total">5 cases</strong>' in body
    assert 'data-testid="regression-count">1 regression</span>' in body
    assert 'data-testid="fix-count">0 fixes</span>' in body
    assert 'data-testid="unchanged-count">1 unchanged</span>' in body
    assert 'data-testid="unverified-count">3 not verified</span>' in body
    # runway (pass, pass) and parent-rollup (pass, fail): 2/2 -> 1/2
    assert "On the 2 cases both sides ran:\n    100% → 50%" in body and "-50 points" in body
    outcomes = {case.eval_id: body.split(f'data-testid="compare-row-{case.pk}" data-outcome="')[1].split('"')[0]
                for case in compared["cases"]}
    assert outcomes == {"runway-financing-risk": "pass", "finance-arr-first": "unverified",
                        "parent-rollup": "regression", "soc2-precision": "unverified",
                        "nrr-unsupported": "unverified"}
    nrr_row = body.split(f'data-testid="compare-row-{cases["nrr-unsupported"].pk}"')[1].split("</tr>")[0]
    assert "not run</span>" in nrr_row and f"No run of its question in cycle {cand.cycle_id}." in nrr_row
    soc2_row = body.split(f'data-testid="compare-row-{cases["soc2-precision"].pk}"')[1].split("</tr>")[0]
    assert "badge-error\">error</span>" in soc2_row and "boom" in soc2_row

    refused = client_for(approver).post(reverse("reviews:gate-promote", args=[cand.pk]), **HTMX).content.decode()
    assert ("1 case(s) pass on v001 and fail on v002 and 3 case(s) are not verified: not run or errored "
            "(3 on v002)") in refused
    compared["v002"].refresh_from_db()
    assert compared["v002"].status == Harness.Status.DRAFT


def test_a_case_approved_after_the_candidate_gate_ran_is_not_verified(client_for, reviewer, compared):
    from reviews.models import EvalCase

    case = compared["cases"][0]
    EvalCase.objects.create(cycle=case.cycle, eval_id="late-case", title="Approved later", expected_behavior="x",
                                   source_run=case.source_run, status=EvalCase.Status.APPROVED)
    from reviews.candidates import comparison

    result = comparison(compared["base"], compared["cand"])
    assert len(result.rows) == 6 and [row.case_id for row in result.unverified] == ["late-case"]
    assert result.unverified[0].candidate_reason == f"Not in the approved suite when gate run {compared['cand'].pk} ran."
    assert result.pass_rate_delta == pytest.approx(0.2)  # still 3/5 -> 4/5 on the five judged cases


def test_an_uncalibrated_judge_needs_a_reason_to_promote(client_for, approver, compared):
    """A candidate gate whose rubric judge decided rows without a calibration (reviews.calibration) puts its
    reason on the comparison: the page says so and promotion needs a recorded reason."""
    cand = compared["cand"]
    GateRow.objects.filter(gate_run=cand, eval_id="parent-rollup").update(passed=True, score=1.0)  # no regression
    GateRow.objects.filter(gate_run=cand).update(assertions=[{"type": "icontains", "pass": True},
                                                             {"type": "llm-rubric", "pass": True}])
    GateRun.objects.filter(pk=cand.pk).update(judge_model="gpt-test")
    cand.refresh_from_db()
    from reviews.calibration import gate_needs_reason

    reason = gate_needs_reason(cand)
    assert reason and "gpt-test" in reason

    page = client_for(approver).get(reverse("reviews:gate-compare", args=[cand.pk])).content.decode()
    assert 'data-testid="needs-reason">The rubric judge (gpt-test) was not calibrated' in page
    assert "override_reason" in page and "No regression" in page
    url = reverse("reviews:gate-promote", args=[cand.pk])
    body = client_for(approver).post(url, **HTMX).content.decode()
    assert "Promotion of v002 is refused: The rubric judge (gpt-test) was not calibrated" in body
    compared["v002"].refresh_from_db()
    assert compared["v002"].status == Harness.Status.DRAFT
    client_for(approver).post(url, {"override_reason": "Judge checked by hand."}, **HTMX)
    compared["v002"].refresh_from_db()
    assert compared["v002"].status == Harness.Status.PROMOTED


def test_a_gate_decided_by_deterministic_assertions_needs_no_reason(client_for, approver, compared):
    cand = compared["cand"]
    GateRow.objects.filter(gate_run=cand, eval_id="parent-rollup").update(passed=True, score=1.0)
    GateRow.objects.filter(gate_run=cand).update(assertions=[{"type": "icontains", "pass": True}])
    from reviews.candidates import comparison

    assert comparison(compared["base"], cand).needs_reason == ()
    client_for(approver).post(reverse("reviews:gate-promote", args=[cand.pk]), **HTMX)
    compared["v002"].refresh_from_db()
    assert compared["v002"].status == Harness.Status.PROMOTED


def test_evaluating_shows_only_while_the_gate_is_pending(client_for, reviewer, compared):
    cand = compared["cand"]
    url = reverse("reviews:gate-compare", args=[cand.pk])
    GateRun.objects.filter(pk=cand.pk).update(status=GateRun.Status.WAITING)
    body = client_for(reviewer).get(url).content.decode()
    assert 'data-testid="compare-evaluating"' in body and "its runs are running" in body
    GateRun.objects.filter(pk=cand.pk).update(status=GateRun.Status.SUCCEEDED)
    body = client_for(reviewer).get(url, **HTMX).content.decode()
    assert "Evaluating" not in body and 'data-testid="compare-summary"' in body
