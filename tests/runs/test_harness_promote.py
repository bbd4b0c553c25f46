import pytest
from django.core.exceptions import PermissionDenied
from django.urls import reverse

from loopsite.models import AuditEvent
from runs import promotion
from runs.models import Harness
from runs.promotion import CaseResult, Comparison, PromotionRefused

from .ui_builders import make_harness

pytestmark = pytest.mark.django_db


@pytest.fixture
def versions():
    v1 = make_harness("v001", status="promoted", eval_metadata={"version": "v001", "status": "promoted"})
    v2 = make_harness("v002", status="draft", parent=v1, eval_metadata={"version": "v002", "status": "draft"})
    return v1, v2


def comparison(v1, v2, *outcomes):
    """outcomes: (case_id, baseline_pass, candidate_pass)."""
    rows = [CaseResult(case_id=case_id, title=f"Case {case_id}", baseline_pass=base, candidate_pass=cand,
                       baseline_score=float(base) if base is not None else None,
                       candidate_score=float(cand) if cand is not None else None)
            for case_id, base, cand in outcomes]
    return Comparison(baseline=v1, candidate=v2, rows=rows, source="test")


# --- the Comparison API --------------------------------------------------------------------------


def test_a_comparison_finds_regressions_fixes_and_the_pass_rate_delta(versions):
    c = comparison(*versions, ("a", True, True), ("b", True, False), ("c", False, True), ("d", False, True),
                   ("e", False, False), ("f", True, None))
    assert [r.case_id for r in c.regressions] == ["b"]
    assert [r.case_id for r in c.unverified] == ["f"]
    assert [r.case_id for r in c.blocking] == ["b", "f"]
    assert [r.case_id for r in c.fixes] == ["c", "d"]
    assert [r.case_id for r in c.unchanged] == ["a", "e"]
    # The rates are measured on the five cases both sides ran, not on 6 vs 5 cases.
    assert [r.case_id for r in c.verified] == ["a", "b", "c", "d", "e"]
    assert c.baseline_pass_rate == pytest.approx(2 / 5)
    assert c.candidate_pass_rate == pytest.approx(3 / 5)
    assert c.pass_rate_delta == pytest.approx(1 / 5)
    assert [r.case_id for r in c.sorted_rows] == ["b", "f", "c", "d", "e", "a"]
    assert c.summary()["regressions"] == ["b"] and c.summary()["fixes"] == ["c", "d"]
    assert c.summary()["unverified"] == ["f"] and c.summary()["verified_cases"] == 5


def test_every_case_is_exactly_one_of_regression_fix_unchanged_or_not_verified(versions):
    outcomes = [("pp", True, True), ("pf", True, False), ("fp", False, True), ("ff", False, False),
                ("pn", True, None), ("fn", False, None), ("np", None, True), ("nf", None, False), ("nn", None, None)]
    c = comparison(*versions, *outcomes)
    groups = [c.regressions, c.fixes, c.unchanged, c.unverified]
    assert sum(len(group) for group in groups) == len(c.rows) == 9
    assert [r.case_id for r in c.unverified] == ["pn", "fn", "np", "nf", "nn"]  # either side without a verdict
    assert [r.outcome for r in c.rows][:4] == ["pass", "regression", "fix", "fail"]
    assert (c.baseline_pass_rate, c.candidate_pass_rate) == (pytest.approx(2 / 4), pytest.approx(2 / 4))


def test_an_errored_side_is_not_verified_and_says_so(versions):
    v1, v2 = versions
    row = CaseResult(case_id="a", baseline_pass=True, candidate_pass=None, candidate_state="error")
    c = Comparison(baseline=v1, candidate=v2, rows=[row])
    assert row.candidate_status == "error" and row.baseline_status == "pass" and row.outcome_label == "not verified"
    assert c.blocking == [row] and c.pass_rate_delta is None
    assert CaseResult(case_id="b", baseline_pass=False).candidate_status == "not run"


def test_a_comparison_without_results_has_no_pass_rate(versions):
    c = comparison(*versions)
    assert (c.baseline_pass_rate, c.candidate_pass_rate, c.pass_rate_delta) == (None, None, None)


# --- the model method ------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["reviewer", "engineer"])
def test_only_approvers_promote(request, role, versions):
    v1, v2 = versions
    with pytest.raises(PermissionDenied):
        v2.promote(by=request.getfixturevalue(role), comparison=comparison(v1, v2, ("a", True, True)))
    assert Harness.objects.get(pk=v2.pk).status == "draft"


