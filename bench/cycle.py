#!/usr/bin/env python
"""How long does a whole cycle take in the app, and how long done step after step as the notebook does?

One cycle of five runs (the seed's five questions on the sample dataroom, harness v001), with the
offline stand-in model answering every model call after a fixed delay (--delay, default 0.5 s):

  1. As the app does it: real Celery workers as `make run` starts them (a prefork worker, concurrency
     --concurrency, on its own default queue, and a threads-pool worker, --run-concurrency threads, on
     its own run queue, on the Redis at CELERY_BROKER_URL) run the five runs in parallel; this script plays the people: a reviewer
     writes the seed's human feedback for each run and an approver approves it (the last approval
     starts the insights -> evals chain in the worker), then the approver approves every proposal
     (the last one starts the gate, whose success starts HALO). Timed until HALO has finished.
  2. As the notebook does it: the same steps in this process, strictly one after another, calling
     the topic functions directly (runner.execute_run per run, the same feedback and approvals,
     generation.run_job for insights then evals, gate.run_gate, optimization.run_optimization).

It prints both wall times, their ratio, a per-step breakdown, the critical path (the longest single
run plus the chain after it, insights + evals + gate + HALO, as recorded on the rows of the same
cycle) with the app's wall time as a multiple of it, and the app's overhead: its wall
time minus the time its steps were actually working (as recorded on the rows). With --delay 0
that overhead is the cost of queueing, claiming and polling. For each cycle it also prints how many
approved cases catch the failure they came from (from their back-test rows, or by the gate on the
cycle's own answers where there are none) and the judge's agreement with the human verdicts
(reviews.calibration: labels, TPR, TNR, Cohen's kappa). It prints figures and asserts nothing.

A throwaway SQLite database and media directory live in a temporary directory; the stand-in runs
in this process on a free port. Needs Redis and the project's promptfoo (make install).

    .venv/bin/python bench/cycle.py [--delay 0.5] [--concurrency 2] [--run-concurrency 16] [--skip-sequential]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# The seed's mock human feedback (Step 4 of the notebook), by question.
FEEDBACK = {
    "What do runway and burn tell us about near-term financing risk?": (
        "State both the 11-month runway and rising burn as financing risk, not just a generic red flag.",
        ["Name the 11-month runway", "Tie burn to near-term financing pressure"],
        ["Do not imply the company has more than 12 months of runway"],
        "financial_risk",
    ),
    "How strong is revenue quality, and which ARR figure should we rely on?": (
        "Use the controlled ARR bridge as the reliable figure and preserve the board-versus-finance contradiction.",
        ["Prefer finance ARR over board ARR", "Preserve the ARR contradiction"],
        ["Do not silently reconcile the ARR gap"],
        "revenue_quality",
    ),
    "What is the real customer concentration risk after parent-account rollups?": (
        "Roll concentration up to Northstar Holdings. Legal-entity framing understates the real dependency.",
        ["Mention parent-account concentration", "Use account_hierarchy.csv"],
        ["Do not stop at legal-entity concentration"],
        "customer_concentration",
    ),
    "How ready is the company for enterprise security review?": (
        "Be exact about certification status: Type I is complete; Type II is still in progress.",
        ["Distinguish Type I from Type II", "Treat sales FAQ as weaker evidence"],
        ["Do not say SOC 2 is simply complete"],
        "security_readiness",
    ),
    "What unsupported metrics should we refuse to infer from the dataroom?": (
        "Refuse official NRR and CAC payback when the dataroom does not support them.",
        ["Mark official NRR unsupported", "Mark CAC payback unsupported"],
        ["Do not promote the management NRR estimate into an official metric"],
        "unsupported_metrics",
    ),
}
POLL_SECONDS = 0.1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def configure(tmp: Path, *, standin_url: str, queue: str) -> dict[str, str]:
    """Environment for this process and the worker, set before Django reads its settings."""
    env = {
        "DJANGO_SETTINGS_MODULE": "loopsite.settings",
        "DATABASE_URL": f"sqlite:///{tmp / 'bench.sqlite3'}",
        "MEDIA_ROOT": str(tmp / "media"),
        "CELERY_QUEUE": queue,
        "LOOPSITE_STANDIN_URL": standin_url,
        "AUTO_GATE": "1",
        "AUTO_HALO": "1",
        "LOG_LEVEL": "WARNING",
        "PYTHONUNBUFFERED": "1",
    }
    os.environ.pop("OPENAI_API_KEY", None)  # every model call goes to the stand-in
    os.environ.update(env)
    return env


def start_worker(tmp: Path, *, concurrency: int, queue: str,
                 run_concurrency: int = 16) -> tuple[list[subprocess.Popen], Path]:
    """The two workers `make run` starts: prefork on the default queue `queue`, threads on `queue`-runs
    (the run queue CELERY_RUN_QUEUE derives from CELERY_QUEUE)."""
    env = {key: value for key, value in os.environ.items() if key != "OPENAI_API_KEY"}
    procs, logs = [], []
    for pool, queue_name, count in (("prefork", queue, concurrency), ("threads", f"{queue}-runs", run_concurrency)):
        log_path = tmp / f"worker-{pool}.log"
        with log_path.open("wb") as log_file:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "loopsite", "worker", "--pool", pool,
                 "--concurrency", str(count), "--queues", queue_name, "--loglevel", "INFO",
                 "--without-gossip", "--without-mingle", "--without-heartbeat",
                 "--hostname", f"bench-{pool}-{uuid.uuid4().hex[:8]}@%h"],
                cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
            ))
        logs.append(log_path)
    deadline = time.monotonic() + 60
    for proc, log_path in zip(procs, logs):
        while "ready." not in log_path.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                stop_worker(procs)
                raise SystemExit(f"The Celery worker did not start:\n{log_path.read_text(errors='replace')[-3000:]}")
            time.sleep(0.2)
    return procs, logs[0]


def stop_worker(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def purge(queue: str) -> None:
    from django.conf import settings

    import redis

    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    client.delete(queue, f"{queue}-runs")


def tear_down(*, worker, server, queue: str, tmp) -> None:
    """What every bench leaves behind: its worker, its stand-in, its queues and its temporary directory."""
    if worker is not None:
        stop_worker(worker)
    server.shutdown()
    server.server_close()
    try:
        purge(queue)
    except Exception:  # noqa: BLE001 - Redis may be gone; nothing to clean then
        pass
    shutil.rmtree(tmp, ignore_errors=True)


def setup_data():
    from django.contrib.auth.models import Group, User
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    call_command("load_sample", stdout=open(os.devnull, "w"))
    users = {}
    for name, role in (("eddie", "engineer"), ("rita", "reviewer"), ("april", "approver")):
        user = User.objects.create_user(username=name, password=f"pw-{name}")
        user.groups.add(Group.objects.get(name=role))
        users[role] = user
    return users


def sample():
    from runs.models import Dataroom, Harness, Question

    questions = list(Question.objects.filter(is_default=True).order_by("bank_index"))
    assert [q.text for q in questions] == list(FEEDBACK), "the sample's default questions changed"
    return Harness.objects.get(version="v001"), Dataroom.objects.get(name__icontains="FictionalCorp"), questions


def wait_for(what: str, check, timeout: float):
    """Poll `check()` until it returns something truthy; SystemExit with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise SystemExit(f"Gave up waiting for {what} after {timeout:.0f} s.")
        time.sleep(POLL_SECONDS)


