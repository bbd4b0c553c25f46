"""In a real browser, with a real worker: start the chain from the cycle page and watch it finish, read each
proposal's back-test, weaken a case until it no longer catches its failure and see approval ask for a reason,
reject another, and find the approved cases in the suite (marked where approved against the evidence)."""

import json

import pytest
from playwright.sync_api import expect

from loopsite.models import AuditEvent
from reviews.models import EvalCase, GenerationJob
from runs.models import Run
from tests.fixtures_worker import wait_for
from tests.reviews.gen_builders import approved_cycle

pytestmark = pytest.mark.django_db(transaction=True)


def _labels(cycle) -> dict[int, str]:
    from reviews.backtest import backtest_state

    return {case.pk: backtest_state(case).label for case in EvalCase.objects.filter(cycle=cycle)}


def test_an_approver_reads_back_tests_weakens_a_case_and_must_give_a_reason(
        standin, celery_worker_factory, login, live_server, reviewer, approver, tmp_path):
    cycle, runs = approved_cycle(reviewer, approver, count=3, approve_count=2)  # not all: no automatic chain
    # Answers that make the mistakes the reviewers' feedback describes (the builders' answers are already right).
    Run.objects.filter(pk=runs[0].pk).update(final_answer="Cash runway is a red flag to keep an eye on. Source "
                                                          "`finance/runway.csv`.")
    Run.objects.filter(pk=runs[1].pk).update(final_answer="ARR to rely on: $43.0M, as reported in the board deck.")
    assert not GenerationJob.objects.exists()
    celery_worker_factory(concurrency=2)
    page = login(approver)
    page.goto(f"{live_server.url}{cycle.get_absolute_url()}")
    page.click("[data-testid=generate]")
    page.wait_for_selector('[data-testid=step-2][data-status=succeeded]', timeout=60_000)
    assert "model-generated" in page.inner_text("[data-testid=insights]")

    # Every proposal is back-tested by the worker; each one was written from a failed answer and catches it.
    wait_for(lambda: EvalCase.objects.filter(cycle=cycle).count() == 2 and
             all(label in ("yes", "no") for label in _labels(cycle).values()),
             timeout=120, message="back-tests of both proposals")
    assert set(_labels(cycle).values()) == {"yes"}
    page.click("[data-testid=proposals-link]")
    first, second = EvalCase.objects.filter(cycle=cycle).order_by("eval_id")
    assert page.get_attribute(f"#case-card-{first.pk} [data-testid=catches-cell]", "data-label") == "yes"

    page.click(f"#case-card-{first.pk} h2 a")
    page.wait_for_selector('[data-testid=backtest][data-label=yes]')
    rows = page.locator("[data-testid=backtest-row]")
    targets = {rows.nth(i).get_attribute("data-target") for i in range(rows.count())}
    assert {"source_run", "fail_example", "pass_example"} <= targets
    assert page.locator("[data-testid=not-as-expected]").count() == 0
    page.screenshot(path=str(tmp_path / "backtest-yes.png"), full_page=True)

    # Weaken the checks into one the failing answer passes: a rule-only case that the answer is non-empty.
    source_answer = first.source_run.final_answer
    page.fill("#case-assertions", json.dumps([{"type": "icontains", "value": source_answer.split()[0]}]))
    page.select_option("#case-scoring_method", "deterministic")
    page.fill("#case-rubric", "")
    page.click("[data-testid=save]")
    page.wait_for_selector("[data-testid=case-note]")
    page.wait_for_selector('[data-testid=backtest][data-label=no]', timeout=60_000)
    assert page.locator("[data-testid=not-as-expected]").count() >= 1
    # The finished back-test refreshes the whole case view, the decision included.
    expect(page.locator("[data-testid=approval-concern]")).to_contain_text("does not catch the failure",
                                                                           timeout=15_000)

    # Approving without a reason is refused; with one it is approved and audited.
    page.evaluate("document.getElementById('approve-reason').removeAttribute('required')")
    page.click("[data-testid=approve]")
    page.wait_for_selector("[data-testid=decision] .errorlist")
    first.refresh_from_db()
    assert first.status == EvalCase.Status.PROPOSED
    page.fill("#approve-reason", "Kept as a smoke check while the real check is rewritten.")
    page.click("[data-testid=approve]")
    page.wait_for_selector('[data-testid=eval-case][data-status=approved]')
    page.wait_for_selector("[data-testid=approval-override]")
    first.refresh_from_db()
    assert first.approval_reason == "Kept as a smoke check while the real check is rewritten."
    assert AuditEvent.objects.filter(action="evalcase.approve", object_id=str(first.pk)).exists()
    page.screenshot(path=str(tmp_path / "backtest-no.png"), full_page=True)

    page.goto(f"{live_server.url}/cycles/{cycle.pk}/evals/")
    page.fill(f"#reason-{second.pk}", "Too close to the first case.")
    page.click(f"#case-card-{second.pk} [data-testid=reject]")
    page.wait_for_selector(f'#case-card-{second.pk} .badge-rejected')
    second.refresh_from_db()
    assert second.status == EvalCase.Status.REJECTED and second.reject_reason == "Too close to the first case."

    page.goto(f"{live_server.url}/suite/")
    suite = page.inner_text("[data-testid=suite]")
    assert first.title in suite
    assert page.locator("[data-testid=suite] [data-testid=approved-anyway]").count() == 1
    download = page.request.get(live_server.url + page.get_attribute("[data-testid=download]", "href"))
    config = json.loads(download.text().partition("\n")[2])
    assert [test["metadata"]["eval_id"] for test in config["tests"]] == [first.eval_id]
    print("SCREENSHOTS", tmp_path)
