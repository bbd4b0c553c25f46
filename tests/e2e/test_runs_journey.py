"""Issue 2 in a real browser: an engineer starts the default five runs and reads them; a dataroom written
here is uploaded and answered end to end; a zip with a path-traversal entry is refused, naming the entry.

Against the live app, a real Celery worker (Redis, prefork, the test database) and the offline stand-in.
"""

import json
import re
import zipfile

import pytest
from playwright.sync_api import expect

from runs.models import REQUIRED_ARTIFACTS, Dataroom, Run
from tests.e2e.journey import (  # noqa: F401 (journey_worker and role_groups are fixtures)
    assert_not_reloaded,
    goto,
    journey_worker,
    mark_page,
    reveal_span,
    role_groups,
    start_default_runs,
    wait_runs_finish,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("role_groups")]

# A dataroom the stand-in has never seen: a small SaaS company with a board-vs-finance ARR gap.
LUMEN_FILES = {
    "README.md": "# Lumen Robotics dataroom\n\nFinance exports are in `finance/`; board material in `board/`.\n",
    "finance/arr_bridge.csv": "metric,value_m,owner\nopening_arr_m,9.8,finance\nnet_new_arr_m,2.6,finance\n"
                              "closing_arr_m,12.4,finance\n",
    "board/board_deck_q3.md": "# Board deck Q3\n\n- ARR: $14.1M (includes signed, not yet live, contracts)\n"
                              "- Headcount: 61\n",
    "customers/top_customers.csv": "customer,ultimate_parent,arr_m\nKestrel Freight EU,Kestrel Group,1.6\n"
                                   "Kestrel Freight US,Kestrel Group,1.2\nPine Dairy,Pine Dairy,0.9\n",
}
LUMEN_QUESTION = "Which ARR figure for Lumen Robotics should we rely on, and why?"


def lumen_zip(tmp_path):
    path = tmp_path / "lumen-dataroom.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for name, text in LUMEN_FILES.items():
            archive.writestr(f"lumen/{name}", text)  # one top-level folder, which the import removes
    return path


