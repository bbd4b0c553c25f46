#!/usr/bin/env python
"""Does any work get lost, done twice or stuck when things break? A fault benchmark (figures, not a test).

It starts what a deployment runs, all on throwaway state: its own redis-server on a free port (the
machine's Redis is never touched), the offline stand-in model (`python -m loopsite.standin`), a real
prefork Celery worker (consuming both the default and the run queue, so a kill takes both) and a separate `celery beat` (which sends the one sweep,
loopsite.work.sweep_stale_work, every SWEEP_INTERVAL_SECONDS), on a SQLite database in a temporary
directory, with a small WORK_STALE_SECONDS (--stale, default 10) and QUEUED_STALE_SECONDS. Then it
injects one fault at a time and, like a supervisor would, starts the worker again:

  SIGKILL of the worker (and its pool) mid-run, mid-generation, mid-gate and mid-HALO;
  a Redis restart that loses the queued messages of three runs;
  a judge endpoint that refuses connections, and one that never answers (the gate);
  a model endpoint that returns HTTP 500s (runs), and one that returns malformed JSON (generation).

For each it prints: work items, finished exactly once, duplicated, stuck, lost, and seconds from the
fault until every item had finished; for the kills also the seconds until the interrupted item ran
again and whether a child process (agent, promptfoo, HALO) outlived its worker. "Finished" is counted
from the worker's own log: every stored outcome logs `<kind> <pk> attempt <n> finished: <status>`
(loopsite.work.WorkItem.finish), and the sweep logs the rows it fails. Duplicated: an item whose
outcome was stored more than once. Stuck: still running at the end. Lost: still queued at the end.
Every wait is bounded (--timeout per fault). Where a fault is permanent the item must fail with a
readable reason, which is printed.

    .venv/bin/python bench/faults.py [--stale 10] [--queued-stale 10] [--timeout 150] [--only kill-run,redis]
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

POLL = 0.2
FINISHED_LINE = re.compile(r"\b(run|generation|gate|halo) (\d+) attempt (\d+) finished: (succeeded|failed)")
GIVEN_UP_LINE = re.compile(r"\b(run|generation|gate|halo) (\d+): worker lost on its last attempt \((\d+)\), failed")
SCENARIOS = ["kill-run", "kill-generation", "kill-gate", "kill-halo", "redis", "judge-refused", "judge-silent",
             "model-500", "model-bad-json"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait(what: str, check, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(POLL)
    raise TimeoutError(f"gave up waiting for {what} after {timeout:.0f} s")


# --- endpoints that misbehave -------------------------------------------------------------------------------


class _Always500(http.server.BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        body = json.dumps({"error": {"message": "internal error (bench)", "type": "server_error"}}).encode()
        self.send_response(500)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST  # noqa: N815

    def log_message(self, *args):
        pass


def serve_500() -> tuple[http.server.ThreadingHTTPServer, str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Always500)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/v1"


def refusing_port() -> tuple[socket.socket, str]:
    """Bound but never listening: every connection is refused, and no one else can take the port."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock, f"http://127.0.0.1:{sock.getsockname()[1]}/v1"


