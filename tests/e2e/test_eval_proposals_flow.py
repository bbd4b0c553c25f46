"""In a real browser: start the chain from the cycle page and watch it finish, then edit, try, approve and
reject proposals, and find the approved case in the suite with its download."""

import json
import threading

import pytest

from reviews.models import EvalCase, GenerationJob
from reviews.tasks import generate_evals_task, generate_insights_task
from tests.reviews.gen_builders import approved_cycle

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def worker_thread(monkeypatch):
    """Stands in for a Celery worker: each .delay() runs the task with .apply() on a thread, a second later."""
    threads = []

    def later(task):
        def delay(job_id):
            thread = threading.Timer(1.0, lambda: task.apply(args=[job_id]))
            threads.append(thread)
            thread.start()
        return delay

    for task in (generate_insights_task, generate_evals_task):
        monkeypatch.setattr(task, "delay", later(task))
    yield
    for thread in threads:
        thread.join(timeout=20)


def test_an_approver_generates_edits_tries_approves_and_rejects(standin, worker_thread, login, live_server,
                                                               reviewer, approver, tmp_path):
    cycle, runs = approved_cycle(reviewer, approver, count=3, approve_count=2)  # not all: no automatic chain
    assert not GenerationJob.objects.exists()
    page = login(approver)
    page.goto(f"{live_server.url}{cycle.get_absolute_url()}")
    page.click("[data-testid=generate]")
    page.wait_for_selector("[data-testid=generation-active]")  # polling while the steps run
    page.wait_for_selector('[data-testid=step-2][data-status=succeeded]', timeout=20_000)
    assert page.locator("[data-testid=generation-active]").count() == 0
    assert "model-generated" in page.inner_text("[data-testid=insights]")
    page.screenshot(path=str(tmp_path / "cycle.png"), full_page=True)

    page.click("[data-testid=proposals-link]")
    first, second = EvalCase.objects.filter(cycle=cycle).order_by("eval_id")
    page.click(f"#case-card-{first.pk} h2 a")
    page.fill("#case-title", "Runway: name the 11-month figure")
    page.click("[data-testid=save]")
    page.wait_for_selector("[data-testid=case-note]")
    assert "Saved." in page.inner_text("[data-testid=case-note]")
    assert "+Runway: name the 11-month figure" in page.inner_text("[data-testid=history]")

    page.click("[data-testid=try]")
    page.wait_for_selector("[data-testid=verdict]")
    assert page.inner_text("[data-testid=verdict]") == "passes"

    page.click("[data-testid=approve]")
    page.wait_for_selector('[data-testid=eval-case][data-status=approved]')
    page.screenshot(path=str(tmp_path / "case.png"), full_page=True)

    page.goto(f"{live_server.url}/cycles/{cycle.pk}/evals/")
    page.fill(f"#reason-{second.pk}", "Too close to the first case.")
    page.click(f"#case-card-{second.pk} [data-testid=reject]")
    page.wait_for_selector(f'#case-card-{second.pk} .badge-rejected')
    second.refresh_from_db()
    assert second.status == EvalCase.Status.REJECTED and second.reject_reason == "Too close to the first case."

    page.goto(f"{live_server.url}/suite/")
    assert "Runway: name the 11-month figure" in page.inner_text("[data-testid=suite]")
    page.screenshot(path=str(tmp_path / "suite.png"), full_page=True)
    download = page.request.get(live_server.url + page.get_attribute("[data-testid=download]", "href"))
    config = json.loads(download.text().partition("\n")[2])
    assert [test["metadata"]["eval_id"] for test in config["tests"]] == [first.eval_id]
    print("SCREENSHOTS", tmp_path)
