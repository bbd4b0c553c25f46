"""Browser tests: Python Playwright driving Debian's Chromium against a live server."""

import os
import shutil
import time

import pytest

CHROMIUM = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium") or "/usr/bin/chromium"

# Playwright's sync API keeps an event loop in the test thread; the test's own ORM
# calls are still plain synchronous code.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import expect, sync_playwright

    # Assertions wait as long as actions do (Playwright's own default for expect() is 5 s): pages poll every
    # 2 s, and on a loaded CI machine a polled update can take longer than 5 s to show.
    expect.set_options(timeout=15_000)

    if not os.path.exists(CHROMIUM):
        pytest.fail(f"Chromium not found at {CHROMIUM}: run `make test`, which installs Debian's chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
            ],
        )
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(15_000)
    page = context.new_page()
    in_flight = set()
    page.on("request", lambda request: in_flight.add(request))  # Playwright takes Python functions only
    page.on("requestfinished", lambda request: in_flight.discard(request))
    page.on("requestfailed", lambda request: in_flight.discard(request))
    yield page
    # A request the page sent as the test ended (an autosave, a poll) is still being answered by the live server:
    # wait for its answer before the database is emptied for the next test. On PostgreSQL the emptying (TRUNCATE)
    # and that request's writes otherwise deadlock, and the flush fails.
    deadline = time.monotonic() + 15
    while in_flight and time.monotonic() < deadline:
        page.wait_for_timeout(50)
    context.close()


@pytest.fixture
def login(page, live_server):
    """`login(user)` signs the browser in through the real login form."""

    def sign_in(user):
        page.context.clear_cookies()
        page.goto(f"{live_server.url}/accounts/login/")
        page.fill("input[name=username]", user.username)
        page.fill("input[name=password]", "pw-" + user.username)
        page.click("button[type=submit]")
        page.wait_for_load_state("domcontentloaded")
        return page

    return sign_in
