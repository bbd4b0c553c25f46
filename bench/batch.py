#!/usr/bin/env python
"""How long does a batch of many runs take, and in how many waves? A benchmark (figures, not a test).

It starts the workers as `make run` does (bench/cycle.py's start_worker: a prefork worker on the
default queue and a threads-pool worker with --run-concurrency threads on the run queue, each queue
this bench's own, on the Redis at CELERY_BROKER_URL), on a throwaway SQLite database, with the
offline stand-in model in this process answering every call after --delay seconds (--fault
rate-limited: every other call is a 429 with Retry-After). Then it starts one batch of --questions
runs (the sample's questions, over and over) on harness v001 and waits until every run has finished.

It prints:
- the batch's wall time (start_batch to the last run's finish) and how the runs ended;
- single-run time (the median run's duration in this batch) and the goal:
  ceil(questions / run concurrency) single runs, and the wall time as a multiple of it;
- the number of waves, from the runs' start times: a run starts a new wave when it starts more than
  half a single-run time after the current wave's first start;
- peak PSS of the run worker process alone and of it with its agent children (sampled every 0.5 s
  from /proc/<pid>/smaps_rollup).

    .venv/bin/python bench/batch.py [--questions 50] [--delay 3] [--run-concurrency 16] [--fault rate-limited]
"""

from __future__ import annotations

import argparse
import math
import os
import secrets
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cycle import configure, free_port, setup_data, start_worker, tear_down  # noqa: E402
from memory import pss_kib, process_tree  # noqa: E402


class PeakSampler(threading.Thread):
    """Samples the PSS of `pid` alone and with its descendants until stopped."""

    def __init__(self, pid: int, every: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.pid, self.every = pid, every
        self.peak_self = self.peak_tree = 0
        self.peak_children = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            tree = process_tree(self.pid)
            own = pss_kib(self.pid)
            total = own + sum(pss_kib(child) for child in tree if child != self.pid)
            self.peak_self = max(self.peak_self, own)
            self.peak_tree = max(self.peak_tree, total)
            self.peak_children = max(self.peak_children, len(tree) - 1)
            self.done.wait(self.every)


def waves(starts: list[float], single: float) -> int:
    count, wave_start = 0, None
    for start in sorted(starts):
        if wave_start is None or start - wave_start > single / 2:
            count, wave_start = count + 1, start
    return count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--questions", type=int, default=50, help="runs in the batch")
    parser.add_argument("--delay", type=float, default=3.0, help="seconds the stand-in waits before every answer")
    parser.add_argument("--run-concurrency", type=int, default=16, help="threads of the run worker (RUN_CONCURRENCY)")
    parser.add_argument("--concurrency", type=int, default=2, help="processes of the default worker")
    parser.add_argument("--fault", default=None, help="a stand-in fault mode, e.g. rate-limited")
    parser.add_argument("--timeout", type=float, default=1800)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="loopsite-bench-batch-"))
    queue = f"loopsite-bench-{uuid.uuid4().hex[:10]}"
    port = free_port()
    os.environ.setdefault("SECRET_KEY", secrets.token_urlsafe(50))
    configure(tmp, standin_url=f"http://127.0.0.1:{port}/v1", queue=queue)
    os.environ["RUN_CONCURRENCY"] = str(args.run_concurrency)

    import django

    django.setup()
    from loopsite.standin.server import serve_in_thread

    server, thread = serve_in_thread("127.0.0.1", port, delay=args.delay, fault=args.fault)
    workers = None
    try:
        users = setup_data()
        from runs.models import Dataroom, Harness, Question, Run
        from runs.work import start_batch

        harness = Harness.objects.get(version="v001")
        dataroom = Dataroom.objects.get(name__icontains="FictionalCorp")
        bank = list(Question.objects.order_by("bank_index"))
        questions = [bank[index % len(bank)] for index in range(args.questions)]
        workers, _ = start_worker(tmp, concurrency=args.concurrency, queue=queue, run_concurrency=args.run_concurrency)
        run_worker = workers[1]
        print(f"Stand-in at {server.base_url}, {args.delay:g} s per call{', fault ' + args.fault if args.fault else ''}; "
              f"{args.questions} runs; run worker: threads pool, {args.run_concurrency} threads (pid {run_worker.pid})")
        sampler = PeakSampler(run_worker.pid)
        sampler.start()
        started = time.monotonic()
        batch = start_batch(harness=harness, dataroom=dataroom, questions=questions, user=users["engineer"], cycle=False)
        while Run.objects.filter(batch=batch, status__in=[Run.Status.QUEUED, Run.Status.RUNNING]).exists():
            if time.monotonic() - started > args.timeout:
                raise SystemExit("Gave up waiting for the batch.")
            time.sleep(0.5)
        wall = time.monotonic() - started
        sampler.done.set()
        sampler.join()

        runs = list(Run.objects.filter(batch=batch))
        statuses = {}
        for run in runs:
            statuses[run.status] = statuses.get(run.status, 0) + 1
        durations = [run.duration_seconds for run in runs if run.duration_seconds]
        single = statistics.median(durations)
        first = min(run.started_at for run in runs)
        starts = [(run.started_at - first).total_seconds() for run in runs]
        goal = math.ceil(args.questions / args.run_concurrency) * single
        print(f"\nBatch of {args.questions} runs: {wall:.1f} s wall; "
              + ", ".join(f"{count} {status}" for status, count in sorted(statuses.items())))
        failed = [run for run in runs if run.status == Run.Status.FAILED]
        for run in failed[:3]:
            print(f"   run {run.pk} failed: {run.last_error[:200]}")
        print(f"Single run (median in this batch): {single:.1f} s (min {min(durations):.1f}, max {max(durations):.1f})")
        print(f"Waves (from run start times): {waves(starts, single)}; last run started {max(starts):.1f} s after the first")
        print(f"Goal: ceil({args.questions} / {args.run_concurrency}) x {single:.1f} s = {goal:.1f} s; "
              f"wall time = {wall / goal:.2f}x the goal (target <= 1.3x)")
        print(f"Peak PSS of the run worker: {sampler.peak_self / 1024:.0f} MB alone, "
              f"{sampler.peak_tree / 1024:.0f} MB with its agent children (at most {sampler.peak_children} child processes at once: agents, jailed commands, validators)")
        if args.fault and hasattr(server, "rate_limiter") and server.rate_limiter is not None:
            print(f"Stand-in {args.fault}: {server.rate_limiter.refused} calls refused with 429, "
                  f"{server.rate_limiter.served} served")
    finally:
        tear_down(worker=workers, server=server, queue=queue, tmp=tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