# --- the people's part: the same in both paths ------------------------------------------------------------


def review_and_approve(cycle, run, users) -> None:
    from reviews.models import approve_run, get_or_create_feedback

    summary, required, prohibited, theme = FEEDBACK[run.question.text]
    content = {"summary": summary, "theme": theme, "verdict": "fail", "items": [
        *({"kind": "required_observation", "text": text} for text in required),
        *({"kind": "prohibited_claim", "text": text} for text in prohibited),
    ]}
    feedback = get_or_create_feedback(cycle=cycle, run=run, user=users["reviewer"])
    feedback.save_content(by=users["reviewer"], content=content, version=feedback.version)
    feedback.submit(by=users["reviewer"])
    approve_run(cycle=cycle, run=run, by=users["approver"], content=content, version=0)


def decide_proposals(cycle, users) -> tuple[int, int]:
    from reviews.models import EvalCase, EvalCaseStateError

    approved = rejected = 0
    for case in EvalCase.objects.filter(cycle=cycle, status=EvalCase.Status.PROPOSED).order_by("eval_id"):
        try:
            case.approve(by=users["approver"])
            approved += 1
        except EvalCaseStateError as exc:
            case.reject(by=users["approver"], reason=f"Not usable as generated: {exc}")
            rejected += 1
    return approved, rejected


def retire_suite(users) -> None:
    from reviews.models import EvalCase

    for case in EvalCase.objects.filter(status=EvalCase.Status.APPROVED):
        case.retire(by=users["approver"])


