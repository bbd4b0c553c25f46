"""Repeated judging: the gate runs each case GATE_REPEATS times through promptfoo (uncached); a case passes
only if every repeat passes (pass^N), and one whose repeats disagree is flaky, never a plain pass."""

import json
import threading
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.urls import reverse

from reviews.gate import combine_repeats
from reviews.models import EvalCase, GateRow, GateRun
from reviews.tasks import run_gate_task

from .builders import make_cycle, make_run
from .calibration_builders import approved_case
from .gate_builders import queued_gate

pytestmark = pytest.mark.django_db

FLAKY_MARK = "flaky-judgement"


class AlternatingJudge(BaseHTTPRequestHandler):
    """An OpenAI-compatible judge (Chat Completions): a rubric that names FLAKY_MARK passes on its 1st, 3rd,
    ... request and fails on the others; every other rubric passes. Counts are per rubric, across repeats."""

    counts: dict = defaultdict(int)
    lock = threading.Lock()

    def do_POST(self):  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
        with self.lock:
            key = FLAKY_MARK if FLAKY_MARK in body else "steady"
            self.counts[key] += 1
            number = self.counts[key]
        passed = key == "steady" or number % 2 == 1
        verdict = {"reason": f"request {number}: {'meets' if passed else 'misses'} the rubric", "pass": passed,
                   "score": 1.0 if passed else 0.0}
        reply = json.dumps({
            "id": f"chatcmpl-{number}", "object": "chat.completion", "created": 0, "model": "alternating-judge",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": json.dumps(verdict)}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20},
        }).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):
        pass


@pytest.fixture
def alternating_judge(settings):
    AlternatingJudge.counts = defaultdict(int)
    server = ThreadingHTTPServer(("127.0.0.1", 0), AlternatingJudge)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    settings.STANDIN_IN_USE = True
    settings.STANDIN_URL = f"http://127.0.0.1:{server.server_address[1]}/v1"
    try:
        yield AlternatingJudge
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def three_cases(approver):
    runs = [make_run(label=f"rep-{i}", answer="Runway is 11 months; burn is rising.") for i in range(3)]
    cycle = make_cycle(*runs)
    flaky = approved_case(cycle, runs[0], approver, eval_id="flaky-case",
                          rubric=f"The answer must name the runway ({FLAKY_MARK}).")
    steady = approved_case(cycle, runs[1], approver, eval_id="steady-case", rubric="The answer must name the runway.")
    rules = approved_case(cycle, runs[2], approver, eval_id="rules-case", rubric="",
                          scoring=EvalCase.ScoringMethod.DETERMINISTIC,
                          assertions=[{"type": "icontains", "value": "11 months"}])
    return cycle, {"flaky": flaky, "steady": steady, "rules": rules}


def test_a_case_whose_repeats_disagree_is_flaky_never_a_pass(alternating_judge, three_cases, settings, approver,
                                                             client_for):
    settings.GATE_REPEATS = 3
    cycle, cases = three_cases
    gate_run = queued_gate(cycle)
    run_gate_task.apply(args=[gate_run.pk], throw=True)
    gate_run.refresh_from_db()
    assert gate_run.status == GateRun.Status.SUCCEEDED, gate_run.last_error
    assert gate_run.repeats == 3
    assert len(gate_run.results["results"]["results"]) == 9  # three cases x three repeats, uncached
    assert alternating_judge.counts == {FLAKY_MARK: 3, "steady": 3}

    rows = {row.eval_case_id: row for row in GateRow.objects.filter(gate_run=gate_run)}
    flaky, steady, rules = rows[cases["flaky"].pk], rows[cases["steady"].pk], rows[cases["rules"].pk]
    assert (flaky.repeats, flaky.passes, flaky.flaky, flaky.passed) == (3, 2, True, False)
    assert flaky.score == 0.0 and flaky.reason.startswith("Flaky: passed 2 of 3 repeats.")
    assert [item["passed"] for item in flaky.repeat_results].count(True) == 2
    assert (steady.repeats, steady.passes, steady.flaky, steady.passed) == (3, 3, False, True)
    assert (rules.repeats, rules.passes, rules.flaky, rules.passed) == (3, 3, False, True)
    assert not rules.judge_decided and steady.judge_decided and flaky.judge_decided
    assert (gate_run.total, gate_run.passed, gate_run.failed, gate_run.errors, gate_run.flaky) == (3, 2, 1, 0, 1)

    page = client_for(approver).get(reverse("reviews:gate-detail", args=[gate_run.pk])).content.decode()
    assert 'data-testid="gate-flaky-total">1 flaky<' in page
    assert "each case ran 3 times" in page
    assert page.count('data-testid="gate-row-flaky"') == 1
    assert "2 of 3 repeats passed" in page and "3 of 3 repeats passed" in page


def test_one_repeat_by_default(alternating_judge, three_cases):
    cycle, cases = three_cases
    gate_run = queued_gate(cycle)
    run_gate_task.apply(args=[gate_run.pk], throw=True)
    gate_run.refresh_from_db()
    assert gate_run.status == GateRun.Status.SUCCEEDED, gate_run.last_error
    assert gate_run.repeats == 1 and gate_run.flaky == 0 and gate_run.passed == 3
    assert alternating_judge.counts == {FLAKY_MARK: 1, "steady": 1}
    row = GateRow.objects.get(gate_run=gate_run, eval_case=cases["flaky"])
    assert (row.repeats, row.passes, row.flaky) == (1, 1, False)


def _row(case_id, repeat, passed, *, error="", score=None, test_index=0):
    return {"case_id": case_id, "run_id": 1, "key": "", "metadata": {"test_index": test_index},
            "test_index": test_index, "repeat_index": repeat, "passed": passed, "reason": f"r{repeat}",
            "score": (1.0 if passed else 0.0) if score is None else score, "assertions": [], "error": error}


def test_pass_n_needs_every_repeat():
    steady = combine_repeats([_row(1, 0, True), _row(1, 1, True), _row(1, 2, True)])
    assert [(item["passed"], item["passes"], item["flaky"]) for item in steady] == [(True, 3, False)]
    failing = combine_repeats([_row(1, 0, False), _row(1, 1, False)])
    assert [(item["passed"], item["passes"], item["flaky"]) for item in failing] == [(False, 0, False)]
    flaky = combine_repeats([_row(1, 0, True), _row(1, 1, False, score=0.3), _row(1, 2, True)])
    assert [(item["passed"], item["passes"], item["flaky"], item["score"]) for item in flaky] == [(False, 2, True, 0.3)]
    assert flaky[0]["reason"] == "Flaky: passed 2 of 3 repeats. r1"  # the failing repeat's reason is shown


def test_an_error_in_any_repeat_leaves_no_verdict():
    combined = combine_repeats([_row(1, 0, True), _row(1, 1, False, error="The judge did not answer: timeout")])
    assert combined[0]["error"].startswith("The judge did not answer") and combined[0]["passed"] is False
    assert combined[0]["flaky"] is False


def test_repeats_are_grouped_per_test():
    combined = combine_repeats([_row(1, 0, True, test_index=0), _row(2, 0, False, test_index=1),
                                _row(1, 1, True, test_index=0), _row(2, 1, True, test_index=1)])
    assert [(item["case_id"], item["passed"], item["flaky"]) for item in combined] == [(1, True, False), (2, False, True)]
