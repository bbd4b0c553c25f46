#!/usr/bin/env python
"""Do the reviewer and approver pages stay fast while a whole team works a cycle at once? (Figures, not a test.)

It starts every process as `make run` does (loopsite.management.commands.run_all.process_commands:
the stand-in model, gunicorn with WEB_WORKERS x WEB_THREADS, the default worker with beat, the run
worker), with this bench's own queues on the Redis at CELERY_BROKER_URL, a throwaway SQLite database
(or --database-url) and free ports. Then:

1. a cycle: --real-runs runs of v001 on the sample dataroom (the sample's default questions) run by
   the workers through the stand-in; they are copied (rows, spans, artifacts) until the cycle holds
   --runs runs, each assigned to --per-run reviewers;
2. --reviewers simulated reviewers and --approvers approvers, one thread and one HTTP session each,
   work at once, as a browser would talk to the server:
   - a reviewer logs in, opens the inbox, then "next run to review" until none is left; on each
     run: the review page, one span of the trace (the htmx fragment), --autosaves autosaves every
     --every seconds (+-30 %) that add realistic fields (summary, theme, verdict, observations and a
     prohibited claim citing a span and an artifact line), the prohibited-claim check, submit;
   - an approver logs in, then keeps opening the inbox and, for each run awaiting approval that is
     theirs (runs are split between approvers by id, so two never merge the same run), the approval
     page, one autosave of the merged form and Approve; until the reviewers are done and nothing
     waits.

It prints, per page kind, the count and p50/p95/max of the SERVER time (the `app` entry of the
Server-Timing header that loopsite.middleware.ServerTiming sets: time spent in Django, without the
wait for a free gunicorn thread) and, labelled as such, of the CLIENT wall time (what a browser
would wait, including that queueing), the SQL queries per request (from the same header), and the
errors (HTTP >= 400, a save the server refused, a request that failed). Goal (issue 10): p95
server time < 200 ms for every reviewer page, 0 errors.

    .venv/bin/python bench/reviewers.py [--reviewers 20] [--approvers 2] [--runs 20] [--autosaves 4] [--every 3]
"""

from __future__ import annotations

import argparse
import os
import random
import re
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import _app  # noqa: E402

REVIEWER_PAGES = ("login", "inbox", "next review", "review page", "span detail", "autosave", "claim check",
                  "submit")
APPROVER_PAGES = ("approval page", "approval autosave", "approve")
# Logging in hashes the password (Django's PBKDF2, deliberately slow): not a page a reviewer works in.
NOT_IN_GOAL = {"login"}
THEMES = ["customer_concentration", "revenue_quality", "security_readiness", "unsupported_metrics"]
SERVER_TIMING = re.compile(r"app;dur=([\d.]+)")
QUERIES = re.compile(r'desc="(\d+) queries"')


