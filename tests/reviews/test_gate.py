"""The promptfoo gate really runs: the project's promptfoo, the stored-answer provider and the stand-in judge."""

import json
import time

import pytest

from loopsite.models import AuditEvent
from reviews import gate, promptfoo
from reviews.models import GateRow, GateRun
from reviews.tasks import run_gate_task
from runs.models import Run

from .builders import make_run
from .gate_builders import approved_suite, expected_passes, queued_gate

pytestmark = pytest.mark.django_db


@pytest.fixture
def suite(approver):
    return approved_suite(approver)


def test_the_gate_stores_every_row_as_the_results_file_says(standin, suite):
    cycle, runs, cases = suite
    gate_run = queued_gate(cycle)
    started = time.monotonic()
    run_gate_task.apply(args=[gate_run.pk], throw=True)
    seconds = time.monotonic() - started
    gate_run.refresh_from_db()

    assert gate_run.status == GateRun.Status.SUCCEEDED, gate_run.last_error
    assert gate_run.returncode == 100  # some test failed: still a finished gate
    assert seconds < 30
    results = gate_run.results["results"]["results"]
    assert len(results) == 5
    rows = {row.eval_id: row for row in gate_run.rows.select_related("run", "eval_case")}
    for result in results:
        row = rows[result["testCase"]["metadata"]["eval_id"]]
        assert row.passed is result["success"]
        assert row.score == result["score"]
        assert row.run.pk == result["testCase"]["metadata"]["run_id"]
        assert [item["pass"] for item in row.assertions] == [c["pass"] for c in result["gradingResult"]["componentResults"]]
    assert {eval_id: row.passed for eval_id, row in rows.items()} == expected_passes()
    assert {eval_id: row.run.label for eval_id, row in rows.items()} == {
        case.eval_id: run.label for case, run in zip(cases, runs, strict=True)}
    stats = gate_run.results["results"]["stats"]
    assert (gate_run.total, gate_run.passed, gate_run.failed, gate_run.errors) == (5, 2, 3, 0)
    assert (stats["successes"], stats["failures"]) == (gate_run.passed, gate_run.failed)
    assert gate_run.started_at and gate_run.finished_at and gate_run.attempts == 1
    assert "Results:" in gate_run.log_tail and gate_run.endpoint == standin


def test_a_failing_case_says_which_assertion_failed_and_why(standin, suite):
    cycle, _, _ = suite
    gate_run = queued_gate(cycle)
    run_gate_task.apply(args=[gate_run.pk], throw=True)
    row = GateRow.objects.get(gate_run=gate_run, eval_id="soc2-precision")
    assert row.passed is False and row.score == 0 and row.error == ""
    assert row.assertions[0] == {"type": "not-contains", "value": "SOC 2 complete", "pass": False, "score": 0,
                                 "reason": 'Expected output to not contain "SOC 2 complete"'}
    assert row.assertions[1]["type"] == "llm-rubric" and row.assertions[1]["pass"] is False
    assert "SOC 2 complete" in row.reason
    passing = GateRow.objects.get(gate_run=gate_run, eval_id="runway-financing-risk")
    assert passing.passed is True and passing.score == 1 and all(item["pass"] for item in passing.assertions)


def test_the_config_serves_stored_answers_through_a_python_provider(suite):
    cycle, runs, cases = suite
    config = gate.build_gate_config(cases=cases, answers_by_case={case.pk: run for case, run in zip(cases, runs, strict=True)})
    assert config["providers"] == [{"id": "file://provider.py", "label": "stored-answer",
                                    "config": {"answers_file": "answers.json"}}]
    assert config["prompts"] == ["{{question}}"]
    test = config["tests"][2]
    assert "answer" not in test["vars"] and test["vars"]["run_id"] == runs[2].pk
    assert test["metadata"]["case_id"] == cases[2].pk and test["metadata"]["eval_id"] == "parent-rollup"
    assert test["assert"][0] == {"type": "icontains", "value": "Northstar Holdings"}
    assert test["assert"][1]["type"] == "llm-rubric" and test["assert"][1]["provider"]["config"]["maxRetries"] == 1
    answers = gate.gate_answers(runs)
    assert answers[str(runs[2].pk)]["answer"] == runs[2].final_answer


