"""Helpers shared by the browser journeys (tests/e2e/test_*_journey.py).

Each journey drives the running app (pytest-django's live_server) in Debian's Chromium,
with a REAL Celery worker (tests/fixtures_worker.py) against Redis and the test database,
and the offline stand-in model. Waits are on selectors, test ids and text, never sleeps;
every wait has a bound.

Import the fixtures you use into the test module (`from tests.e2e.journey import journey_worker, role_groups`)
and mark the module `pytest.mark.usefixtures("role_groups")` so the users' groups exist.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest
from playwright.sync_api import Page, expect

# Runs take a few seconds each with the stand-in; five run in parallel on the worker.
RUNS_TIMEOUT_MS = 120_000
CHAIN_TIMEOUT_MS = 90_000
STEP_TIMEOUT_MS = 20_000

DEFAULT_BANK = (0, 1, 2, 4, 6)


# --- the seed's human feedback (notebook Step 4, specs_by_question) --------------------------------------


@dataclass(frozen=True)
class Spec:
    summary: str
    required: tuple[str, ...]
    prohibited: tuple[str, ...]
    theme: str
    verdict: str = "fail"


SPECS = {
    "What do runway and burn tell us about near-term financing risk?": Spec(
        "State both the 11-month runway and rising burn as financing risk, not just a generic red flag.",
        ("Name the 11-month runway", "Tie burn to near-term financing pressure"),
        ("Do not imply the company has more than 12 months of runway",),
        "financial_risk", "mixed",
    ),
    "How strong is revenue quality, and which ARR figure should we rely on?": Spec(
        "Use the controlled ARR bridge as the reliable figure and preserve the board-versus-finance contradiction.",
        ("Prefer finance ARR over board ARR", "Preserve the ARR contradiction"),
        ("Do not silently reconcile the ARR gap",),
        "revenue_quality",
    ),
    "What is the real customer concentration risk after parent-account rollups?": Spec(
        "Roll concentration up to Northstar Holdings. Legal-entity framing understates the real dependency.",
        ("Mention parent-account concentration", "Use account_hierarchy.csv"),
        ("Do not stop at legal-entity concentration",),
        "customer_concentration",
    ),
    "How ready is the company for enterprise security review?": Spec(
        "Be exact about certification status: Type I is complete; Type II is still in progress.",
        ("Distinguish Type I from Type II", "Treat sales FAQ as weaker evidence"),
        ("Do not say SOC 2 is simply complete",),
        "security_readiness",
    ),
    "What unsupported metrics should we refuse to infer from the dataroom?": Spec(
        "Refuse official NRR and CAC payback when the dataroom does not support them.",
        ("Mark official NRR unsupported", "Mark CAC payback unsupported"),
        ("Do not promote the management NRR estimate into an official metric",),
        "unsupported_metrics",
    ),
}


# --- fixtures -----------------------------------------------------------------------------------------------


@pytest.fixture
def role_groups(transactional_db):
    """The role groups, which a migration creates and a transactional test's flush removes: a journey that runs
    after another transactional test would otherwise find no groups to put its users in."""
    from django.contrib.auth.models import Group

    from loopsite.roles import ROLES

    for name in ROLES:
        Group.objects.get_or_create(name=name)


@pytest.fixture
def journey_worker(standin, celery_worker_factory):
    """One real prefork worker for the whole journey: five processes, so a batch of five runs in parallel."""
    return celery_worker_factory(concurrency=5)


# --- small page helpers -----------------------------------------------------------------------------------


def goto(page: Page, base: str, path: str):
    response = page.goto(base + path)
    assert response is not None and response.status == 200, f"GET {path}: {response and response.status}"
    return response


def mark_page(page: Page) -> None:
    """Tag the current document; `assert_not_reloaded` proves later changes came in by HTMX, not a reload."""
    page.evaluate("window.__journeyMark = 'kept'")


def assert_not_reloaded(page: Page) -> None:
    assert page.evaluate("window.__journeyMark") == "kept", "the page was reloaded instead of updated in place"


# --- runs --------------------------------------------------------------------------------------------------


def start_default_runs(page: Page, base: str) -> int:
    """Engineer: the Start runs page with the default five preselected; returns the batch id."""
    goto(page, base, "/runs/start/")
    checked = page.locator("input[name=questions]:checked")
    expect(checked).to_have_count(len(DEFAULT_BANK))
    page.get_by_role("button", name="Start runs").click()
    page.wait_for_url(re.compile(r"/runs/\?batch=\d+"))
    expect(page.locator(".msg-success")).to_contain_text("Started 5 run(s)")
    return int(re.search(r"batch=(\d+)", page.url).group(1))


def wait_runs_finish(page: Page, count: int, *, timeout: int = RUNS_TIMEOUT_MS) -> None:
    """On the runs list: wait (HTMX polling, no reload) until `count` rows have finished; all must succeed."""
    page.wait_for_function(
        """(n) => document.querySelectorAll('#run-rows .badge-succeeded, #run-rows .badge-failed').length >= n""",
        arg=count, timeout=timeout,
    )
    rows = page.locator("#run-rows tr")
    failed = page.locator("#run-rows .badge-failed")
    assert failed.count() == 0, f"a run failed: {page.inner_text('#run-rows')}"
    expect(page.locator("#run-rows .badge-succeeded")).to_have_count(count)
    assert rows.count() == count
    # Finished: the partial answered "stop polling" and dropped its trigger.
    expect(page.locator("#run-rows[hx-trigger]")).to_have_count(0, timeout=5_000)


def start_cycle_of_five(page: Page, base: str) -> tuple[int, int]:
    """Engineer starts the default five and waits until they succeed; returns (batch id, cycle pk)."""
    from reviews.models import Cycle

    batch_id = start_default_runs(page, base)
    wait_runs_finish(page, len(DEFAULT_BANK))
    cycle = Cycle.objects.get(batch_id=batch_id)
    goto(page, base, "/cycles/")
    page.locator(f"[data-testid=cycles] a[href='{cycle.get_absolute_url()}']").click()
    expect(page.locator("[data-testid=queue]")).to_be_visible()
    return batch_id, cycle.pk


# --- review queue and feedback -----------------------------------------------------------------------------


def assign_all(page: Page, base: str, cycle_pk: int, reviewer_name: str) -> list[int]:
    """Engineer/approver: assign every run of the cycle's queue to the reviewer (HTMX row swaps)."""
    goto(page, base, f"/cycles/{cycle_pk}/")
    mark_page(page)
    row_ids = [int(t.removeprefix("queue-row-")) for t in
               page.locator("[data-testid^=queue-row-]").evaluate_all("els => els.map(e => e.dataset.testid)")]
    for run_pk in row_ids:
        row = page.locator(f"#queue-row-{run_pk}")
        row.locator("select[name=reviewer]").select_option(label=reviewer_name)
        row.get_by_role("button", name="Assign").click()
        expect(page.locator(f"#queue-row-{run_pk} td:nth-child(4) li").first).to_contain_text(reviewer_name)
    assert_not_reloaded(page)
    return row_ids