class Recorder:
    """Every request's page kind, server time, client wall time, query count and outcome."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.samples: dict[str, list[tuple[float | None, float, int | None]]] = defaultdict(list)
        self.errors: list[str] = []

    def add(self, kind: str, response, wall_ms: float, problem: str = "") -> None:
        timing = response.headers.get("Server-Timing", "") if response is not None else ""
        server = SERVER_TIMING.search(timing)
        queries = QUERIES.search(timing)
        with self.lock:
            self.samples[kind].append((float(server.group(1)) if server else None, wall_ms,
                                       int(queries.group(1)) if queries else None))
            if problem:
                self.errors.append(f"{kind}: {problem}")

    def failed(self, kind: str, problem: str) -> None:
        with self.lock:
            self.errors.append(f"{kind}: {problem}")


class Browser:
    """One person's session: cookies, CSRF token, htmx headers; every request timed and recorded."""

    def __init__(self, base: str, recorder: Recorder, name: str) -> None:
        import httpx

        # No keep-alive: gunicorn closes idle connections after 2 s, and a request sent on a connection it is
        # just closing fails (browsers retry those transparently; httpx does not).
        self.http = httpx.Client(base_url=base, follow_redirects=False, timeout=60,
                                 limits=httpx.Limits(max_keepalive_connections=0))
        self.recorder, self.name = recorder, name

    def request(self, kind: str, method: str, url: str, *, htmx: str | None = None, data=None, params=None,
                expect: tuple[int, ...] = (200,), require: str = ""):
        headers = {"X-CSRFToken": self.http.cookies.get("csrftoken", "")}
        if htmx is not None:
            headers.update({"HX-Request": "true", "HX-Target": htmx})
        started = time.perf_counter()
        try:
            response = self.http.request(method, url, data=data, params=params, headers=headers)
        except Exception as exc:  # noqa: BLE001 - a refused or timed-out request is an error to count
            self.recorder.failed(kind, f"{self.name} {method} {url}: {type(exc).__name__}: {exc}")
            return None
        wall_ms = (time.perf_counter() - started) * 1000
        problem = ""
        if response.status_code not in expect:
            problem = f"{self.name} {method} {url}: HTTP {response.status_code}"
        elif require and require not in response.text:
            note = re.search(r'<p class="fb-note[^"]*"[^>]*>(.*?)</p>', response.text, re.S)
            errors = re.findall(r'<ul class="errorlist[^"]*"[^>]*>\s*<li>(.*?)</li>', response.text, re.S)
            problem = (f"{self.name} {method} {url}: no {require!r} in the answer; it says "
                       f"{note.group(1).strip() if note else response.text[:120]!r} {errors[:3]}")
        self.recorder.add(kind, response, wall_ms, problem)
        return None if problem else response

    def login(self, username: str, password: str) -> bool:
        page = self.http.get("/accounts/login/")
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
        response = self.request("login", "POST", "/accounts/login/", expect=(302,), data={
            "username": username, "password": password, "csrfmiddlewaretoken": token.group(1) if token else ""})
        return response is not None


def feedback_fields(*, version: int, step: int, rng: random.Random, span_id: str, artifact: str,
                    verdict: str) -> dict:
    """The feedback form as it stands after `step` edits: it grows as a reviewer writes."""
    summary = ("The answer reports legal-entity concentration only; rolled up to parent accounts the largest "
               "customer is much larger. ")[: 40 + 25 * step]
    rows = [("required_observation", "Mention the parent-account concentration from account_hierarchy.csv",
             span_id, "", "")]
    if step >= 1:
        rows.append(("required_observation", "Quote the ARR share of the largest parent account", "", artifact,
                     "1" if artifact else ""))
    if step >= 2:
        rows.append(("prohibited_claim", "Do not stop at legal-entity concentration", "", "", ""))
    return {
        "version": str(version), "summary": summary, "theme": rng.choice(THEMES) if step == 0 else THEMES[0],
        "verdict": verdict,
        "item_kind": [r[0] for r in rows], "item_text": [r[1] for r in rows], "item_span": [r[2] for r in rows],
        "item_artifact": [r[3] for r in rows], "item_line": [r[4] for r in rows],
    }


def version_in(html: str, default: int) -> int:
    match = re.search(r'id="fb-version" value="(\d+)"', html)
    return int(match.group(1)) if match else default