def silent_port() -> tuple[socket.socket, str]:
    """Listening, never accepting: connections open (the kernel's backlog) and no answer ever comes."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(512)
    return sock, f"http://127.0.0.1:{sock.getsockname()[1]}/v1"


# --- the processes ------------------------------------------------------------------------------------------


class Stack:
    """redis-server, the stand-in, celery beat and the worker, all on throwaway state."""

    def __init__(self, tmp: Path, *, stale: int, queued_stale: int, concurrency: int):
        self.tmp = tmp
        self.concurrency = concurrency
        self.redis_port = free_port()
        self.standin_port = free_port()
        self.queue = f"loopsite-faults-{uuid.uuid4().hex[:8]}"
        self.redis: subprocess.Popen | None = None
        self.standin: subprocess.Popen | None = None
        self.beat: subprocess.Popen | None = None
        self.worker: subprocess.Popen | None = None
        self.worker_logs: list[Path] = []
        self.env = {
            "DJANGO_SETTINGS_MODULE": "loopsite.settings",
            "DATABASE_URL": f"sqlite:///{tmp / 'faults.sqlite3'}",
            "MEDIA_ROOT": str(tmp / "media"),
            "WORK_TEMP_ROOT": str(tmp / "work"),
            "CELERY_BROKER_URL": f"redis://127.0.0.1:{self.redis_port}/0",
            "CELERY_QUEUE": self.queue,
            "LOOPSITE_STANDIN_URL": self.standin_url,
            "WORK_STALE_SECONDS": str(stale),
            "QUEUED_STALE_SECONDS": str(queued_stale),
            "RUN_MAX_ATTEMPTS": "3",
            "RUN_MODEL_MAX_RETRIES": "2",
            "RUN_REQUEST_TIMEOUT_SECONDS": "20",
            "GATE_JUDGE_TIMEOUT_SECONDS": "5",
            "GATE_TIMEOUT_SECONDS": "60",
            "HALO_TIMEOUT_SECONDS": "120",
            "AUTO_GATE": "0",
            "AUTO_HALO": "0",
            "LOG_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
        }
        os.environ.pop("OPENAI_API_KEY", None)  # every model call goes to the stand-in (or a bench endpoint)
        os.environ.update({**self.env, "LOG_LEVEL": "WARNING"})

    @property
    def standin_url(self) -> str:
        return f"http://127.0.0.1:{self.standin_port}/v1"

    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> tuple[subprocess.Popen, Path]:
        log_path = self.tmp / f"{name}.log"
        with log_path.open("ab") as log_file:
            proc = subprocess.Popen(args, cwd=ROOT, env={**os.environ, **self.env, **(env or {})}, stdout=log_file,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        return proc, log_path

    # redis
    def start_redis(self) -> None:
        self.redis, _ = self._spawn("redis", [shutil.which("redis-server") or "redis-server", "--port",
                                              str(self.redis_port), "--bind", "127.0.0.1", "--save", "",
                                              "--appendonly", "no", "--dir", str(self.tmp)])
        import redis

        client = redis.Redis(port=self.redis_port, socket_connect_timeout=1)
        wait("redis-server", lambda: _ping(client), 20)

    def kill_redis(self) -> None:
        _kill(self.redis)
        self.redis = None

    def queued_messages(self) -> int:
        import redis

        client = redis.Redis(port=self.redis_port)
        return int(client.llen(self.queue)) + int(client.llen(f"{self.queue}-runs"))  # default and run queue

    # the stand-in model
    def start_standin(self, *, delay: float, fault: str | None = None) -> None:
        _kill(self.standin)
        args = [sys.executable, "-m", "loopsite.standin", "--port", str(self.standin_port), "--delay", str(delay)]
        self.standin, log_path = self._spawn("standin", args + (["--fault", fault] if fault else []))
        wait("the stand-in", lambda: _connects(self.standin_port), 20)

    # celery
    def start_beat(self) -> None:
        self.beat, _ = self._spawn("beat", [sys.executable, "-m", "celery", "-A", "loopsite", "beat", "--loglevel",
                                            "INFO", "--schedule", str(self.tmp / "beat-schedule")])

    def start_worker(self, **env: str) -> None:
        index = len(self.worker_logs) + 1
        args = [sys.executable, "-m", "celery", "-A", "loopsite", "worker", "--pool", "prefork", "--concurrency",
                str(self.concurrency), "--queues", f"{self.queue},{self.queue}-runs", "--loglevel", "INFO", "--without-gossip",
                "--without-mingle", "--without-heartbeat", "--hostname", f"faults-{index}@%h"]
        self.worker, log_path = self._spawn(f"worker-{index}", args, env)
        self.worker_logs.append(log_path)
        wait("the worker", lambda: "ready." in log_path.read_text(errors="replace") or self.worker.poll() is not None, 60)
        if self.worker.poll() is not None:
            raise SystemExit(f"The worker did not start:\n{log_path.read_text(errors='replace')[-3000:]}")

    def kill_worker(self) -> None:
        """SIGKILL the worker and its pool processes at once, as a machine failure would."""
        _kill(self.worker)
        self.worker = None

    def stop_worker(self) -> None:
        if self.worker is not None and self.worker.poll() is None:
            os.killpg(self.worker.pid, signal.SIGTERM)
            try:
                self.worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                _kill(self.worker)
        self.worker = None

    def close(self) -> None:
        self.stop_worker()
        for proc in (self.beat, self.standin, self.redis):
            _kill(proc)

    def finishes(self) -> dict[tuple[str, int], int]:
        """How many times each item's outcome was stored, from every worker incarnation's log."""
        counts: dict[tuple[str, int], int] = {}
        for path in [*self.worker_logs, self.tmp / "beat.log"]:  # the sweep runs in beat
            if not path.exists():
                continue
            text = path.read_text(errors="replace")
            for match in [*FINISHED_LINE.finditer(text), *GIVEN_UP_LINE.finditer(text)]:
                key = (match.group(1), int(match.group(2)))
                counts[key] = counts.get(key, 0) + 1
        return counts

    def orphans(self) -> list[str]:
        """Child processes (agent, promptfoo, HALO, jailed commands) still alive that this bench's worker started."""
        found = []
        own = {p.pid for p in (self.redis, self.standin, self.beat, self.worker) if p is not None}
        marker = str(self.tmp).encode()
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit() or int(proc.name) in own:
                continue
            try:
                cmdline = (proc / "cmdline").read_bytes()
                environ = (proc / "environ").read_bytes() if os.access(proc / "environ", os.R_OK) else b""
                state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if state == "Z" or not re.search(rb"agent_child|halo_child|promptfoo|node|bwrap", cmdline):
                continue
            if marker in cmdline or marker in environ:
                shown = cmdline.replace(b"\0", b" ")[:80].decode(errors="replace")
                found.append(f"{proc.name} {shown}")
        return found