def reveal_span(page: Page, span) -> None:
    """Open the collapsed ancestors of a span row (`details.span`) in the span tree, top down, as a user would."""
    ancestors = span.evaluate(
        "el => { const ids = []; let p = el.parentElement.closest('details');"
        " while (p) { ids.unshift(p.id); p = p.parentElement.closest('details'); } return ids; }")
    for ancestor in ancestors:
        holder = page.locator(f"[id='{ancestor}']")
        if holder.get_attribute("open") is None:
            holder.locator(":scope > summary").click()
        expect(holder).to_have_attribute("open", "")


def _rows(page: Page, kind: str):
    return page.locator(f"#feedback-form .fb-rows[data-kind={kind}] .fb-row")


def _add_row(page: Page, kind: str, text: str) -> None:
    rows = _rows(page, kind)
    before = rows.count()
    label = "+ Add observation" if kind == "required_observation" else "+ Add prohibited claim"
    page.get_by_role("button", name=label).click()
    expect(rows).to_have_count(before + 1)
    expect(page.locator(".htmx-settling")).to_have_count(0)  # settled: htmx has moved the focus to the new row
    new = rows.nth(before).locator("[name=item_text]")
    new.fill(text)


def write_feedback(page: Page, spec: Spec, *, cite_span: bool = False, reorder: bool = False) -> dict:
    """Reviewer, on the feedback page: fill the seed's feedback through the HTMX form and submit it.

    `cite_span`: cite a span from the trace panel on the first observation.
    `reorder`: add the observations in reverse, then move the last one up, so the order ends as the seed's.
    Returns what the page showed along the way (the cited span id, the claim check)."""
    seen: dict = {}
    expect(page.locator("[data-testid=trace-panel]")).to_be_visible()
    page.fill("#fb-summary", spec.summary)
    page.fill("#fb-theme", spec.theme)
    page.select_option("#fb-verdict", spec.verdict)
    expect(page.locator("[data-testid=saved]")).to_be_visible(timeout=STEP_TIMEOUT_MS)  # autosave made a draft

    observations = list(spec.required)
    if reorder:
        observations = observations[1:] + observations[:1]  # the first one last, moved up below
    for text in observations:
        _add_row(page, "required_observation", text)
    if reorder:
        rows = _rows(page, "required_observation")
        last = rows.count() - 1
        rows.nth(last).get_by_role("button", name="Move up").click()
        expect(_rows(page, "required_observation").nth(last - 1).locator("[name=item_text]")).to_have_value(
            spec.required[0])
    for text in spec.prohibited:
        _add_row(page, "prohibited_claim", text)
        check = _rows(page, "prohibited_claim").last.locator(".claim-check")
        expect(check.locator("[data-testid=claim-found], [data-testid=claim-absent]")).to_be_visible(
            timeout=STEP_TIMEOUT_MS)
        seen["claim_check"] = check.inner_text()

    if cite_span:
        first = _rows(page, "required_observation").first
        first.locator("[name=item_text]").click()  # the row to cite into
        tool_row = page.locator("#trace-panel details.span.kind-tool").first
        reveal_span(page, tool_row)
        tool_span = tool_row.locator(":scope > summary .span-name[data-span-id]")
        span_id = tool_span.get_attribute("data-span-id")
        tool_span.locator(".cite-btn").click()
        expect(first.locator(".fb-cite")).to_have_attribute("data-cites", "span")
        # The citation reads as what the span did (its name and command), with the id in its link and title.
        expect(first.locator(".cite-link")).to_contain_text("exec_command")
        expect(first.locator(".cite-link")).to_have_attribute("href", re.compile(rf"#span-{re.escape(span_id)}$"))
        expect(first.locator("input[name=item_span]")).to_have_value(span_id)
        seen["cited_span"] = span_id

    page.get_by_role("button", name="Submit for approval").click()
    try:
        expect(page.locator("[data-testid=feedback-status]")).to_have_text("Submitted", timeout=STEP_TIMEOUT_MS)
    except AssertionError as exc:
        raise AssertionError(f"not submitted; the panel says:\n{page.inner_text('#feedback-panel')}") from exc
    readonly = page.locator("[data-testid=feedback-readonly]")
    for text in (spec.summary, *spec.required, *spec.prohibited):
        expect(readonly).to_contain_text(text)
    if cite_span:
        expect(readonly.locator(".cite-link").first).to_have_attribute(
            "href", re.compile(rf"#span-{re.escape(seen['cited_span'])}$"))
    return seen