def reviewer(base: str, recorder: Recorder, username: str, *, autosaves: int, every: float, seed: int) -> None:
    rng = random.Random(seed)
    me = Browser(base, recorder, username)
    time.sleep(rng.uniform(0, every))  # people do not all start in the same second
    if not me.login(username, f"pw-{username}"):
        return
    me.request("inbox", "GET", "/inbox/")
    after: dict = {}
    for _ in range(50):
        step = me.request("next review", "GET", "/inbox/next/review/", params=after, expect=(302,))
        if step is None:
            return
        page_url = step.headers["Location"]
        match = re.search(r"/cycles/(\d+)/runs/(\d+)/feedback/", page_url)
        if not match:
            return  # back to the inbox: nothing left
        cycle_pk, run_pk = match.groups()
        page = me.request("review page", "GET", page_url)
        if page is None:
            return
        spans = re.findall(rf"/runs/{run_pk}/spans/([0-9a-zA-Z_-]+)/", page.text)
        artifacts = re.findall(r'data-artifact="([^"]+\.(?:md|json|csv|txt))"', page.text) or ["final_memo.md"]
        span_id = spans[len(spans) // 2] if spans else ""
        if span_id:
            me.request("span detail", "GET", f"/runs/{run_pk}/spans/{span_id}/", htmx="span-detail")
        version = version_in(page.text, 0)
        verdict = rng.choice(["fail", "fail", "mixed"])
        for n in range(autosaves):
            time.sleep(every * rng.uniform(0.7, 1.3))
            saved = me.request("autosave", "POST", page_url, htmx="save-status", require="Saved",
                               data=feedback_fields(version=version, step=n, rng=rng, span_id=span_id,
                                                    artifact=artifacts[0], verdict=verdict))
            if saved is not None:
                version = version_in(saved.text, version)
        me.request("claim check", "GET", f"/cycles/{cycle_pk}/runs/{run_pk}/claim-check/", htmx="claim-check",
                   params={"item_text": "Do not stop at legal-entity concentration"})
        data = feedback_fields(version=version, step=max(2, autosaves), rng=rng, span_id=span_id,
                               artifact=artifacts[0], verdict=verdict)
        me.request("submit", "POST", page_url, htmx="feedback-panel", data={**data, "op": "submit"},
                   require="Submitted for approval.")
        after = {"cycle": cycle_pk, "run": run_pk}


def approver(base: str, recorder: Recorder, username: str, *, index: int, count: int, reviewers_done: threading.Event,
             every: float, seed: int) -> None:
    rng = random.Random(seed)
    me = Browser(base, recorder, username)
    if not me.login(username, f"pw-{username}"):
        return
    approved: set[str] = set()
    while True:
        finished = reviewers_done.is_set()  # read before the inbox: then an empty inbox really means done
        inbox = me.request("inbox", "GET", "/inbox/")
        if inbox is None:
            return
        waiting = [(c, r) for c, r in dict.fromkeys(re.findall(r"/cycles/(\d+)/runs/(\d+)/approve/", inbox.text))
                   if int(r) % count == index and f"{c}/{r}" not in approved]
        if not waiting:
            if finished:
                return
            time.sleep(every)
            continue
        for cycle_pk, run_pk in waiting:
            url = f"/cycles/{cycle_pk}/runs/{run_pk}/approve/"
            page = me.request("approval page", "GET", url)
            if page is None:
                continue
            version = version_in(page.text, 0)
            spans = re.findall(rf"/runs/{run_pk}/spans/([0-9a-zA-Z_-]+)/", page.text)
            artifacts = re.findall(r'data-artifact="([^"]+\.(?:md|json|csv|txt))"', page.text) or [""]
            data = feedback_fields(version=version, step=2, rng=rng, span_id=spans[0] if spans else "",
                                   artifact=artifacts[0], verdict="fail")
            time.sleep(every * rng.uniform(0.3, 0.7))
            saved = me.request("approval autosave", "POST", url, htmx="save-status", data=data, require="Saved")
            if saved is not None:
                data["version"] = str(version_in(saved.text, version))
            done = me.request("approve", "POST", url, htmx="feedback-panel", data={**data, "op": "approve"},
                              require="approved.")
            if done is not None:
                approved.add(f"{cycle_pk}/{run_pk}")


# --- setting up -----------------------------------------------------------------------------------------


def make_users(reviewers: int, approvers: int) -> tuple[list[str], list[str]]:
    from django.contrib.auth.models import Group, User

    names = {"reviewer": [f"reviewer{n:02d}" for n in range(1, reviewers + 1)],
             "approver": [f"approver{n:02d}" for n in range(1, approvers + 1)],
             "engineer": ["engineer"]}
    for role, usernames in names.items():
        group = Group.objects.get(name=role)
        for username in usernames:
            User.objects.create_user(username=username, password=f"pw-{username}").groups.add(group)
    return names["reviewer"], names["approver"]


def make_cycle(*, real_runs: int, runs: int, per_run: int, reviewers: list[str], timeout: float):
    """A cycle of `runs` runs: `real_runs` run by the workers, the rest copies of them; assigned."""
    from django.contrib.auth.models import User
    from django.db import transaction

    from reviews.models import Cycle
    from runs.models import Artifact, Dataroom, Harness, Question, Run, Span
    from runs.work import start_batch

    engineer = User.objects.get(username="engineer")
    questions = list(Question.objects.filter(is_default=True).order_by("bank_index"))
    batch = start_batch(harness=Harness.objects.get(version="v001"),
                        dataroom=Dataroom.objects.get(name__icontains="FictionalCorp"),
                        questions=[questions[i % len(questions)] for i in range(real_runs)], user=engineer)
    started = time.monotonic()
    _app.wait_until(f"{real_runs} runs", lambda: not Run.objects.filter(
        batch=batch, status__in=[Run.Status.QUEUED, Run.Status.RUNNING]).exists(), timeout)
    originals = list(Run.objects.filter(batch=batch, status=Run.Status.SUCCEEDED).order_by("pk"))
    if not originals:
        raise SystemExit("No run succeeded: " + "; ".join(Run.objects.filter(batch=batch).values_list("last_error", flat=True)))
    print(f"{len(originals)} of {real_runs} real runs succeeded in {time.monotonic() - started:.0f} s; "
          f"copying them to {runs} runs.")
    cycle = Cycle.objects.filter(batch=batch).first()
    with transaction.atomic():
        for index in range(len(originals), runs):
            source = originals[index % len(originals)]
            copy = Run.objects.get(pk=source.pk)
            copy.pk = copy.id = None
            copy._state.adding = True
            copy.trace_id, copy.label = Run.new_trace_id(), f"trace-{index + 1:02d}"
            copy.save()
            spans = []
            for span in source.spans.all():
                span.pk = span.id = None
                span._state.adding = True
                span.run = copy
                span.data = {**span.data, "trace_id": copy.trace_id}
                spans.append(span)
            Span.objects.bulk_create(spans)
            Artifact.objects.bulk_create(Artifact(run=copy, name=a.name, content=a.content, size=a.size)
                                         for a in source.artifacts.all())
            cycle.runs.add(copy)
    users = {u.username: u for u in User.objects.filter(username__in=reviewers)}
    for index, run in enumerate(cycle.runs.order_by("pk")):
        for k in range(per_run):
            cycle.assign(run=run, reviewer=users[reviewers[(index * per_run + k) % len(reviewers)]], by=engineer)
    return cycle


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))]


