#!/usr/bin/env python
"""How much memory do the processes `make run` starts hold, idle and during a batch? (Figures, not a test.)

It starts every process as `manage.py run_all` does (the same command lines, from
loopsite.management.commands.run_all.process_commands: the stand-in model, gunicorn, the default
worker with beat, the run worker), with this bench's own queues on the Redis at CELERY_BROKER_URL,
a throwaway SQLite database and free ports. Then it prints the PSS (proportional set size, from
/proc/<pid>/smaps_rollup: shared pages are split between the processes that share them) of each
process and of each process with its children:

1. idle, --settle seconds after every process is ready;
2. the peak during a batch of --runs runs (stand-in delay --delay), sampled every 0.5 s. Agent
   children are counted apart: they live only while their run does.

Goal (issue 12): web + workers < 300 MB idle.

    .venv/bin/python bench/memory.py [--settle 10] [--runs 16] [--delay 1]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._app import configure, print_started, started  # noqa: E402


def pss_kib(pid: int) -> int:
    """PSS of one process in KiB (0 if it is gone or unreadable)."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _parents() -> dict[int, int]:
    parents = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        parents[int(entry.name)] = int(fields[1])
    return parents


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants."""
    parents = _parents()
    tree, frontier = [pid], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        tree += children
        frontier = children
    return tree


def command_name(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    parts = [part.decode(errors="replace") for part in raw if part]
    text = " ".join(Path(parts[0]).name if i == 0 else part for i, part in enumerate(parts))
    return text[:90]


def is_agent(pid: int) -> bool:
    """An agent run's child (or what it started: jailed commands, validators)."""
    name = command_name(pid)
    return "runs.agent_child" in name or "bwrap" in name or "/tools/" in name


def measure(procs: dict[str, subprocess.Popen]) -> dict[str, dict]:
    """Per started process: its own PSS, its tree's PSS without agent children, the agents' PSS."""
    result = {}
    for name, proc in procs.items():
        tree = process_tree(proc.pid)
        agents = [pid for pid in tree if pid != proc.pid and (is_agent(pid) or any(
            is_agent(parent) for parent in _ancestors(pid, proc.pid)))]
        own_tree = [pid for pid in tree if pid not in agents]
        result[name] = {
            "self": pss_kib(proc.pid),
            "tree": sum(pss_kib(pid) for pid in own_tree),
            "members": [(pid, pss_kib(pid), command_name(pid)) for pid in own_tree],
            "agents": sum(pss_kib(pid) for pid in agents),
            "agent_count": sum(1 for pid in agents if "runs.agent_child" in command_name(pid)),
        }
    return result


def _ancestors(pid: int, stop: int) -> list[int]:
    parents = _parents()
    chain = []
    while pid in parents and parents[pid] not in (stop, 0, 1):
        pid = parents[pid]
        chain.append(pid)
    return chain


def mb(kib: float) -> str:
    return f"{kib / 1024:6.1f} MB"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settle", type=float, default=10.0, help="seconds idle before the idle figures")
    parser.add_argument("--runs", type=int, default=16, help="runs in the batch (0: idle figures only)")
    parser.add_argument("--delay", type=float, default=1.0, help="seconds the stand-in waits before every answer")
    args = parser.parse_args()

    app = configure(Path(tempfile.mkdtemp(prefix="loopsite-bench-memory-")),
                    extra_env={"LOOPSITE_STANDIN_DELAY": str(args.delay)})
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    call_command("load_sample", stdout=open(os.devnull, "w"))
    with started(app) as procs:
        print_started(app)
        time.sleep(args.settle)
        idle = measure(procs)
        print(f"\nIdle ({args.settle:g} s after start), PSS:")
        report(idle)

        if args.runs:
            from runs.models import Dataroom, Harness, Question, Run
            from runs.work import start_batch

            bank = list(Question.objects.order_by("bank_index"))
            batch = start_batch(harness=Harness.objects.get(version="v001"),
                                dataroom=Dataroom.objects.get(name__icontains="FictionalCorp"),
                                questions=[bank[i % len(bank)] for i in range(args.runs)], user=None, cycle=False)
            peak: dict[str, dict] = {}
            began = time.monotonic()
            while Run.objects.filter(batch=batch, status__in=[Run.Status.QUEUED, Run.Status.RUNNING]).exists():
                for name, figures in measure(procs).items():
                    best = peak.setdefault(name, {"tree": 0, "agents": 0, "agent_count": 0, "self": 0, "members": []})
                    for key in ("self", "agents", "agent_count"):
                        best[key] = max(best[key], figures[key])
                    if figures["tree"] > best["tree"]:
                        best["tree"], best["members"] = figures["tree"], figures["members"]
                if time.monotonic() - began > 1800:
                    raise SystemExit("Gave up waiting for the batch.")
                time.sleep(0.5)
            done = Run.objects.filter(batch=batch)
            print(f"\nDuring a batch of {args.runs} runs ({time.monotonic() - began:.0f} s, "
                  f"{done.filter(status=Run.Status.SUCCEEDED).count()} succeeded), peak PSS:")
            report(peak)
    return 0


def report(figures: dict[str, dict]) -> None:
    for name, item in figures.items():
        agents = f"  + agent children {mb(item['agents'])} ({item['agent_count']} at once)" if item["agents"] else ""
        print(f"  {name:<8} {mb(item['tree'])} (main process {mb(item['self'])}){agents}")
        for pid, kib, command in item["members"]:
            print(f"      {pid:>7} {mb(kib)}  {command}")
    app = sum(figures[name]["tree"] for name in ("web", "worker", "runs") if name in figures)
    print(f"  web + workers (web, worker with beat, runs): {mb(app)}"
          + (f"; with the stand-in {mb(app + figures['standin']['tree'])}" if "standin" in figures else ""))


if __name__ == "__main__":
    sys.exit(main())