# --- 1. as the app does it -------------------------------------------------------------------------------------


def app_cycle(users, *, timeout: float) -> dict:
    from reviews.models import GateRun, GenerationJob, Optimization
    from runs.models import Run
    from runs.work import start_batch

    harness, dataroom, questions = sample()
    marks: dict[str, float] = {}
    started = time.monotonic()
    batch = start_batch(harness=harness, dataroom=dataroom, questions=questions, user=users["engineer"])
    cycle = batch.cycles.get()
    reviewed: set[int] = set()
    # Review each run as soon as it has finished, as reviewers would.
    while len(reviewed) < len(questions):
        for run in Run.objects.filter(batch=batch, status__in=[Run.Status.SUCCEEDED, Run.Status.FAILED]).exclude(
                pk__in=reviewed).select_related("question"):
            if run.status == Run.Status.FAILED:
                raise SystemExit(f"Run {run.pk} failed: {run.last_error}")
            review_and_approve(cycle, run, users)
            reviewed.add(run.pk)
        if time.monotonic() - started > timeout:
            raise SystemExit("Gave up waiting for the runs.")
        time.sleep(POLL_SECONDS)
    marks["runs reviewed"] = time.monotonic() - started
    evals_job = wait_for("eval proposals", lambda: cycle.generation_jobs.filter(
        kind=GenerationJob.Kind.EVALS, status__in=[GenerationJob.Status.SUCCEEDED, GenerationJob.Status.FAILED]).first()
        or cycle.generation_jobs.filter(status=GenerationJob.Status.FAILED).first(), timeout)
    if evals_job.status == GenerationJob.Status.FAILED:
        raise SystemExit(f"Generation failed: {evals_job.last_error}")
    marks["proposals"] = time.monotonic() - started
    settle_evidence(cycle, in_worker=True, timeout=timeout)  # the approver reads each proposal's back-test
    marks["back-tests"] = time.monotonic() - started
    approved, rejected = decide_proposals(cycle, users)
    marks["proposals decided"] = time.monotonic() - started
    optimization = wait_for("HALO", lambda: Optimization.objects.filter(
        cycle=cycle, status__in=[Optimization.Status.SUCCEEDED, Optimization.Status.FAILED]).first()
        or GateRun.objects.filter(cycle=cycle, status=GateRun.Status.FAILED).first(), timeout)
    wall = time.monotonic() - started
    if isinstance(optimization, GateRun):
        raise SystemExit(f"The gate failed: {optimization.last_error}")
    return {"wall": wall, "marks": marks, "cycle": cycle, "approved": approved, "rejected": rejected,
            "optimization": optimization}


def work_seconds(cycle) -> dict[str, float]:
    """How long each step was actually working, from the timestamps on the rows."""
    from django.db.models import Max, Min

    from reviews.models import GateRun, GenerationJob

    runs = cycle.runs.aggregate(start=Min("started_at"), end=Max("finished_at"))
    steps = {"runs (first start to last finish)": (runs["end"] - runs["start"]).total_seconds()}
    for job in cycle.generation_jobs.filter(status=GenerationJob.Status.SUCCEEDED).order_by("created_at"):
        steps[f"{job.get_kind_display()}"] = job.duration_seconds or 0.0
    gate = GateRun.objects.filter(cycle=cycle, status=GateRun.Status.SUCCEEDED).order_by("-finished_at").first()
    steps["gate (promptfoo)"] = gate.duration_seconds if gate else 0.0
    optimization = cycle.optimizations.order_by("-created_at").first()
    steps["HALO"] = optimization.duration_seconds or 0.0
    return steps


def handoffs(cycle) -> list[tuple[str, float, float, float]]:
    """Each step of the chain: (name, seconds from its row's creation to its start, seconds working, seconds from the
    previous step's end to this one's start, where the app chains them). Queueing and idle waits show here."""
    from reviews.models import BackTestRun, GateRun, JudgeCalibration

    steps = []
    for job in cycle.generation_jobs.order_by("created_at"):
        steps.append((job.get_kind_display(), job))
    backtests = list(BackTestRun.objects.filter(case__cycle=cycle).order_by("created_at"))
    steps += [(f"back-test {row.case.eval_id[:24]} ({row.purpose})", row) for row in backtests]
    first_run = cycle.runs.order_by("created_at").first()
    since = first_run.created_at if first_run else cycle.created_at
    steps += [("judge calibration", row) for row in JudgeCalibration.objects.filter(created_at__gte=since)
              .order_by("created_at")]
    steps += [("gate", row) for row in GateRun.objects.filter(cycle=cycle).order_by("created_at")]
    steps += [("HALO", row) for row in cycle.optimizations.order_by("created_at")]
    lines, previous_end = [], None
    for name, row in steps:
        if not (row.started_at and row.finished_at):
            continue
        queued = (row.started_at - row.created_at).total_seconds()
        working = (row.finished_at - row.started_at).total_seconds()
        lines.append((name, queued, working, (row.started_at - previous_end).total_seconds() if previous_end else 0.0))
        if not name.startswith(("back-test", "judge calibration")):
            previous_end = row.finished_at
    return lines