def test_a_regression_without_a_reason_is_refused(approver, versions):
    v1, v2 = versions
    with pytest.raises(PromotionRefused) as excinfo:
        v2.promote(by=approver, comparison=comparison(v1, v2, ("keeps", True, True), ("rollup", True, False)))
    assert "1 case(s) pass on v001 and fail on v002" in str(excinfo.value)
    assert "rollup" in str(excinfo.value)
    assert [row.case_id for row in excinfo.value.blocking] == ["rollup"]
    assert dict(Harness.objects.values_list("version", "status")) == {"v001": "promoted", "v002": "draft"}
    # Nothing was promoted or retired, and the refusal itself is in the audit log with who asked and why.
    event = AuditEvent.objects.get(action__startswith="harness.")
    assert (event.action, event.actor, event.object_id) == ("harness.promotion_refused", approver, str(v2.pk))
    assert event.summary.startswith("Promotion of v002 is refused: 1 case(s) pass on v001 and fail on v002")
    assert event.after["blocking"] == ["rollup"] and event.after["comparison"]["regressions"] == ["rollup"]


def test_a_baseline_pass_not_run_on_the_candidate_is_refused_too(approver, versions):
    v1, v2 = versions
    with pytest.raises(PromotionRefused, match="1 case\\(s\\) are not verified: not run or errored \\(1 on v002\\)"):
        v2.promote(by=approver, comparison=comparison(v1, v2, ("a", True, None)))


def test_a_baseline_fail_not_run_on_the_candidate_is_refused_too(approver, versions):
    """Not silently dropped: a case that failed on the baseline and was not run on the candidate is not verified."""
    v1, v2 = versions
    with pytest.raises(PromotionRefused, match="not verified") as excinfo:
        v2.promote(by=approver, comparison=comparison(v1, v2, ("a", True, True), ("b", False, None)))
    assert [row.case_id for row in excinfo.value.blocking] == ["b"]


def test_a_case_without_a_baseline_verdict_is_refused_too(approver, versions):
    v1, v2 = versions
    with pytest.raises(PromotionRefused, match="\\(1 on v001\\)"):
        v2.promote(by=approver, comparison=comparison(v1, v2, ("a", None, True)))


def test_an_unverified_case_promotes_with_an_audited_override_reason(approver, versions):
    v1, v2 = versions
    v2.promote(by=approver, comparison=comparison(v1, v2, ("a", True, True), ("b", True, None)),
               override_reason="Case b's dataroom was withdrawn.")
    event = AuditEvent.objects.get(action="harness.promote")
    assert event.after["comparison"]["unverified"] == ["b"]
    assert event.after["override_reason"] == "Case b's dataroom was withdrawn."


def test_evidence_that_needs_a_reason_is_refused_without_one(approver, versions):
    """An uncalibrated judge (reviews.calibration) puts its reason on the comparison; promotion then needs one."""
    v1, v2 = versions
    clean = comparison(v1, v2, ("a", False, True))
    flagged = Comparison(baseline=v1, candidate=v2, rows=clean.rows, source="test",
                         needs_reason=["The judge gpt-test is not calibrated: 3 of 20 human labels."])
    assert flagged.override_needed and not flagged.blocking
    with pytest.raises(PromotionRefused, match="The judge gpt-test is not calibrated: 3 of 20 human labels. "
                                               "Record an override reason"):
        v2.promote(by=approver, comparison=flagged)
    assert Harness.objects.get(pk=v2.pk).status == "draft"
    v2.promote(by=approver, comparison=flagged, override_reason="Judge spot-checked by hand on all cases.")
    event = AuditEvent.objects.get(action="harness.promote")
    assert event.after["comparison"]["needs_reason"] == ["The judge gpt-test is not calibrated: 3 of 20 human labels."]
    assert event.after["override_reason"] == "Judge spot-checked by hand on all cases."


def test_no_comparison_needs_a_reason(approver, versions):
    with pytest.raises(PromotionRefused, match="no gate comparison"):
        versions[1].promote(by=approver)


def test_a_blank_reason_is_no_reason(approver, versions):
    v1, v2 = versions
    with pytest.raises(PromotionRefused):
        v2.promote(by=approver, comparison=comparison(v1, v2, ("a", True, False)), override_reason="   ")