def question_on_page(page: Page) -> str:
    return page.locator("#trace-panel .question-card .question").inner_text().strip()


def review_all_via_next(page: Page, base: str, cycle_pk: int, count: int, *, fancy_first: bool = True) -> list[dict]:
    """Reviewer: "Next run to review" through the cycle; the seed's feedback on each; returns per-run notes."""
    goto(page, base, f"/cycles/{cycle_pk}/")
    notes = []
    for index in range(count):
        page.locator("[data-testid=next-run]").first.click()
        page.wait_for_url(re.compile(rf"/cycles/{cycle_pk}/runs/\d+/feedback/$"))
        run_pk = int(re.search(r"/runs/(\d+)/feedback/", page.url).group(1))
        question = question_on_page(page)
        fancy = fancy_first and index == 0
        seen = write_feedback(page, SPECS[question], cite_span=fancy, reorder=fancy)
        notes.append({"run": run_pk, "question": question, **seen})
        goto(page, base, f"/cycles/{cycle_pk}/")
    expect(page.locator("[data-testid=next-run]")).to_have_count(0)
    expect(page.locator("[data-testid=progress]")).to_contain_text(f"{count} reviewed")
    return notes


def approve_all(page: Page, base: str, cycle_pk: int, run_pks: list[int]) -> None:
    """Approver: open each run's approval page from the queue and approve the merged feedback."""
    for run_pk in run_pks:
        goto(page, base, f"/cycles/{cycle_pk}/")
        page.locator(f"#queue-row-{run_pk}").get_by_role("link", name="Approve").click()
        page.wait_for_url(re.compile(rf"/cycles/{cycle_pk}/runs/{run_pk}/approve/$"))
        expect(page.locator("[data-testid=reviewer-card]")).to_have_count(1)
        expect(page.locator("#fb-summary")).not_to_have_value("")  # the merge starts from the submission
        page.get_by_role("button", name="Approve merged feedback").click()
        expect(page.locator("[data-testid=feedback-status]")).to_have_text("Approved", timeout=STEP_TIMEOUT_MS)
    goto(page, base, f"/cycles/{cycle_pk}/")
    expect(page.locator("[data-testid=progress]")).to_contain_text(f"{len(run_pks)} approved")


