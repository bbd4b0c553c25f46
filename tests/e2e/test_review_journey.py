"""Issue 3 in a real browser: an engineer starts a cycle of five runs and assigns them; a reviewer writes the
seed's feedback on all five through the HTMX form (rows added, reordered, a span cited from the trace panel);
an approver approves each run; the chain on the worker proposes evals; the approver edits one, approves four,
rejects one with a reason, and downloads the suite. A reviewer gets 403 on an approval URL.

Against the live app, a real Celery worker (Redis, prefork, the test database) and the offline stand-in.
"""

import json
import os
import subprocess
from pathlib import Path

import pytest
from playwright.sync_api import expect

from loopsite.models import AuditEvent
from reviews.models import EvalCase, Feedback, FeedbackItem
from tests.e2e.journey import (  # noqa: F401 (journey_worker and role_groups are fixtures)
    SPECS,
    approve_all,
    approve_from_list,
    assign_all,
    edit_and_approve_on_case_page,
    goto,
    journey_worker,
    proposal_ids,
    reject_from_list,
    review_all_via_next,
    role_groups,
    start_cycle_of_five,
    wait_for_backtests,
    wait_for_proposals,
)

PROMPTFOO = Path(__file__).resolve().parents[2] / "node_modules" / ".bin" / "promptfoo"

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("role_groups")]

EDITED_TITLE = "Runway: name the 11-month figure and the financing pressure"
REJECT_REASON = "Duplicates the parent-account case; keep one."


