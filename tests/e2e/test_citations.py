"""In a real browser: a citation reads as the span's name, and clicking it opens and highlights the span beside the form."""

import pytest
from playwright.sync_api import expect

from tests.reviews.builders import make_cycle, make_run

pytestmark = pytest.mark.django_db(transaction=True)


def _start_row(page, login, live_server, reviewer, engineer, *, add: str, text: str):
    """A reviewer opens a run's feedback form, adds a row with `add` and types `text` into it: (run, url)."""
    run = make_run()
    cycle = make_cycle(run)
    cycle.assign(run=run, reviewer=reviewer, by=engineer)
    login(reviewer)
    url = f"{live_server.url}/cycles/{cycle.pk}/runs/{run.pk}/feedback/"
    page.goto(url)
    page.get_by_role("button", name=add).click()
    field = page.locator("[name=item_text]")
    field.fill(text)
    field.focus()
    return run, url


def test_a_span_citation_is_named_and_opens_beside_the_form(page, login, live_server, reviewer, engineer):
    run, url = _start_row(page, login, live_server, reviewer, engineer, add="+ Add observation",
                          text="The agent read the memo")
    tool_span = run.spans.get(name="exec_command").span_id
    page.locator("#trace-panel details.span > summary").first.click()  # open the root span to see its child
    page.locator(f"#span-{tool_span} .cite-btn").click()
    link = page.locator(".fb-row .cite-link")
    expect(link).to_have_text("exec_command")
    expect(page.get_by_test_id("saved")).to_be_visible()
    page.goto(url)  # after a reload the saved citation still reads as the span's name
    link = page.locator(".fb-row .cite-link")
    expect(link).to_have_text("exec_command")
    link.click()
    assert page.url == url  # it stayed on the page
    span = page.locator(f"#span-{tool_span}")
    assert span.evaluate("el => el.open && el.classList.contains('is-cited')")


def _expect_in_view(page, locator) -> None:
    """Until the element lies wholly inside the window (5 s): layout may still settle after the click."""
    page.wait_for_function("""el => { const r = el.getBoundingClientRect();
        return r.height > 0 && r.top >= 0 && r.bottom <= window.innerHeight; }""", arg=locator.element_handle(),
                           timeout=5000)


def test_an_artifact_line_citation_opens_the_artifact_and_highlights_the_line(page, login, live_server, reviewer,
                                                                             engineer):
    # investment_memo.md: line 3 "Runway is 11 months.", line 4 "The company has 122% official NRR."
    run, url = _start_row(page, login, live_server, reviewer, engineer, add="+ Add prohibited claim",
                          text="The memo reports 122% official NRR")
    memo_tab = page.locator("#trace-panel label.tab-label", has_text="investment_memo.md")
    memo_tab.click()
    page.locator("#artifact-investment-memo-md .artifact-head .cite-btn").click()
    page.locator("[name=item_line]").fill("4")
    page.locator("[name=item_text]").focus()
    expect(page.get_by_test_id("saved")).to_be_visible()
    line = page.locator("#artifact-investment-memo-md-L4")

    # Another artifact's tab is showing and the page has scrolled away: the citation brings the line back.
    page.locator("#trace-panel label.tab-label", has_text="risk_register.json").click()
    # Scrolled to the top at once: a wheel scroll goes on animating after it returns, and could undo the jump.
    page.evaluate("window.scrollTo(0, 0); document.querySelectorAll('#trace-panel *').forEach(el => el.scrollTop = 0)")
    page.locator(".fb-row .cite-link").click()
    assert page.url == url  # it stayed on the page
    expect(line).to_be_visible()
    expect(line).to_have_class("line is-cited")
    assert "122% official NRR" in line.inner_text() and "4" in line.locator(".ln").inner_text()
    _expect_in_view(page, line)
    assert page.locator("#artifact-investment-memo-md-L3").get_attribute("class") == "line"  # only that line

    # After a reload the saved citation's link carries the line and opens it the same way.
    page.goto(url)
    link = page.locator(".fb-row .cite-link")
    assert link.get_attribute("href").endswith(f"/runs/{run.pk}/#artifact-investment-memo-md-L4")
    link.click()
    expect(page.locator("#artifact-investment-memo-md-L4")).to_have_class("line is-cited")
    _expect_in_view(page, page.locator("#artifact-investment-memo-md-L4"))


def test_a_claim_check_after_the_save_leaves_the_status_saved(page, login, live_server, reviewer, engineer):
    """The claim check is a GET from a textarea inside the form, not a save: one that starts after the autosave
    answered (a slow machine orders them so) must not turn "Saved" into a "Saving…" that no save will answer."""
    _start_row(page, login, live_server, reviewer, engineer, add="+ Add prohibited claim",
               text="The memo reports 122% official NRR")
    page.locator("[name=summary]").focus()  # leaving the field: its change event saves
    expect(page.get_by_test_id("saved")).to_be_visible()
    check = page.locator("[data-testid=claim-found], [data-testid=claim-absent]")
    expect(check).to_have_count(1)
    page.evaluate("""() => {
        const box = document.querySelector("textarea[name=item_text][hx-get]");
        return htmx.ajax("GET", box.getAttribute("hx-get"), {source: box, target: box.getAttribute("hx-target")});
    }""")
    expect(check).to_have_count(1)
    page.wait_for_function("() => !document.querySelector('#feedback-form .htmx-request')")
    expect(page.locator("#save-status")).not_to_contain_text("Saving")
    expect(page.get_by_test_id("saved")).to_be_visible()