def critical_path(cycle, work: dict[str, float]) -> tuple[float, float, float]:
    """(longest single run, the chain after the runs, their sum): the least wall time a cycle can take."""
    longest = max((run.duration_seconds or 0.0) for run in cycle.runs.all())
    chain = sum(seconds for name, seconds in work.items() if not name.startswith("runs"))
    return longest, chain, longest + chain


# --- 2. as the notebook does it ----------------------------------------------------------------------------------


@contextmanager
def in_process():
    """Nothing goes to the broker, and nothing starts by itself: each step is called below."""
    from django.conf import settings

    from reviews import tasks as review_tasks
    from runs import tasks as run_tasks

    tasks = [run_tasks.execute_run, review_tasks.generate_insights_task, review_tasks.generate_evals_task,
             review_tasks.run_gate_task, review_tasks.run_optimization_task, *_evidence_tasks()]
    saved = [(task, task.__dict__.get("delay")) for task in tasks]
    flags = (settings.AUTO_GATE, settings.AUTO_HALO)
    for task in tasks:
        task.delay = lambda *args, **kwargs: None
    settings.AUTO_GATE = settings.AUTO_HALO = False
    try:
        yield
    finally:
        settings.AUTO_GATE, settings.AUTO_HALO = flags
        for task, delay in saved:
            if delay is None:
                del task.delay
            else:
                task.delay = delay


def sequential_cycle(users) -> dict:
    from reviews.gate import request_gate, run_gate
    from reviews.generation import run_job
    from reviews.models import Cycle, GateRun, GenerationJob
    from reviews.optimization import request_optimization, run_optimization
    from runs.models import Run
    from runs.runner import execute_run

    harness, dataroom, questions = sample()
    marks: dict[str, float] = {}
    with in_process():
        started = time.monotonic()
        runs = []
        for index, question in enumerate(questions, start=1):
            run = Run.objects.create(harness=harness, dataroom=dataroom, question=question, label=f"trace-{index:02d}",
                                     trace_id=Run.new_trace_id(), created_by=users["engineer"])
            run.claim()
            execute_run(run=run)
            run.refresh_from_db()
            if run.status != Run.Status.SUCCEEDED:
                raise SystemExit(f"Sequential run {run.pk} failed: {run.last_error}")
            runs.append(run)
        marks["runs"] = time.monotonic() - started
        cycle = Cycle.objects.create_from_runs(runs=runs, name="sequential", user=users["engineer"])
        for run in runs:
            review_and_approve(cycle, run, users)
        marks["reviewed"] = time.monotonic() - started
        for kind in (GenerationJob.Kind.INSIGHTS, GenerationJob.Kind.EVALS):
            job = cycle.generation_jobs.get(kind=kind, status=GenerationJob.Status.QUEUED)
            job.claim()
            run_job(job=job)
            job.refresh_from_db()
            if job.status != GenerationJob.Status.SUCCEEDED:
                raise SystemExit(f"Sequential {kind} failed: {job.last_error}")
        marks["proposals"] = time.monotonic() - started
        settle_evidence(cycle, in_worker=False, timeout=0)
        marks["back-tests"] = time.monotonic() - started
        approved, rejected = decide_proposals(cycle, users)
        gate_run = request_gate(cycle=cycle, user=users["approver"])
        gate_run.claim()
        run_gate(gate_run=gate_run)
        if gate_run.status != GateRun.Status.SUCCEEDED:
            raise SystemExit(f"Sequential gate failed: {gate_run.last_error}")
        marks["gate"] = time.monotonic() - started
        optimization = request_optimization(cycle=cycle, user=users["engineer"])
        optimization.claim()
        run_optimization(optimization=optimization)
        wall = time.monotonic() - started
    return {"wall": wall, "marks": marks, "cycle": cycle, "approved": approved, "rejected": rejected,
            "optimization": optimization}