def test_a_case_without_a_run_here_is_skipped_and_a_run_without_an_answer_is_an_error_row(standin, suite, approver):
    cycle, runs, cases = suite
    Run.objects.filter(pk=runs[4].pk).update(status=Run.Status.FAILED, final_answer="", last_error="agent crashed")
    cycle.runs.remove(runs[3])
    gate_run = queued_gate(cycle)
    run_gate_task.apply(args=[gate_run.pk], throw=True)
    gate_run.refresh_from_db()
    assert gate_run.status == GateRun.Status.SUCCEEDED
    assert (gate_run.total, gate_run.passed, gate_run.failed, gate_run.errors) == (4, 1, 2, 1)
    assert [item["eval_id"] for item in gate_run.config["skipped"]] == ["soc2-precision"]
    errored = gate_run.rows.get(eval_id="nrr-unsupported")
    assert errored.passed is False and "failed, so there is no answer to judge: agent crashed" in errored.error


def test_the_gate_judges_a_harness_by_its_latest_answer_to_each_question(standin, suite):
    _, runs, cases = suite
    newer = make_run(harness=runs[2].harness, label="trace-03b", answer="Northstar Holdings is the largest parent account.")
    Run.objects.filter(pk=newer.pk).update(question=runs[2].question)
    Run.objects.filter(pk=runs[2].pk).update(harness=newer.harness)
    gate_run = GateRun.objects.create(harness=runs[0].harness)
    run_gate_task.apply(args=[gate_run.pk], throw=True)
    gate_run.refresh_from_db()
    assert gate_run.status == GateRun.Status.SUCCEEDED
    # The source run is preferred while it belongs to the harness being judged.
    assert gate_run.rows.get(eval_id="parent-rollup").run_id == runs[2].pk


def test_missing_promptfoo_fails_with_a_clear_reason(standin, suite, settings, tmp_path):
    cycle, _, _ = suite
    settings.PROMPTFOO_BIN = str(tmp_path / "node_modules" / ".bin" / "promptfoo")
    gate_run = queued_gate(cycle)
    run_gate_task.apply(args=[gate_run.pk], throw=True)
    gate_run.refresh_from_db()
    assert gate_run.status == GateRun.Status.FAILED
    assert gate_run.last_error == (f"promptfoo is not installed: {settings.PROMPTFOO_BIN} does not exist. Run `make "
                                   f"install` (npm ci) in the project, or set PROMPTFOO_BIN, then re-run the gate.")
    assert gate_run.finished_at is not None and not gate_run.rows.exists()


def test_a_dead_judge_fails_the_gate_in_seconds(standin, suite, settings, refused_url):
    cycle, _, _ = suite
    settings.STANDIN_URL = refused_url
    gate_run = queued_gate(cycle)
    started = time.monotonic()
    run_gate_task.apply(args=[gate_run.pk], throw=True)
    seconds = time.monotonic() - started
    gate_run.refresh_from_db()
    assert seconds < 20
    assert gate_run.status == GateRun.Status.FAILED
    assert gate_run.last_error.startswith(f"The judge (gpt-5.5 at {settings.STANDIN_URL}) did not answer for 5 of 5 test(s): ")
    assert "ECONNREFUSED" in gate_run.last_error and gate_run.last_error.endswith("then re-run the gate.")
    assert gate_run.errors == 5 and all("ECONNREFUSED" in row.error for row in gate_run.rows.all())


def test_a_malformed_config_fails_at_once_without_running_promptfoo(standin, suite, monkeypatch):
    cycle, _, _ = suite

    def broken(*, cases, answers_by_case):
        return {"prompts": ["{{question}}"], "providers": [{"id": "file://missing_provider.py"}], "tests": "all of them"}

    monkeypatch.setattr(gate, "build_gate_config", broken)
    gate_run = queued_gate(cycle)
    started = time.monotonic()
    run_gate_task.apply(args=[gate_run.pk], throw=True)
    gate_run.refresh_from_db()
    assert time.monotonic() - started < 5
    assert gate_run.status == GateRun.Status.FAILED
    assert gate_run.last_error == ("The gate's promptfoo config is malformed: the provider file missing_provider.py "
                                   "does not exist; `tests` must be a non-empty list. Nothing was run.")


def test_a_config_promptfoo_rejects_fails_with_promptfoos_reason(standin, suite, monkeypatch):
    cycle, _, _ = suite
    real = gate.build_gate_config

    def unknown_assertion(*, cases, answers_by_case):
        config = real(cases=cases, answers_by_case=answers_by_case)
        config["tests"][0]["assert"] = [{"type": "no-such-assertion", "value": "x"}]
        return config

    monkeypatch.setattr(gate, "build_gate_config", unknown_assertion)
    gate_run = queued_gate(cycle)
    run_gate_task.apply(args=[gate_run.pk], throw=True)
    gate_run.refresh_from_db()
    assert gate_run.status == GateRun.Status.FAILED
    assert gate_run.last_error.startswith("promptfoo reported an error for 1 of 5 test(s): ")
    assert "no-such-assertion" in gate_run.last_error
    assert gate_run.errors == 1 and gate_run.rows.count() == 5  # kept for inspection