def wait_for_proposals(page: Page, base: str, cycle_pk: int) -> None:
    """On the cycle page: the chain (started by the last approval) runs on the worker; wait for it by polling."""
    goto(page, base, f"/cycles/{cycle_pk}/")
    expect(page.locator("[data-testid=generation-steps]")).to_be_visible(timeout=STEP_TIMEOUT_MS)
    expect(page.locator("[data-testid=step-2][data-status=succeeded]")).to_be_visible(timeout=CHAIN_TIMEOUT_MS)
    expect(page.locator("[data-testid=generation-active]")).to_have_count(0)
    expect(page.locator("[data-testid=insights]")).to_contain_text("model-generated")


def proposal_ids(page: Page) -> list[int]:
    ids = page.locator("[data-testid^=case-card-]").evaluate_all("els => els.map(e => e.dataset.testid)")
    return [int(t.removeprefix("case-card-")) for t in ids]


def wait_for_backtests(cycle_pk: int, *, timeout: float = 120) -> None:
    """Until every proposal of the cycle has finished its back-test: approving earlier needs a written reason."""
    from reviews.models import EvalCase
    from tests.fixtures_worker import wait_for

    def done():
        return all(not case.backtest_state().active for case in EvalCase.objects.filter(cycle_id=cycle_pk))

    wait_for(done, timeout=timeout, message="the proposals' back-tests")


def approve_from_list(page: Page, case_pk: int) -> None:
    card = page.locator(f"#case-card-{case_pk}")
    card.locator("[data-testid=approve]").click()
    expect(page.locator(f"#case-card-{case_pk} [data-testid=case-status]")).to_have_text("Approved")


def reject_from_list(page: Page, case_pk: int, reason: str) -> None:
    page.fill(f"#reason-{case_pk}", reason)
    page.locator(f"#case-card-{case_pk} [data-testid=reject]").click()
    expect(page.locator(f"#case-card-{case_pk} [data-testid=case-status]")).to_have_text("Rejected")
    expect(page.locator(f"#case-card-{case_pk}")).to_contain_text(reason)


def edit_and_approve_on_case_page(page: Page, base: str, case_pk: int, new_title: str) -> None:
    goto(page, base, f"/evals/{case_pk}/")
    page.fill("#case-title", new_title)
    page.locator("[data-testid=save]").click()
    expect(page.locator("[data-testid=case-note]")).to_have_text("Saved.")
    expect(page.locator("[data-testid=history]")).to_contain_text(f"+{new_title}")
    page.locator("[data-testid=approve]").click()
    expect(page.locator("[data-testid=eval-case][data-status=approved]")).to_be_visible()