def _ping(client) -> bool:
    try:
        return bool(client.ping())
    except Exception:  # noqa: BLE001
        return False


def _connects(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _kill(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=10)


# --- measuring ---------------------------------------------------------------------------------------------


@dataclass
class Result:
    name: str
    items: int = 0
    once: int = 0
    duplicated: int = 0
    stuck: int = 0
    lost: int = 0
    seconds: float | None = None
    reclaimed: float | None = None
    requeued: float | None = None
    orphans: int | None = None
    expected: str = "succeeded"
    statuses: dict[str, int] = field(default_factory=dict)
    reason: str = ""
    note: str = ""


def settle(stack: Stack, name: str, items: list, *, since: float, timeout: float, expected: str = "succeeded",
           interrupted=None, items_fn=None, lost_since=None) -> Result:
    """Wait (bounded) until every item has finished, then count. `items_fn()` re-reads a growing list.
    `lost_since` (a datetime: when the messages were lost): recovered once every item was sent again or claimed."""
    result = Result(name=name, expected=expected)
    reclaim_from = interrupted.attempts if interrupted is not None else None
    deadline = time.monotonic() + timeout
    while True:
        rows = [type(item).objects.get(pk=item.pk) for item in (items_fn() if items_fn else items)]
        if interrupted is not None and result.reclaimed is None:
            again = type(interrupted).objects.get(pk=interrupted.pk)
            if result.requeued is None and (again.status != "running" or again.attempts > reclaim_from):
                result.requeued = time.monotonic() - since  # the sweep took it back from the dead attempt
            if again.attempts > reclaim_from and again.status != "queued":
                result.reclaimed = time.monotonic() - since
        if lost_since is not None and result.requeued is None and all(
                row.status != "queued" or (row.heartbeat_at and row.heartbeat_at > lost_since) for row in rows):
            result.requeued = time.monotonic() - since  # every lost message was sent again (or its row claimed)
        if rows and all(row.is_finished for row in rows) and (items_fn is None or items_fn(done=True)):
            result.seconds = time.monotonic() - since
            break
        if time.monotonic() > deadline:
            break
        time.sleep(POLL)
    time.sleep(1.0)  # let a duplicate, if any, reach the log
    finishes = stack.finishes()
    result.items = len(rows)
    for row in rows:
        result.statuses[row.status] = result.statuses.get(row.status, 0) + 1
        count = finishes.get((row.WORK_KIND, row.pk), 0)
        if row.status == "running":
            result.stuck += 1
        elif row.status in ("queued", "waiting"):
            result.lost += 1
        elif count == 1:
            result.once += 1
        if count > 1:
            result.duplicated += 1
        if row.status == "failed" and not result.reason:
            result.reason = row.last_error
    return result


def running_for(model, pk: int, seconds: float, timeout: float):
    """Wait until the row has been running for `seconds` (the work is under way), return it."""
    from django.utils import timezone

    def check():
        row = model.objects.get(pk=pk)
        if row.status == "running" and row.started_at and (timezone.now() - row.started_at).total_seconds() >= seconds:
            return row
        return None

    return wait(f"{model.__name__} {pk} to be running", check, timeout)


def kill_mid(stack: Stack, name: str, model, pk: int, items, *, after: float, timeout: float, items_fn=None) -> Result:
    interrupted = running_for(model, pk, after, timeout)
    stack.kill_worker()
    since = time.monotonic()
    time.sleep(3.0)  # PR_SET_PDEATHSIG is immediate; give the kernel and the jail a moment
    orphans = stack.orphans()
    stack.start_worker()  # the supervisor starts it again
    result = settle(stack, name, items, since=since, timeout=timeout, interrupted=interrupted, items_fn=items_fn)
    result.orphans = len(orphans)
    if orphans:
        result.note = "; ".join(orphans)[:200]
    return result


# --- the data ---------------------------------------------------------------------------------------------------


def setup_database():
    """The schema straight from the models (as the tests' --nomigrations does), the sample and three users."""
    from django.apps import apps
    from django.conf import settings
    from django.contrib.auth.models import Group, User
    from django.core.management import call_command

    settings.MIGRATION_MODULES = {config.label: None for config in apps.get_app_configs()}
    call_command("migrate", run_syncdb=True, verbosity=0)
    call_command("load_sample", stdout=open(os.devnull, "w"))
    users = {}
    for name, role in (("eddie", "engineer"), ("rita", "reviewer"), ("april", "approver")):
        user = User.objects.create_user(username=name, password=f"pw-{name}")
        user.groups.add(Group.objects.get_or_create(name=role)[0])
        users[role] = user
    return users


def sample():
    from runs.models import Dataroom, Harness, Question

    questions = list(Question.objects.filter(is_default=True).order_by("bank_index"))
    return Harness.objects.get(version="v001"), Dataroom.objects.get(name__icontains="FictionalCorp"), questions


# --- main ---------------------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stale", type=int, default=10, help="WORK_STALE_SECONDS")
    parser.add_argument("--queued-stale", type=int, default=10, help="QUEUED_STALE_SECONDS")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=150, help="give up on one fault after this many seconds")
    parser.add_argument("--only", default="", help=f"comma-separated subset of {','.join(SCENARIOS)}")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, database)")
    args = parser.parse_args()
    wanted = [name for name in args.only.split(",") if name] or SCENARIOS
    unknown = set(wanted) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown fault(s): {', '.join(sorted(unknown))}")

    tmp = Path(tempfile.mkdtemp(prefix="loopsite-bench-faults-"))
    stack = Stack(tmp, stale=args.stale, queued_stale=args.queued_stale, concurrency=args.concurrency)
    import django

    django.setup()
    from django.conf import settings
    from django.utils import timezone

    from bench.cycle import decide_proposals, review_and_approve, settle_evidence
    from reviews.gate import request_gate
    from reviews.generation import request_generation
    from reviews.models import GateRun, GenerationJob, Optimization
    from reviews.optimization import request_optimization
    from runs.models import Run
    from runs.work import start_batch

    started = time.monotonic()
    results: list[Result] = []
    keep_sockets = []
    try:
        users = setup_database()
        harness, dataroom, questions = sample()
        stack.start_redis()
        stack.start_standin(delay=0.3)
        stack.start_beat()
        stack.start_worker()
        print(f"WORK_STALE_SECONDS={settings.WORK_STALE_SECONDS}  QUEUED_STALE_SECONDS={settings.QUEUED_STALE_SECONDS}  "
              f"SWEEP_INTERVAL_SECONDS={settings.SWEEP_INTERVAL_SECONDS:g}  RUN_MAX_ATTEMPTS=3  worker concurrency "
              f"{args.concurrency}  (goal: recovery within {2 * settings.WORK_STALE_SECONDS} s)")
        print(f"state in {tmp}\n", flush=True)
        cycle = None

        def run(name: str, fn) -> None:
            if name not in wanted:
                return
            print(f"... {name}", flush=True)
            try:
                results.append(fn())
            except Exception as exc:  # noqa: BLE001 - report it and go on with the next fault
                results.append(Result(name=name, note=f"bench error: {type(exc).__name__}: {exc}"[:300]))
            print(f"    done at {time.monotonic() - started:.0f} s", flush=True)

        needs_cycle = any(name in wanted for name in ("kill-generation", "kill-gate", "kill-halo", "judge-refused",
                                                       "judge-silent", "model-bad-json"))

        def kill_run() -> Result:
            nonlocal cycle
            batch = start_batch(harness=harness, dataroom=dataroom, questions=questions, user=users["engineer"])
            cycle = batch.cycles.get()
            runs = list(Run.objects.filter(batch=batch).order_by("pk"))
            first = wait("a run to start", lambda: Run.objects.filter(batch=batch, status="running").first(), 60)
            return kill_mid(stack, "SIGKILL mid-run", Run, first.pk, runs, after=1.5, timeout=args.timeout)

        run("kill-run", kill_run)
        if cycle is None and needs_cycle:  # the later faults need a cycle of finished runs
            batch = start_batch(harness=harness, dataroom=dataroom, questions=questions, user=users["engineer"])
            cycle = batch.cycles.get()
            wait("the cycle's runs", lambda: not Run.objects.filter(batch=batch, status__in=["queued", "running"]).exists(),
                 args.timeout)

        def kill_generation() -> Result:
            stack.start_standin(delay=4.0)  # one model call per step: make it long enough to be killed in
            for each in cycle.runs.filter(status="succeeded").select_related("question"):
                review_and_approve(cycle, each, users)  # the last approval starts the insights -> evals chain
            job = wait("the insights job", lambda: cycle.generation_jobs.filter(kind="insights").first(), 30)

            def chain(done: bool = False):
                jobs = list(cycle.generation_jobs.order_by("pk"))
                if done:  # the chain is over once an evals job finished, or a step failed
                    return any(j.kind == "evals" and j.is_finished for j in jobs) or any(j.status == "failed" for j in jobs)
                return jobs

            return kill_mid(stack, "SIGKILL mid-generation", GenerationJob, job.pk, [], after=1.5,
                            timeout=args.timeout, items_fn=chain)

        if "kill-generation" in wanted:
            run("kill-generation", kill_generation)
        elif needs_cycle:
            _prepare_generation(cycle, users, review_and_approve, args.timeout)
        if needs_cycle:
            # The approver reads each proposal's back-test first: approving one whose back-test has not finished
            # would need a written reason, and decide_proposals would reject it, leaving the gate nothing to judge.
            stack.start_standin(delay=0.3)  # kill-generation slowed every model call down; the judge needs none of it
            settle_evidence(cycle, in_worker=True, timeout=args.timeout)
            approved, _ = decide_proposals(cycle, users)  # the approved proposals are the gate's suite
            if not approved:
                raise SystemExit("No proposal could be approved, so the gate faults would have nothing to judge.")

        def kill_gate() -> Result:
            stack.start_standin(delay=3.0)  # every judge call takes a while
            gate_run = request_gate(cycle=cycle, user=users["approver"])
            return kill_mid(stack, "SIGKILL mid-gate", GateRun, gate_run.pk, [gate_run], after=2.0, timeout=args.timeout)

        run("kill-gate", kill_gate)

        def kill_halo() -> Result:
            stack.start_standin(delay=1.0)
            optimization = request_optimization(cycle=cycle, user=users["engineer"])
            return kill_mid(stack, "SIGKILL mid-HALO", Optimization, optimization.pk, [optimization], after=3.0,
                            timeout=args.timeout)

        run("kill-halo", kill_halo)

        def redis_restart() -> Result:
            stack.start_standin(delay=0.3)
            stack.stop_worker()
            batch = start_batch(harness=harness, dataroom=dataroom, questions=questions[:3], user=users["engineer"],
                                cycle=False)
            runs = list(Run.objects.filter(batch=batch))
            wait("the messages", lambda: stack.queued_messages() >= len(runs), 10)
            stack.kill_redis()
            stack.start_redis()  # empty: the three messages are gone
            since, lost_at = time.monotonic(), timezone.now()
            lost_messages = len(runs) - stack.queued_messages()
            stack.start_worker()
            result = settle(stack, "Redis restart, queued messages lost", runs, since=since, timeout=args.timeout,
                            lost_since=lost_at)
            result.note = f"{lost_messages} message(s) lost with Redis; sent again by the sweep"
            return result

        run("redis", redis_restart)

        def gate_against(name: str, url: str) -> Result:
            stack.stop_worker()
            stack.start_worker(LOOPSITE_STANDIN_URL=url)
            since = time.monotonic()
            gate_run = request_gate(cycle=cycle, user=users["approver"])
            result = settle(stack, name, [gate_run], since=since, timeout=args.timeout, expected="failed")
            stack.stop_worker()
            stack.start_worker()
            return result

        def judge_refused() -> Result:
            sock, url = refusing_port()
            keep_sockets.append(sock)
            return gate_against("judge refuses connections", url)

        def judge_silent() -> Result:
            sock, url = silent_port()
            keep_sockets.append(sock)
            return gate_against("judge never answers", url)

        run("judge-refused", judge_refused)
        run("judge-silent", judge_silent)

        def model_500() -> Result:
            server, url = serve_500()
            try:
                stack.stop_worker()
                stack.start_worker(LOOPSITE_STANDIN_URL=url)
                since = time.monotonic()
                batch = start_batch(harness=harness, dataroom=dataroom, questions=questions[:2], user=users["engineer"],
                                    cycle=False)
                result = settle(stack, "model endpoint returns 500s", list(Run.objects.filter(batch=batch)),
                                since=since, timeout=args.timeout, expected="failed")
            finally:
                server.shutdown()
            stack.stop_worker()
            stack.start_worker()
            return result

        run("model-500", model_500)

        def model_bad_json() -> Result:
            stack.start_standin(delay=0.3, fault="broken-json")
            since = time.monotonic()
            job = request_generation(cycle=cycle, user=users["approver"])
            result = settle(stack, "model returns malformed JSON", [job], since=since, timeout=args.timeout,
                            expected="failed")
            stack.start_standin(delay=0.3)
            return result

        run("model-bad-json", model_bad_json)
    finally:
        stack.close()
        for sock in keep_sockets:
            sock.close()

    print_table(results, stale=settings.WORK_STALE_SECONDS)
    print(f"\nTotal bench time {time.monotonic() - started:.0f} s." + ("" if args.keep else " Temporary state removed."))
    if args.keep:
        print(f"Logs and database kept in {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def _prepare_generation(cycle, users, review_and_approve, timeout: float) -> None:
    """Without the kill-generation fault: approve the runs and let the chain run to its proposals."""
    for each in cycle.runs.filter(status="succeeded").select_related("question"):
        review_and_approve(cycle, each, users)
    wait("the eval proposals", lambda: cycle.generation_jobs.filter(kind="evals", status__in=["succeeded", "failed"])
         .exists() or cycle.generation_jobs.filter(status="failed").exists(), timeout)


def print_table(results: list[Result], *, stale: int) -> None:
    goal = 2 * stale
    header = (f"{'fault':<36} {'items':>5} {'once':>4} {'dup':>3} {'stuck':>5} {'lost':>4} {'recover s':>9} "
              f"{'all done s':>10} {'ran again s':>11} {'orphans':>7}  outcome")
    print("\n" + header)
    print("-" * len(header))
    for r in results:
        statuses = ", ".join(f"{n} {s}" for s, n in sorted(r.statuses.items()))
        recover = r.requeued if r.requeued is not None else r.seconds
        met = ""
        if r.expected == "failed":  # a permanent fault: the item must fail, once, with a readable reason
            met = "ok: failed with a reason" if r.statuses == {"failed": r.items} and r.reason else "NOT AS EXPECTED"
        elif recover is not None:
            met = "ok" if recover <= goal and r.statuses == {"succeeded": r.items} else "NOT AS EXPECTED"
        print(f"{r.name:<36} {r.items:>5} {r.once:>4} {r.duplicated:>3} {r.stuck:>5} {r.lost:>4} {_fmt(recover):>9} "
              f"{_fmt(r.seconds):>10} {_fmt(r.reclaimed):>11} {_fmt(r.orphans):>7}  {statuses or '-'} {met}")
        reason = " ".join(r.reason.split())
        if reason:
            print(f"{'':<38}{'reason' if r.expected == 'failed' else 'a failure'}: {reason[:230]}")
        if r.note:
            print(f"{'':<38}{r.note}")
    print(f"\nrecover s: kills: from the kill until the sweep took the interrupted item back from its dead attempt "
          f"(queued again); Redis: from the restart until every lost message was sent again; permanent faults: until "
          f"the item failed with its reason. Goal <= 2 x WORK_STALE_SECONDS = {goal} s for the kills and Redis. "
          f"all done s: until every item had finished, doing the work again included. "
          f"ran again s: until the interrupted item was claimed again (it may wait behind other queued work). "
          f"orphans: child processes alive 3 s after their worker was killed.")


def _fmt(value) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if isinstance(value, float) else str(value)


if __name__ == "__main__":
    sys.exit(main())
