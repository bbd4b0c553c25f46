"""In a real browser: when the server refuses an autosave (too many fields: a 400), the status line says
so, the typed text stays, and the next change saves again once the server accepts it."""

import time

import pytest
from playwright.sync_api import expect

from reviews.models import Feedback
from tests.reviews.builders import make_cycle, make_run

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_refused_autosave_is_shown_and_the_text_is_kept(page, login, live_server, reviewer, settings):
    run = make_run()
    cycle = make_cycle(run)
    login(reviewer)
    page.goto(f"{live_server.url}/cycles/{cycle.pk}/runs/{run.pk}/feedback/")
    page.get_by_role("button", name="+ Add observation").click()
    expect(page.locator(".fb-row")).to_have_count(1)
    # htmx focuses the new row (autofocus) as it settles, a moment after the swap: text typed into the summary
    # before then would land in the row. Settled: no element carries htmx's settling class any more.
    expect(page.locator(".htmx-settling")).to_have_count(0)
    expect(page.locator("[name=item_text]")).to_be_focused()

    # The header fields plus one row are more fields than this server now accepts.
    settings.DATA_UPLOAD_MAX_NUMBER_FIELDS = 8
    page.fill("#fb-summary", "Typed before the refusal")
    error = page.get_by_test_id("save-error")
    expect(error).to_contain_text("more than 8 fields")
    expect(error).to_contain_text("Your text is still in the form")
    expect(page.locator("#fb-summary")).to_have_value("Typed before the refusal")
    assert Feedback.objects.get().summary == ""  # adding the row saved the draft; the refused save stored nothing

    # The limit is lifted: the next change saves everything typed so far.
    settings.DATA_UPLOAD_MAX_NUMBER_FIELDS = 6000
    page.fill("[name=item_text]", "Mention the parent account")
    expect(page.get_by_test_id("saved")).to_be_visible()
    deadline = time.monotonic() + 10  # leaving the summary saved at once; the row's text follows
    while time.monotonic() < deadline:
        feedback = Feedback.objects.get()
        if [item.text for item in feedback.items.all()] == ["Mention the parent account"]:
            break
        time.sleep(0.2)
    assert feedback.summary == "Typed before the refusal"
    assert [item.text for item in feedback.items.all()] == ["Mention the parent account"]
    expect(page.get_by_test_id("save-error")).to_have_count(0)
