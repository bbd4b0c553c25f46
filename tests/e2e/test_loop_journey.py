"""Issue 4 in a real browser: the whole loop. An engineer starts a cycle of five runs; a reviewer writes feedback
for all five through the HTMX form; an approver approves them; the proposals appear and the approver decides
them all. After the last decision the gate and then HALO start on their own: the cycle dashboard shows their
progress live; the gate page shows cases × runs; the handoff page shows the top three changes and the insights
by feedback source; codex_handoff.md downloads with the seven sections in order.

Against the live app, a real Celery worker (Redis, prefork, the test database; promptfoo and HALO run from
it), and the offline stand-in model. No network.
"""

import re
import time

import pytest
from playwright.sync_api import expect

from reviews.models import EvalCase, GateRun, Optimization
from tests.e2e.journey import (  # noqa: F401 (journey_worker and role_groups are fixtures)
    approve_all,
    approve_from_list,
    wait_for_backtests,
    assign_all,
    goto,
    journey_worker,
    mark_page,
    assert_not_reloaded,
    proposal_ids,
    reject_from_list,
    review_all_via_next,
    role_groups,
    start_cycle_of_five,
    wait_for_proposals,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("role_groups")]

SECTIONS = (
    "## Executive summary",
    "## Top 3 changes to implement first",
    "## Ranked recommendation table",
    "## Supporting diagnosis and evidence",
    "## Detailed recommendations",
    "## Insights by feedback source",
    "## Machine-readable summary",
)
# Issue 4: "after the last eval approval, gate and HALO finish offline within a minute".
LOOP_TIMEOUT_MS = 60_000

# Records the dashboard's step states after every HTMX swap, to prove the progress was shown live.
WATCH_STEPS = """() => {
  window.__stepStates = [];
  const record = () => {
    const state = {};
    document.querySelectorAll('#dashboard [data-testid^=step-]').forEach(el => {
      state[el.dataset.testid] = el.dataset.state;
    });
    window.__stepStates.push(state);
  };
  record();
  document.body.addEventListener('htmx:afterSettle', record);
}"""