# --- the suite's evidence: back-tests and the judge's calibration ----------------------------------------------


def _evidence_tasks() -> list:
    """The back-test and calibration tasks, where this version of the app has them."""
    from reviews import tasks as review_tasks

    return [task for task in (getattr(review_tasks, "backtest_task", None),
                              getattr(review_tasks, "calibrate_judge_task", None)) if task is not None]


def _pending_evidence(cycle):
    """Back-tests of the cycle's cases and judge calibrations still queued or running."""
    pending = []
    try:
        from reviews.models import BackTestRun

        pending += list(BackTestRun.objects.filter(case__cycle=cycle, status__in=BackTestRun.ACTIVE_STATUSES))
    except ImportError:
        pass
    try:
        from reviews.models import JudgeCalibration

        pending += list(JudgeCalibration.objects.filter(status__in=JudgeCalibration.ACTIVE_STATUSES))
    except ImportError:
        pass
    return pending


def settle_evidence(cycle, *, in_worker: bool, timeout: float) -> None:
    """Let the back-tests and calibrations the cycle queued finish: in the worker, or here one by one."""
    from reviews import tasks as review_tasks

    if in_worker:
        wait_for("back-tests and judge calibration", lambda: not _pending_evidence(cycle) or None, timeout)
        return
    for _ in range(200):
        pending = [row for row in _pending_evidence(cycle) if row.status == row.Status.QUEUED]
        if not pending:
            return
        row = pending[0]
        task = review_tasks.backtest_task if type(row).__name__ == "BackTestRun" else review_tasks.calibrate_judge_task
        task.apply(args=[row.pk], throw=True)


def evidence_lines(cycle) -> list[str]:
    """How many approved cases catch the failure they came from, and how far the judge agrees with the experts."""
    from reviews.models import EvalCase

    cases = list(EvalCase.objects.filter(cycle=cycle, status=EvalCase.Status.APPROVED).order_by("eval_id"))
    lines = []
    try:
        from reviews.backtest import backtest_state
    except ImportError:
        backtest_state = None
    states = {case.eval_id: backtest_state(case) for case in cases} if backtest_state else {}
    decided = {eval_id: state for eval_id, state in states.items() if state.evidence is not None}
    if decided:
        expected = [state for state in decided.values() if state.expects_failure]
        caught = [state for state in expected if state.catches]
        lines.append(f"back-test: {len(caught)} of {len(expected)} approved case(s) from failed feedback catch the "
                     f"failure they came from (" + ", ".join(f"{eval_id}: {state.label}" for eval_id, state in
                                                              states.items()) + ")")
        examples = [state.evidence.pass_example_ok for state in decided.values()]
        lines.append(f"back-test: {sum(1 for ok in examples if ok)} of {len(examples)} pass their own pass example")
    else:
        gate = cycle.gate_runs.filter(status="succeeded").order_by("-finished_at").first()
        rows = list(gate.rows.filter(eval_case__in=cases)) if gate else []
        caught = [row for row in rows if not row.passed and not row.error]
        lines.append(f"catch (no back-test rows; by the gate on the cycle's own answers): {len(caught)} of {len(rows)} "
                     "approved case(s) fail on the answer they came from")
    try:
        from reviews import calibration
    except ImportError:
        return lines + ["judge agreement: not available in this version (no reviews.calibration)"]
    agreement = calibration.agreement()
    judge = agreement.judge

    def rate(value):
        return "n/a" if value is None else f"{value:.2f}"

    lines.append(
        f"judge agreement ({judge.model if judge else '?'}): {agreement.labels} human label(s), {agreement.agreed} "
        f"agreed; TPR {rate(agreement.tpr)}, TNR {rate(agreement.tnr)}, kappa {rate(agreement.kappa)} "
        f"(TP {agreement.tp}, FN {agreement.fn}, TN {agreement.tn}, FP {agreement.fp}, errors {agreement.errors}); "
        + ("calibrated" if agreement.calibrated else f"not calibrated: {agreement.why_not_calibrated()}"))
    for kind, counts in sorted(agreement.by_kind.items()):
        lines.append(f"  {kind}: {counts['agreed']} of {counts['labels']} agreed" +
                     (f", {counts['errors']} error(s)" if counts.get("errors") else ""))
    return lines


# --- main ------------------------------------------------------------------------------------------------------