def test_a_clean_comparison_promotes_and_retires_the_previous_version(approver, versions):
    v1, v2 = versions
    v2.promote(by=approver, comparison=comparison(v1, v2, ("a", True, True), ("b", False, True)))
    v1.refresh_from_db()
    v2.refresh_from_db()
    assert (v1.status, v2.status) == ("retired", "promoted")
    assert (v1.eval_metadata["status"], v2.eval_metadata["status"]) == ("retired", "promoted")
    promoted = AuditEvent.objects.get(action="harness.promote")
    assert promoted.actor == approver and promoted.object_id == str(v2.pk)
    assert promoted.before == {"status": "draft", "previous_promoted": ["v001"]}
    assert promoted.after["retired"] == ["v001"] and promoted.after["override_reason"] is None
    assert promoted.after["comparison"]["fixes"] == ["b"]
    retired = AuditEvent.objects.get(action="harness.retire")
    assert retired.object_id == str(v1.pk) and retired.after == {"status": "retired", "replaced_by": "v002"}


def test_an_override_reason_promotes_despite_a_regression_and_is_audited(approver, versions):
    v1, v2 = versions
    v2.promote(by=approver, comparison=comparison(v1, v2, ("rollup", True, False)),
               override_reason="  The rollup case is flaky on the judge; tracked in #12.  ")
    assert Harness.objects.get(pk=v2.pk).status == "promoted"
    assert Harness.objects.get(pk=v1.pk).status == "retired"
    event = AuditEvent.objects.get(action="harness.promote")
    assert event.after["override_reason"] == "The rollup case is flaky on the judge; tracked in #12."
    assert event.after["comparison"]["regressions"] == ["rollup"]
    assert "override: The rollup case is flaky" in event.summary


def test_a_comparison_for_another_candidate_is_refused(approver, versions):
    v1, v2 = versions
    v3 = make_harness("v003", status="draft", parent=v1)
    with pytest.raises(PromotionRefused, match="for v003, not v002"):
        v2.promote(by=approver, comparison=comparison(v1, v3, ("a", True, True)))


def test_the_promoted_version_cannot_be_promoted_again(approver, versions):
    with pytest.raises(PromotionRefused, match="already the promoted version"):
        versions[0].promote(by=approver, override_reason="again")


# --- the view ------------------------------------------------------------------------------------------


def url(version):
    return reverse("runs:harness-promote", args=[version])


@pytest.fixture
def regressing(monkeypatch, versions):
    v1, v2 = versions
    monkeypatch.setattr(promotion, "comparison_for",
                        lambda candidate: comparison(v1, candidate, ("keeps", True, True), ("rollup", True, False)))
    return versions


@pytest.mark.parametrize("role", ["reviewer", "engineer", "outsider"])
def test_the_view_is_403_for_non_approvers(client_for, request, role, versions):
    response = client_for(request.getfixturevalue(role)).post(url("v002"), {"override_reason": "please"})
    assert response.status_code == 403
    assert Harness.objects.get(version="v002").status == "draft"


def test_the_view_rejects_get(client_for, approver, versions):
    assert client_for(approver).get(url("v002")).status_code == 405


def test_the_panel_shows_for_approvers_only(client_for, approver, reviewer, regressing):
    html = client_for(approver).get(reverse("runs:harness-detail", args=["v002"])).content.decode()
    assert 'id="promote-panel"' in html and "Promote v002 with override" in html
    assert 'name="override_reason"' in html
    assert '<li class="outcome-regression"><span class="mono">rollup</span>' in html
    html = client_for(reviewer).get(reverse("runs:harness-detail", args=["v002"])).content.decode()
    assert 'id="promote-panel"' not in html


def test_the_view_refuses_an_unrecorded_regression(client_for, approver, regressing):
    response = client_for(approver).post(url("v002"), {"override_reason": ""})
    assert response.status_code == 200
    html = response.content.decode()
    assert 'data-testid="promote-error"' in html and "1 case(s) pass on v001 and fail on v002 (rollup)" in html
    assert Harness.objects.get(version="v002").status == "draft"


def test_the_view_answers_htmx_with_the_panel(client_for, approver, regressing):
    response = client_for(approver).post(url("v002"), {"override_reason": ""}, headers={"HX-Request": "true"})
    html = response.content.decode()
    assert response.status_code == 200
    assert "<html" not in html and html.lstrip().startswith("<h2>Promotion</h2>")
    assert "refused" in html


def test_the_view_promotes_with_an_override_reason(client_for, approver, regressing):
    response = client_for(approver).post(url("v002"), {"override_reason": "Accepted: judge flake on rollup."})
    assert response.status_code == 302 and response["Location"] == reverse("runs:harness-detail", args=["v002"])
    assert dict(Harness.objects.values_list("version", "status")) == {"v001": "retired", "v002": "promoted"}
    assert AuditEvent.objects.get(action="harness.promote").after["override_reason"] == "Accepted: judge flake on rollup."