def test_after_the_last_eval_decision_the_gate_and_halo_run_and_the_handoff_downloads(
        journey_worker, login, live_server, settings, sample, engineer, reviewer, approver):
    settings.AUTO_GATE = True
    base = live_server.url

    # --- runs, review, approval, proposals (as in test_review_journey, without its detours)
    page = login(engineer)
    _, cycle_pk = start_cycle_of_five(page, base)
    run_pks = assign_all(page, base, cycle_pk, reviewer.username)
    page = login(reviewer)
    review_all_via_next(page, base, cycle_pk, len(run_pks), fancy_first=False)
    page = login(approver)
    approve_all(page, base, cycle_pk, run_pks)
    wait_for_proposals(page, base, cycle_pk)

    # Before the decisions the dashboard says what the gate waits for.
    goto(page, base, f"/cycles/{cycle_pk}/dashboard/")
    expect(page.locator("[data-testid=step-gate]")).to_have_attribute("data-state", "waiting")
    expect(page.locator("[data-testid=waiting-gate]")).to_contain_text("to be decided")
    assert not GateRun.objects.filter(cycle_id=cycle_pk).exists()

    wait_for_backtests(cycle_pk)
    goto(page, base, f"/cycles/{cycle_pk}/evals/")
    cases = proposal_ids(page)
    assert len(cases) >= 5
    reject_from_list(page, cases[-1], "Too close to another case.")
    for pk in cases[:-1]:
        approve_from_list(page, pk)  # the last of these is the cycle's last decision: the gate starts
    decided_at = time.monotonic()
    approved = EvalCase.objects.filter(cycle_id=cycle_pk, status=EvalCase.Status.APPROVED).count()
    assert approved == len(cases) - 1

    # --- the cycle dashboard shows the gate and HALO progressing by themselves (HTMX polling, no reload)
    goto(page, base, f"/cycles/{cycle_pk}/dashboard/")
    mark_page(page)
    page.evaluate(WATCH_STEPS)
    expect(page.locator("[data-testid=step-runs]")).to_have_attribute("data-state", "done")
    expect(page.locator("[data-testid=step-feedback]")).to_have_attribute("data-state", "done")
    expect(page.locator("[data-testid=step-approved]")).to_have_attribute("data-state", "done")
    expect(page.locator("[data-testid=step-gate]")).to_have_attribute("data-state", "done", timeout=LOOP_TIMEOUT_MS)
    expect(page.locator("[data-testid=step-halo]")).to_have_attribute("data-state", "done", timeout=LOOP_TIMEOUT_MS)
    expect(page.locator("[data-testid=step-handoff]")).to_have_attribute("data-state", "done", timeout=10_000)
    loop_seconds = time.monotonic() - decided_at
    assert loop_seconds < 60, f"gate and HALO took {loop_seconds:.0f} s after the last decision"
    assert_not_reloaded(page)
    seen = page.evaluate("window.__stepStates")
    assert any(state.get("step-halo") in ("waiting", "active") for state in seen), seen  # shown while under way
    expect(page.locator("[data-testid=dashboard-active]")).to_have_count(0)
    expect(page.locator("[data-testid=counts-gate]")).to_contain_text(f"of {approved}")
    expect(page.locator("[data-testid=counts-handoff]")).to_have_text("7/7 sections")

    gate_run = GateRun.objects.get(cycle_id=cycle_pk, kind=GateRun.Kind.BASELINE)
    assert gate_run.status == GateRun.Status.SUCCEEDED and gate_run.total == approved
    optimization = Optimization.objects.get(cycle_id=cycle_pk)
    assert optimization.status == Optimization.Status.SUCCEEDED and optimization.gate_run_id == gate_run.pk

    # --- the gate page: cases × runs, each row linked to its case and run, and the totals
    page.locator("[data-testid=step-gate] a").click()
    page.wait_for_url(f"{base}/gate/{gate_run.pk}/")
    expect(page.locator("[data-testid=gate-status-badge]")).to_have_text("Succeeded")
    rows = page.locator("[data-testid=gate-rows] tbody tr")
    expect(rows).to_have_count(approved)
    expect(page.locator("[data-testid=gate-totals]")).to_contain_text(f"{gate_run.passed} of {approved} passed")
    stored = {row.eval_case_id: row for row in gate_run.rows.all()}
    for case_pk, row in stored.items():
        shown = page.locator(f"[data-testid=gate-row-{case_pk}]")
        expect(shown.locator(f"a[href='/evals/{case_pk}/']")).to_have_count(1)
        expect(shown.locator(f"a[href='/runs/{row.run_id}/']")).to_have_count(1)
        expect(shown.locator(".badge")).to_have_text("pass" if row.passed else ("error" if row.error else "fail"))
    assert {row.run_id for row in stored.values()} <= set(run_pks)

    # --- the HALO page: its tool calls, the input summary, the handoff link
    goto(page, base, f"/cycles/{cycle_pk}/halo/")
    expect(page.locator("[data-testid=halo-status]")).to_have_text("Succeeded")
    assert page.locator("[data-testid=tool-call]").count() > 0
    expect(page.locator("[data-testid=input-summary-table]")).to_be_visible()
    page.locator("[data-testid=handoff-link]").click()
    page.wait_for_url(f"{base}/halo/{optimization.pk}/handoff/")

    # --- the handoff: the top three changes and the insights by feedback source, then codex_handoff.md
    expect(page.locator("[data-testid=missing-sections]")).to_have_count(0)
    summary = page.locator("[data-testid=handoff-summary] .markdown")
    expect(summary.locator("h2")).to_have_text(["Top 3 changes to implement first", "Insights by feedback source"])
    top = summary.locator("h2 + ol > li, h2 + ul > li, h2 + table tbody tr").first
    expect(top).to_be_visible()
    full = page.locator("[data-testid=handoff-full] .markdown h2")
    expect(full).to_have_text([section.removeprefix("## ") for section in SECTIONS])

    with page.expect_download() as info:
        page.locator("[data-testid=handoff-download]").click()
    download = info.value
    assert download.suggested_filename == "codex_handoff.md"
    text = open(download.path(), encoding="utf-8").read()
    headings = [line.strip() for line in text.splitlines() if re.match(r"^## \S", line)]
    assert headings == list(SECTIONS), headings