def test_an_engineer_runs_the_default_five_and_a_dataroom_of_their_own(journey_worker, login, live_server, engineer,
                                                                       sample, tmp_path):
    base = live_server.url
    page = login(engineer)

    # --- the default five, from the Start runs page; the list updates in place until all succeed
    batch_id = start_default_runs(page, base)
    mark_page(page)
    expect(page.locator("[data-testid=standin-banner]")).to_be_visible()
    expect(page.locator("#run-rows tr")).to_have_count(5)
    expect(page.locator("#run-rows[hx-trigger='every 2s']")).to_have_count(1)  # polling while runs are active
    wait_runs_finish(page, 5)
    assert_not_reloaded(page)
    expect(page.locator("#run-rows")).not_to_contain_text("Queued")
    runs = list(Run.objects.filter(batch_id=batch_id).order_by("label"))
    assert [run.status for run in runs] == [Run.Status.SUCCEEDED] * 5
    first, last = min(runs, key=lambda r: r.started_at), max(runs, key=lambda r: r.started_at)
    assert last.started_at < first.finished_at, "the five runs did not overlap: not run in parallel"

    # --- one run's page: answer, the six artifacts, validators, the span tree
    run = runs[0]
    page.locator("#run-rows").get_by_role("link", name=f"#{run.pk}", exact=True).click()
    page.wait_for_url(f"{base}/runs/{run.pk}/")
    expect(page.locator("#answer [data-artifact=final_answer]")).not_to_be_empty()
    answer = page.inner_text("#answer")
    assert "11" in answer and "runway" in answer.lower(), answer[:500]  # trace-01 asks about runway and burn
    # The six required artifacts first (in the contract's order), then any others the run wrote.
    shown = page.locator("#artifacts .tab-panel.artifact").evaluate_all("els => els.map(e => e.dataset.artifact)")
    assert shown[:len(REQUIRED_ARTIFACTS)] == REQUIRED_ARTIFACTS, shown
    expect(page.locator("#artifacts .missing-note")).to_have_count(0)
    page.locator("label.tab-label", has_text="evidence_table.csv").click()
    expect(page.locator("[data-artifact='evidence_table.csv'] table.csv tbody tr").first).to_be_visible()
    page.locator("label.tab-label", has_text="risk_register.json").click()
    # A JSON list of records reads as a table; the stored JSON is one click away.
    expect(page.locator("[data-artifact='risk_register.json'] table[data-testid=artifact-table] tbody tr").first
           ).to_be_visible()
    stored = page.locator("[data-artifact='risk_register.json'] details", has_text="As stored (JSON)")
    stored.locator("summary").click()
    expect(stored.locator("pre")).to_be_visible()
    validators = page.locator("#validators [data-validator]")
    expect(validators).to_have_count(2)
    expect(page.locator("#validators .badge-pass")).to_have_count(2)
    spans = page.locator("#trace .span-tree details.span")
    span_count = spans.count()
    assert span_count == run.spans.count() and span_count > 10
    expect(page.locator("#trace .section-head")).to_contain_text(f"{span_count} spans")

    # Opening a tool span loads its detail by HTMX: the command and its output. Expand its ancestors first.
    tool = page.locator("#trace details.span.kind-tool").first
    span_id = tool.locator(":scope > summary .span-name").get_attribute("data-span-id")
    reveal_span(page, tool)
    tool.locator(":scope > summary").click()
    detail = tool.locator(f"[data-detail-of='{span_id}']")
    expect(detail).to_be_visible()
    expect(detail.locator("pre.tool-input")).not_to_have_text("(none)")
    expect(detail.locator("pre.tool-output")).to_be_visible()

    # --- downloads: the trace JSONL and the artifacts zip
    with page.expect_download() as info:
        page.locator(".page-head .actions a", has_text="Trace (.jsonl)").click()
    download = info.value
    assert download.suggested_filename == f"run-{run.pk}-trace-{run.trace_id}.jsonl"
    lines = [json.loads(line) for line in open(download.path(), encoding="utf-8").read().splitlines()]
    assert len(lines) == span_count
    assert {line["trace_id"] for line in lines} == {run.trace_id}
    assert span_id in {line["span_id"] for line in lines}
    assert all({"span_id", "parent_span_id", "name", "kind", "start_time", "end_time", "status", "attributes"}
               <= set(line) for line in lines)

    with page.expect_download() as info:
        page.locator(".page-head .actions a", has_text="Artifacts (.zip)").click()
    download = info.value
    assert download.suggested_filename == f"run-{run.pk}-artifacts.zip"
    with zipfile.ZipFile(download.path()) as archive:
        names = set(archive.namelist())
    assert {f"run-{run.pk}/{name}" for name in REQUIRED_ARTIFACTS} <= names
    assert f"run-{run.pk}/final_answer.md" in names

    # --- a dataroom written here: its question on the Questions page, the zip through the upload page
    goto(page, base, "/questions/")
    page.fill("#id_text", LUMEN_QUESTION)
    page.get_by_role("button", name="Add question").click()
    expect(page.locator(".msg-success")).to_have_text("Question added to the bank.")
    expect(page.locator("table.questions")).to_contain_text(LUMEN_QUESTION)

    goto(page, base, "/datarooms/upload/")
    page.fill("#id_name", "Lumen Robotics")
    page.set_input_files("#id_zip_file", str(lumen_zip(tmp_path)))
    page.get_by_role("button", name="Upload").click()
    expect(page.locator(".msg-success")).to_contain_text(f"Imported {len(LUMEN_FILES)} files")
    dataroom = Dataroom.objects.get(name="Lumen Robotics")
    page.wait_for_url(f"{base}{dataroom.get_absolute_url()}")
    for path in LUMEN_FILES:
        expect(page.locator("table.file-tree")).to_contain_text(path.rsplit("/", 1)[-1])

    page.get_by_role("link", name="Start runs on this dataroom").click()
    expect(page.locator("#id_dataroom")).to_have_value(str(dataroom.pk))
    for box in page.locator("input[name=questions]").all():
        box.uncheck()
    page.locator("label.check", has_text=LUMEN_QUESTION).locator("input").check()
    page.get_by_role("button", name="Start runs").click()
    page.wait_for_url(re.compile(r"/runs/\?batch=\d+"))
    expect(page.locator(".msg-success")).to_contain_text("Started 1 run(s) of v001 on Lumen Robotics")
    wait_runs_finish(page, 1)

    lumen_run = Run.objects.get(dataroom=dataroom)
    page.locator("#run-rows").get_by_role("link", name=f"#{lumen_run.pk}", exact=True).click()
    page.wait_for_url(f"{base}/runs/{lumen_run.pk}/")
    expect(page.locator(".question-card .question")).to_have_text(LUMEN_QUESTION)
    answer = page.inner_text("#answer")
    # The stand-in read this dataroom's own files and cites them.
    assert "arr_bridge.csv" in answer or "board_deck_q3.md" in answer, answer[:800]
    assert "12.4" in answer or "14.1" in answer, answer[:800]
    shown = page.locator("#artifacts .tab-panel.artifact").evaluate_all("els => els.map(e => e.dataset.artifact)")
    assert shown[:len(REQUIRED_ARTIFACTS)] == REQUIRED_ARTIFACTS, shown
    expect(page.locator("#artifacts .missing-note")).to_have_count(0)
    expect(page.locator("#validators [data-validator]")).to_have_count(2)
    expect(page.locator("#validators [data-validator] .badge")).not_to_have_text(["not run", "not run"])
    expect(page.locator("#trace .span-tree details.span").first).to_be_visible()
    # The tool spans show the commands that read this dataroom's files.
    commands = page.locator("#trace details.span.kind-tool .preview").evaluate_all("els => els.map(e => e.textContent)")
    assert any("arr_bridge.csv" in text or "board_deck_q3.md" in text for text in commands), commands


def test_a_zip_with_a_path_traversal_entry_is_refused_naming_it(login, live_server, engineer, sample, tmp_path):
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as archive:
        archive.writestr("notes/ok.md", "# fine\n")
        archive.writestr("../../etc/evil.txt", "escape\n")
    page = login(engineer)
    goto(page, live_server.url, "/datarooms/upload/")
    page.fill("#id_name", "Evil room")
    page.set_input_files("#id_zip_file", str(bad))
    page.get_by_role("button", name="Upload").click()
    error = page.locator(".field.has-error .errorlist")
    expect(error).to_contain_text("../../etc/evil.txt")
    expect(page.locator("#id_name")).to_have_value("Evil room")  # what was typed is kept
    assert not Dataroom.objects.filter(name="Evil room").exists()  # all or nothing
    goto(page, live_server.url, "/datarooms/")
    expect(page.locator("main")).not_to_contain_text("Evil room")