def test_the_view_promotes_a_clean_candidate_without_a_reason(client_for, approver, monkeypatch, versions):
    v1, _ = versions
    monkeypatch.setattr(promotion, "comparison_for", lambda candidate: comparison(v1, candidate, ("a", False, True)))
    client = client_for(approver)
    html = client.get(reverse("runs:harness-detail", args=["v002"])).content.decode()
    assert 'name="override_reason"' not in html and "Promote v002</button>" in html
    response = client.post(url("v002"), {}, headers={"HX-Request": "true"})
    assert response.status_code == 200 and response["HX-Redirect"] == reverse("runs:harness-detail", args=["v002"])
    assert Harness.objects.get(version="v002").status == "promoted"


def test_the_page_promotes_with_the_gates_real_comparison(client_for, approver, versions):
    """comparison_for reads the candidate's gate run and its baseline (reviews/candidates.py)."""
    from django.utils import timezone

    from reviews.models import Cycle, EvalCase, GateRow, GateRun

    from .ui_builders import make_run

    v1, v2 = versions
    run1, run2 = make_run(harness=v1), make_run(harness=v2)
    cycle1 = Cycle.objects.create(harness=v1, name="baseline cycle")
    cycle2 = Cycle.objects.create(harness=v2, name="candidate cycle")
    cases = [EvalCase.objects.create(cycle=cycle1, eval_id=eval_id, title=eval_id.title(), expected_behavior="x",
                                     source_run=run1, status="approved") for eval_id in ("keeps", "rollup")]
    now = timezone.now()
    base = GateRun.objects.create(harness=v1, cycle=cycle1, kind="baseline", status="succeeded", total=2, passed=2,
                                  finished_at=now)
    cand = GateRun.objects.create(harness=v2, cycle=cycle2, kind="candidate", baseline=base, status="succeeded",
                                  total=2, passed=1, failed=1, finished_at=now)
    for gate_run, run, verdicts in ((base, run1, (True, True)), (cand, run2, (True, False))):
        for position, (case, passed) in enumerate(zip(cases, verdicts)):
            GateRow.objects.create(gate_run=gate_run, eval_case=case, run=run, position=position, eval_id=case.eval_id,
                                   title=case.title, passed=passed, score=float(passed))

    found = promotion.comparison_for(v2)
    assert [row.case_id for row in found.regressions] == ["rollup"]
    client = client_for(approver)
    refused = client.post(url("v002"), {"override_reason": ""})
    assert "1 case(s) pass on v001 and fail on v002 (rollup)" in refused.content.decode()
    assert Harness.objects.get(pk=v2.pk).status == "draft"
    client.post(url("v002"), {"override_reason": "Rollup judged wrongly; see gate run."})
    assert Harness.objects.get(pk=v2.pk).status == "promoted"
    assert AuditEvent.objects.get(action="harness.promote").after["comparison"]["source"] == (
        f"gate runs {base.pk} (v001) and {cand.pk} (v002)")


def test_the_panel_counts_unverified_cases_and_asks_for_a_reason(client_for, approver, monkeypatch, versions):
    v1, _ = versions
    monkeypatch.setattr(promotion, "comparison_for", lambda candidate: Comparison(
        baseline=v1, candidate=candidate, source="test",
        rows=[CaseResult(case_id="a", baseline_pass=False, candidate_pass=True),
              CaseResult(case_id="b", baseline_pass=False, candidate_pass=None, candidate_state="error"),
              CaseResult(case_id="c", baseline_pass=True)],
        needs_reason=["The rubric judge (gpt-test) was not calibrated."]))
    html = client_for(approver).get(reverse("runs:harness-detail", args=["v002"])).content.decode()
    assert 'data-testid="case-total">3 case(s)</span>' in html
    assert 'data-testid="unverified-count">2 not verified</span>' in html
    assert "On the 1 case(s) both sides ran: 0% → 100%." in html
    assert '<span class="mono">b</span>  — fail on v001, error on v002 (not verified)' in html
    assert '<span class="mono">c</span>  — pass on v001, not run on v002 (not verified)' in html
    assert 'data-testid="needs-reason">The rubric judge (gpt-test) was not calibrated.' in html
    assert 'name="override_reason"' in html and "Promote v002 with override" in html