def test_promptfoo_exiting_without_results_fails_with_its_output(standin, suite, monkeypatch):
    cycle, _, _ = suite
    monkeypatch.setattr(promptfoo, "write_files", _truncated_config_writer(promptfoo.write_files))
    gate_run = queued_gate(cycle)
    run_gate_task.apply(args=[gate_run.pk], throw=True)
    gate_run.refresh_from_db()
    assert gate_run.status == GateRun.Status.FAILED
    assert gate_run.last_error.startswith("promptfoo exited with code ")
    assert "wrote no results (a malformed config, or promptfoo could not start)" in gate_run.last_error
    assert gate_run.log_tail and not gate_run.rows.exists()


def _truncated_config_writer(real):
    def write(directory, *, config, answers):
        path = real(directory, config=config, answers=answers)
        path.write_text(path.read_text()[:-40])  # cut off: no longer valid YAML/JSON
        return path

    return write


def test_the_time_limit_stops_promptfoo(standin, suite, settings):
    cycle, _, _ = suite
    settings.GATE_TIMEOUT_SECONDS = 1
    gate_run = queued_gate(cycle)
    started = time.monotonic()
    run_gate_task.apply(args=[gate_run.pk], throw=True)
    gate_run.refresh_from_db()
    assert time.monotonic() - started < 10
    assert gate_run.status == GateRun.Status.FAILED
    assert gate_run.last_error.startswith("promptfoo did not finish within 1 s and was stopped.")


def test_a_failed_gate_can_be_run_again(standin, suite, settings, tmp_path, engineer, django_capture_on_commit_callbacks):
    cycle, _, _ = suite
    real = settings.PROMPTFOO_BIN
    settings.PROMPTFOO_BIN = str(tmp_path / "nowhere")
    gate_run = queued_gate(cycle)
    run_gate_task.apply(args=[gate_run.pk], throw=True)
    gate_run.refresh_from_db()
    assert gate_run.status == GateRun.Status.FAILED

    settings.PROMPTFOO_BIN = real
    with django_capture_on_commit_callbacks() as callbacks:
        assert gate.rerun_gate(gate_run=gate_run, user=engineer) is True
    assert len(callbacks) == 1
    gate_run.refresh_from_db()
    assert gate_run.status == GateRun.Status.QUEUED and gate_run.requested_by == engineer
    assert gate.rerun_gate(gate_run=gate_run, user=engineer) is False  # still queued
    run_gate_task.apply(args=[gate_run.pk], throw=True)
    gate_run.refresh_from_db()
    assert gate_run.status == GateRun.Status.SUCCEEDED and gate_run.attempts == 2 and gate_run.last_error == ""
    assert gate_run.rows.count() == 5
    assert AuditEvent.objects.filter(action="gate.rerun", object_id=str(gate_run.pk), actor=engineer).exists()


def test_rows_of_a_rerun_replace_the_previous_rows(standin, suite, engineer, django_capture_on_commit_callbacks):
    cycle, runs, _ = suite
    gate_run = queued_gate(cycle)
    run_gate_task.apply(args=[gate_run.pk], throw=True)
    Run.objects.filter(pk=runs[2].pk).update(final_answer="Northstar Holdings is the largest parent account.")
    with django_capture_on_commit_callbacks():
        gate.rerun_gate(gate_run=gate_run, user=engineer)
    run_gate_task.apply(args=[gate_run.pk], throw=True)
    gate_run.refresh_from_db()
    assert gate_run.rows.count() == 5 and gate_run.passed == 3
    assert gate_run.rows.get(eval_id="parent-rollup").passed is True


def test_parse_results_reads_promptfoos_rows():
    data = {"results": {"results": [{
        "success": False, "score": 0.5, "failureReason": 1, "error": "x",
        "testCase": {"metadata": {"case_id": 7, "run_id": 9}, "vars": {"run_id": 9}},
        "gradingResult": {"pass": False, "score": 0.5, "reason": "", "componentResults": [
            {"pass": True, "score": 1, "reason": "Assertion passed", "assertion": {"type": "icontains", "value": "a"}},
            {"pass": False, "score": 0, "reason": "API call error: fetch failed",
             "assertion": {"type": "llm-rubric", "value": "r"}},
        ]},
    }]}}
    [row] = gate.parse_results(data)
    assert row["case_id"] == 7 and row["run_id"] == 9 and row["passed"] is False and row["score"] == 0.5
    assert row["reason"] == "API call error: fetch failed"  # the failing component's, as the seed's summary
    assert row["error"] == "The judge did not answer: API call error: fetch failed"
    assert json.dumps(row["assertions"])  # storable