def run_promptfoo(config_path, tmp_path, *, judge_url: str) -> dict:
    if not PROMPTFOO.exists():
        pytest.fail(f"promptfoo is not installed at {PROMPTFOO}: run `make test`, which installs it")
    env = {
        "PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path),
        "PROMPTFOO_DISABLE_TELEMETRY": "1", "PROMPTFOO_DISABLE_UPDATE": "1", "PROMPTFOO_DISABLE_SHARING": "1",
        "PROMPTFOO_CONFIG_DIR": str(tmp_path / ".promptfoo"), "PROMPTFOO_DISABLE_WAL_MODE": "1",
        "OPENAI_API_KEY": "standin-no-key", "METADATA_SERVER_DETECTION": "none", "OPENAI_BASE_URL": judge_url,
    }
    out = tmp_path / "suite-results.json"
    process = subprocess.run(
        [str(PROMPTFOO), "eval", "-c", str(config_path), "-o", str(out), "--no-cache", "--no-table"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    assert process.returncode in (0, 100) and out.exists(), process.stdout[-2000:] + process.stderr[-2000:]
    return json.loads(out.read_text(encoding="utf-8"))


def test_a_cycle_is_reviewed_approved_and_becomes_a_suite(journey_worker, login, live_server, settings, sample,
                                                          engineer, reviewer, approver, standin, tmp_path):
    settings.AUTO_GATE = False  # this journey ends at the suite; tests/e2e/test_loop_journey.py goes on
    base = live_server.url

    # --- engineer: a cycle of five runs, assigned to the reviewer
    page = login(engineer)
    _, cycle_pk = start_cycle_of_five(page, base)
    run_pks = assign_all(page, base, cycle_pk, reviewer.username)
    assert len(run_pks) == 5

    # --- reviewer: "Next run to review" five times; the seed's feedback through the HTMX form
    page = login(reviewer)
    notes = review_all_via_next(page, base, cycle_pk, 5)
    assert sorted(note["run"] for note in notes) == sorted(run_pks)
    assert {note["question"] for note in notes} == set(SPECS)
    cited = notes[0]["cited_span"]
    assert all(note["claim_check"] for note in notes)

    # What was typed is what was stored, in the page's order, with the citation.
    for note in notes:
        spec = SPECS[note["question"]]
        feedback = Feedback.objects.get(cycle_id=cycle_pk, run_id=note["run"], reviewer=reviewer, is_merged=False)
        assert (feedback.status, feedback.summary, feedback.theme, feedback.verdict) == (
            Feedback.Status.SUBMITTED, spec.summary, spec.theme, spec.verdict)
        items = list(feedback.items.order_by("position", "id"))
        assert [(i.kind, i.text) for i in items] == (
            [(FeedbackItem.Kind.REQUIRED_OBSERVATION, text) for text in spec.required]
            + [(FeedbackItem.Kind.PROHIBITED_CLAIM, text) for text in spec.prohibited])
    first_items = Feedback.objects.get(cycle_id=cycle_pk, run_id=notes[0]["run"], is_merged=False).items.order_by(
        "position", "id")
    assert first_items[0].citation_span_id == cited
    assert all(not item.citation_span_id for item in first_items[1:])

    # A reviewer cannot approve: 403 on the approval page.
    response = page.goto(f"{base}/cycles/{cycle_pk}/runs/{run_pks[0]}/approve/")
    assert response.status == 403
    csrf = next(c["value"] for c in page.context.cookies() if c["name"] == "csrftoken")
    response = page.request.post(f"{base}/cycles/{cycle_pk}/runs/{run_pks[0]}/approve/",
                                 form={"op": "approve", "version": "0"}, headers={"X-CSRFToken": csrf})
    assert response.status == 403 and "CSRF" not in response.text()  # refused for the role, not the token
    assert not Feedback.objects.filter(cycle_id=cycle_pk, status=Feedback.Status.APPROVED).exists()

    # --- approver: approve each run's merged feedback; the last approval starts the chain on the worker
    page = login(approver)
    approve_all(page, base, cycle_pk, run_pks)
    assert AuditEvent.objects.filter(actor=approver, action__contains="approve").count() >= 5
    wait_for_proposals(page, base, cycle_pk)
    wait_for_backtests(cycle_pk)  # approving a case whose back-test is still out needs a written reason
    page.locator("[data-testid=proposals-link]").click()
    page.wait_for_url(f"{base}/cycles/{cycle_pk}/evals/")
    cases = proposal_ids(page)
    assert len(cases) >= 5, f"expected a proposal per run, got {len(cases)}"
    expect(page.locator("[data-testid=provenance]").first).to_contain_text("Source run")
    expect(page.locator("[data-testid=source-feedback]").first).to_contain_text(reviewer.username)

    # Edit one and approve it on its page; approve three more from the list; reject one with a reason.
    by_pk = {case.pk: case for case in EvalCase.objects.filter(cycle_id=cycle_pk)}
    runway = next(pk for pk in cases if by_pk[pk].source_run.question.text.startswith("What do runway"))
    concentration = next(pk for pk in cases if by_pk[pk].source_run.question.text.startswith("What is the real"))
    others = [pk for pk in cases if pk not in (runway, concentration)]
    edit_and_approve_on_case_page(page, base, runway, EDITED_TITLE)
    goto(page, base, f"/cycles/{cycle_pk}/evals/")
    for pk in others[:3]:
        approve_from_list(page, pk)
    reject_from_list(page, concentration, REJECT_REASON)
    for pk in others[3:]:  # any further proposals are decided too, so nothing is left open
        approve_from_list(page, pk)

    decided = {case.pk: case for case in EvalCase.objects.filter(cycle_id=cycle_pk)}
    approved = [pk for pk, case in decided.items() if case.status == EvalCase.Status.APPROVED]
    assert len(approved) == len(cases) - 1
    assert decided[runway].title == EDITED_TITLE and decided[runway].approved_by == approver
    assert (decided[concentration].status, decided[concentration].reject_reason) == (
        EvalCase.Status.REJECTED, REJECT_REASON)

    # --- the suite page and its download (a promptfoo config)
    page.get_by_role("link", name="Suite", exact=True).click()
    page.wait_for_url(f"{base}/suite/")
    suite = page.locator("[data-testid=suite]")
    expect(suite.locator("tbody tr")).to_have_count(len(approved))
    expect(suite).to_contain_text(EDITED_TITLE)
    expect(suite).not_to_contain_text(decided[concentration].title)
    expect(page.locator(f"[data-testid=suite-row-{runway}]")).to_contain_text(approver.username)
    expect(page.locator(f"[data-testid=suite-row-{runway}]")).to_contain_text(reviewer.username)
    with page.expect_download() as info:
        page.locator("[data-testid=download]").click()
    download = info.value
    assert download.suggested_filename.startswith("loopsite-suite-") and download.suggested_filename.endswith(".yaml")
    text = open(download.path(), encoding="utf-8").read()
    comment, _, document = text.partition("\n")
    assert comment.startswith("# Run: ./node_modules/.bin/promptfoo eval")
    config = json.loads(document)  # JSON is YAML
    ids = {test["metadata"]["eval_id"] for test in config["tests"]}
    assert ids == {decided[pk].eval_id for pk in approved}
    titles = {test["description"] for test in config["tests"]}
    assert EDITED_TITLE in titles

    # promptfoo (the project's, offline, the stand-in as judge) runs the suite as downloaded.
    saved = tmp_path / download.suggested_filename
    download.save_as(saved)
    results = run_promptfoo(saved, tmp_path, judge_url=standin)
    rows = results["results"]["results"]
    assert {row["testCase"]["metadata"]["eval_id"] for row in rows} == ids
    assert all(row["response"]["output"] for row in rows)  # each test carried its source run's answer