def describe(result: dict) -> str:
    optimization = result["optimization"]
    gate = result["cycle"].gate_runs.order_by("-finished_at").first()
    from reviews import halo

    sections = len(halo.REQUIRED_SECTIONS) - len(optimization.missing_sections)
    checks = getattr(optimization, "evidence_checks", None) or {}
    cited = (f", {len(checks.get('citations') or []) - len(checks.get('unresolved') or [])}/"
             f"{len(checks.get('citations') or [])} citations resolved, {len(checks.get('stated_claims') or [])} "
             f"false \"does not state\" claim(s)") if checks else ""
    return (f"{result['approved']} eval(s) approved, {result['rejected']} rejected; gate {gate.passed}/{gate.total} "
            f"passed; HALO {optimization.status} ({sections}/7 sections, "
            f"{optimization.events.filter(type='tool_call').count()} tool calls{cited})"
            + (f": {optimization.last_error[:200]}" if optimization.last_error else ""))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--delay", type=float, default=0.5, help="seconds the stand-in waits before every answer")
    parser.add_argument("--concurrency", type=int, default=2, help="processes of the default queue's worker")
    parser.add_argument("--run-concurrency", type=int, default=16, help="threads of the run queue's worker")
    parser.add_argument("--timeout", type=float, default=600, help="give up on a step after this many seconds")
    parser.add_argument("--skip-sequential", action="store_true", help="time the app only")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="loopsite-bench-cycle-"))
    queue = f"loopsite-bench-{uuid.uuid4().hex[:10]}"
    port = free_port()
    configure(tmp, standin_url=f"http://127.0.0.1:{port}/v1", queue=queue)

    import django

    django.setup()
    from loopsite.standin.server import serve_in_thread

    server, thread = serve_in_thread("127.0.0.1", port, delay=args.delay)
    worker = None
    try:
        users = setup_data()
        worker, worker_log = start_worker(tmp, concurrency=args.concurrency, queue=queue,
                                          run_concurrency=args.run_concurrency)
        print(f"Stand-in at {server.base_url}, {args.delay:g} s per call; worker concurrency {args.concurrency}, "
              f"run concurrency {args.run_concurrency}; "
              f"database {tmp / 'bench.sqlite3'}")

        app = app_cycle(users, timeout=args.timeout)
        settle_evidence(app["cycle"], in_worker=True, timeout=args.timeout)
        stop_worker(worker)
        worker = None
        work = work_seconds(app["cycle"])
        print(f"\n1. As the app does it (parallel runs in the worker, chained tasks): {app['wall']:.1f} s")
        print("   " + describe(app))
        for name, seconds in app["marks"].items():
            print(f"   {name + ' at':<28} {seconds:7.1f} s")
        print("   work recorded on the rows:")
        for name, seconds in work.items():
            print(f"     {name:<34} {seconds:7.1f} s")
        busy = sum(work.values())
        longest, chain, critical = critical_path(app["cycle"], work)
        print(f"   critical path: longest run {longest:.1f} s + chain {chain:.1f} s = {critical:.1f} s; "
              f"app wall time = {app['wall'] / critical:.2f}x the critical path")
        print(f"   app overhead (wall minus recorded work, incl. the scripted people): {app['wall'] - busy:.1f} s")
        print("   chain rows (queued = row created to started; after = previous chain step's end to this start):")
        for name, queued, working, after in handoffs(app["cycle"]):
            print(f"     {name:<44} queued {queued:5.1f} s  working {working:6.1f} s  after {after:6.1f} s")
        print("   evidence:")
        for line in evidence_lines(app["cycle"]):
            print(f"     {line}")

        if not args.skip_sequential:
            retire_suite(users)  # the gate runs the whole approved suite: start the second cycle from an empty one
            seq = sequential_cycle(users)
            with in_process():
                settle_evidence(seq["cycle"], in_worker=False, timeout=args.timeout)
            print(f"\n2. Strictly one step after another in this process (as the notebook): {seq['wall']:.1f} s")
            print("   " + describe(seq))
            print("   evidence:")
            for line in evidence_lines(seq["cycle"]):
                print(f"     {line}")
            previous = 0.0
            for name, seconds in {**seq["marks"], "HALO": seq["wall"]}.items():
                print(f"   {name:<28} {seconds - previous:7.1f} s")
                previous = seconds
            print(f"\nSequential / app: {seq['wall']:.1f} s / {app['wall']:.1f} s = {seq['wall'] / app['wall']:.2f}x")
    finally:
        tear_down(worker=worker, server=server, queue=queue, tmp=tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