def report(recorder: Recorder, *, goal_ms: float) -> bool:
    print(f"\n{'page kind':<18} {'n':>5}  {'server p50':>10} {'p95':>8} {'max':>8}  "
          f"{'client wall p50':>15} {'p95':>8}  {'queries p50/max':>15}")
    met = True
    for kind in REVIEWER_PAGES + APPROVER_PAGES:
        samples = recorder.samples.get(kind)
        if not samples:
            continue
        server = [s for s, _, _ in samples if s is not None]
        wall = [w for _, w, _ in samples]
        queries = [q for _, _, q in samples if q is not None]
        p95 = percentile(server, 0.95) if server else float("nan")
        miss = kind in REVIEWER_PAGES and kind not in NOT_IN_GOAL and p95 >= goal_ms
        met = met and not miss
        print(f"{kind:<18} {len(samples):>5}  {percentile(server, 0.5):>8.1f}ms {p95:>6.1f}ms {max(server):>6.1f}ms  "
              f"{percentile(wall, 0.5):>13.1f}ms {percentile(wall, 0.95):>6.1f}ms  "
              f"{statistics.median(queries) if queries else 0:>9.0f}/{max(queries) if queries else 0:<5}"
              f"{'  <- misses the goal' if miss else ''}{'  (password hashing, outside the goal)' if kind in NOT_IN_GOAL else ''}")
    print(f"\nErrors: {len(recorder.errors)}")
    for error in recorder.errors[:20]:
        print(f"  {error}")
    return met and not recorder.errors


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reviewers", type=int, default=20)
    parser.add_argument("--approvers", type=int, default=2)
    parser.add_argument("--runs", type=int, default=20, help="runs in the cycle")
    parser.add_argument("--real-runs", type=int, default=5, help="of those, run by the workers (the rest are copies)")
    parser.add_argument("--per-run", type=int, default=2, help="reviewers assigned to each run")
    parser.add_argument("--autosaves", type=int, default=4, help="autosaves per run and reviewer")
    parser.add_argument("--every", type=float, default=3.0, help="seconds between autosaves (+-30 %%)")
    parser.add_argument("--goal-ms", type=float, default=200.0)
    parser.add_argument("--database-url", default="", help="default: a throwaway SQLite file, as `make run` uses")
    args = parser.parse_args()

    app = _app.configure(Path(tempfile.mkdtemp(prefix="loopsite-bench-reviewers-")), database_url=args.database_url)
    from django.conf import settings
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    call_command("load_sample", stdout=open(os.devnull, "w"))
    reviewers, approvers = make_users(args.reviewers, args.approvers)
    with _app.started(app, ready_timeout=120):
        _app.print_started(app)
        print(f"Database: {settings.DATABASES['default']['ENGINE'].rsplit('.', 1)[-1]}; "
              f"web: {settings.WEB_WORKERS} worker(s) x {settings.WEB_THREADS} threads; "
              f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} before the runs.")

        cycle = make_cycle(real_runs=args.real_runs, runs=args.runs, per_run=args.per_run, reviewers=reviewers,
                           timeout=900)
        recorder = Recorder()
        base = app.base_url
        done = threading.Event()
        reviewer_threads = [threading.Thread(target=reviewer, args=(base, recorder, name), daemon=True, kwargs={
            "autosaves": args.autosaves, "every": args.every, "seed": n}) for n, name in enumerate(reviewers)]
        approver_threads = [threading.Thread(target=approver, args=(base, recorder, name), daemon=True, kwargs={
            "index": n, "count": len(approvers), "reviewers_done": done, "every": args.every, "seed": 1000 + n})
            for n, name in enumerate(approvers)]
        print(f"Cycle {cycle.pk}: {cycle.runs.count()} runs, {args.per_run} reviewers each; "
              f"{len(reviewers)} reviewers and {len(approvers)} approvers start now.")
        started = time.monotonic()
        load = []
        for thread in reviewer_threads + approver_threads:
            thread.start()
        while any(t.is_alive() for t in reviewer_threads):
            load.append(os.getloadavg()[0])
            time.sleep(1)
        done.set()
        for thread in approver_threads:
            thread.join(timeout=300)
        elapsed = time.monotonic() - started
        from reviews.models import Feedback

        approved = Feedback.objects.filter(cycle=cycle, is_merged=True, status=Feedback.Status.APPROVED).count()
        submitted = Feedback.objects.filter(cycle=cycle, is_merged=False, submitted_at__isnull=False).count()
        print(f"Done in {elapsed:.0f} s: {submitted} reviews submitted, {approved} of {cycle.runs.count()} runs "
              f"approved; load average during the work {statistics.mean(load) if load else 0:.1f} "
              f"(max {max(load) if load else 0:.1f}) on {os.cpu_count()} CPUs.")
        met = report(recorder, goal_ms=args.goal_ms)
        print(f"\nGoal (p95 server time < {args.goal_ms:.0f} ms for every reviewer page, 0 errors): "
              f"{'met' if met else 'NOT met'}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
