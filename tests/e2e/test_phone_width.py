"""At 390 px (a phone), no reviewer or approver page scrolls sideways; the feedback page puts the form first."""

import pytest
from playwright.sync_api import expect

from reviews.models import EvalCase
from tests.reviews.builders import make_cycle, make_feedback, make_run

pytestmark = pytest.mark.django_db(transaction=True)
PHONE = {"width": 390, "height": 844}


@pytest.fixture
def phone(page):
    page.set_viewport_size(PHONE)
    return page


@pytest.fixture
def cycle_with_work(reviewer, reviewer2, engineer):
    runs = [make_run(label=f"trace-{n:02d}-with-a-rather-long-label") for n in (1, 2)]
    cycle = make_cycle(*runs, name="v001 review of the sample dataroom questions")
    for run in runs:
        cycle.assign(run=run, reviewer=reviewer, by=engineer)
        cycle.assign(run=run, reviewer=reviewer2, by=engineer)
    make_feedback(cycle, runs[0], reviewer2, status="submitted")
    case = EvalCase.objects.create(cycle=cycle, eval_id="parent_account_concentration_rollup",
                                   title="Customer concentration is measured at parent-account level",
                                   expected_behavior="Roll subsidiaries up to their parent accounts.",
                                   source_run=runs[0], rubric="Pass when the answer rolls up to parents.")
    return cycle, runs, case


def overflow(page, url: str) -> int:
    page.goto(url)
    page.wait_for_load_state("load")
    return page.evaluate("document.documentElement.scrollWidth")


def test_reviewer_pages_fit_a_phone(phone, login, live_server, reviewer, cycle_with_work):
    cycle, runs, _ = cycle_with_work
    login(reviewer)
    base = live_server.url
    urls = ["/inbox/", "/cycles/", f"/cycles/{cycle.pk}/", f"/cycles/{cycle.pk}/runs/{runs[0].pk}/feedback/",
            f"/cycles/{cycle.pk}/runs/{runs[1].pk}/feedback/", f"/runs/{runs[0].pk}/"]
    widths = {url: overflow(phone, base + url) for url in urls}
    assert widths == {url: w for url, w in widths.items() if w <= PHONE["width"]}, widths


def test_approver_pages_fit_a_phone(phone, login, live_server, approver, cycle_with_work):
    cycle, runs, case = cycle_with_work
    login(approver)
    base = live_server.url
    urls = ["/inbox/", "/cycles/", f"/cycles/{cycle.pk}/", f"/cycles/{cycle.pk}/runs/{runs[0].pk}/approve/",
            f"/cycles/{cycle.pk}/evals/", f"/evals/{case.pk}/", "/suite/", f"/runs/{runs[0].pk}/"]
    widths = {url: overflow(phone, base + url) for url in urls}
    assert widths == {url: w for url, w in widths.items() if w <= PHONE["width"]}, widths


def test_the_feedback_form_comes_first_with_a_toggle_to_the_evidence(phone, login, live_server, reviewer, cycle_with_work):
    cycle, runs, _ = cycle_with_work
    login(reviewer)
    phone.goto(f"{live_server.url}/cycles/{cycle.pk}/runs/{runs[1].pk}/feedback/")
    summary = phone.locator("#fb-summary")
    expect(summary).to_be_visible()
    assert summary.bounding_box()["y"] < 844  # the form is on the first screen
    evidence = phone.locator(".review-trace")
    expect(evidence).to_be_hidden()
    phone.get_by_role("button", name="Show the evidence").click()
    expect(evidence).to_be_visible()
    phone.get_by_role("button", name="Back to the form").first.click()
    expect(evidence).to_be_hidden()
    expect(summary).to_be_visible()
    assert phone.evaluate("getComputedStyle(document.querySelector('#fb-summary')).fontFamily") == \
        phone.evaluate("getComputedStyle(document.body).fontFamily")


def test_citing_from_the_evidence_returns_to_the_row(phone, login, live_server, reviewer, cycle_with_work):
    cycle, runs, _ = cycle_with_work
    login(reviewer)
    phone.goto(f"{live_server.url}/cycles/{cycle.pk}/runs/{runs[1].pk}/feedback/")
    phone.get_by_role("button", name="+ Add observation").click()
    text = phone.locator("[name=item_text]")
    text.fill("Mention parent-account concentration")
    text.focus()
    phone.get_by_role("button", name="Show the evidence").click()
    phone.locator("#trace-panel .cite-btn:visible").first.click()
    expect(phone.locator(".review-trace")).to_be_hidden()
    expect(phone.locator(".fb-row .cite-some .cite-link")).to_be_visible()
    expect(text).to_be_focused()
    assert phone.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]


def test_keyboard_shortcuts_save_and_move_on(page, login, live_server, reviewer, cycle_with_work):
    cycle, runs, _ = cycle_with_work
    login(reviewer)
    page.goto(f"{live_server.url}/cycles/{cycle.pk}/runs/{runs[0].pk}/feedback/")
    expect(page.get_by_test_id("shortcuts")).to_contain_text("save the draft")
    page.fill("#fb-summary", "Saved with the keyboard")
    page.keyboard.press("Control+s")
    expect(page.get_by_test_id("saved")).to_be_visible()
    page.keyboard.press("Alt+n")
    page.wait_for_url(f"**/cycles/{cycle.pk}/runs/{runs[1].pk}/feedback/")
    page.keyboard.press("Alt+p")
    page.wait_for_url(f"**/cycles/{cycle.pk}/runs/{runs[0].pk}/feedback/")
    expect(page.locator("#fb-summary")).to_have_value("Saved with the keyboard")
