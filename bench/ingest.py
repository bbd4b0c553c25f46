#!/usr/bin/env python
"""How fast does /v1/traces take traces in, and how fast is an imported run's page? (Figures, not a test.)

It starts the processes `make run` starts (the same command lines, from
loopsite.management.commands.run_all.process_commands) on free ports and a throwaway SQLite database
(or the PostgreSQL database at DATABASE_URL), creates an external agent with a token, and makes
--traces traces of 41 spans each with the real OpenTelemetry SDK (one agent span, 20 LLM spans with
about 4 KB of OpenInference attributes, 20 tool spans with about 2 KB). The spans are made first (in
memory), then sent with the SDK's OTLP/HTTP protobuf exporter in batches of --batch spans, from
--senders threads at once. It prints:

1. end-to-end spans per second: first byte sent until every span is stored and queryable;
2. peak RSS of the web process tree and of the workers, sampled every 0.1 s while sending;
3. p50/p95 time of GET on one imported 41-span run page (--page-requests requests, measured by the
   client over a kept-alive local connection, so it includes a little more than the server's time).

Goals (issue 11): >= 10,000 spans/s; run page < 40 ms p50.

    .venv/bin/python bench/ingest.py [--traces 100] [--batch 512] [--senders 1]
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/bench .venv/bin/python bench/ingest.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._app import configure, started  # noqa: E402
from bench.memory import process_tree  # noqa: E402

LLM_SPANS = TOOL_SPANS = 20


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def tree_rss(pid: int) -> int:
    return sum(rss_kib(member) for member in process_tree(pid))


def make_spans(traces: int):
    """--traces traces of 1 agent + 20 LLM + 20 tool spans, made with the SDK, held in memory."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "bench-agent", "service.version": "1.0.0"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("bench")
    system = "You are a support agent. Answer from the documents only. " * 25  # ~1.4 KB
    for number in range(traces):
        question = f"Question {number}: what does the contract say about renewal terms and notice periods? " * 4
        with tracer.start_as_current_span("agent", attributes={
                "openinference.span.kind": "AGENT", "input.value": question, "agent.name": "bench-agent"}) as root:
            for step in range(LLM_SPANS):
                with tracer.start_as_current_span("ChatCompletion", attributes={
                        "openinference.span.kind": "LLM", "llm.model_name": "gpt-4o-mini",
                        "llm.input_messages.0.message.role": "system", "llm.input_messages.0.message.content": system,
                        "llm.input_messages.1.message.role": "user", "llm.input_messages.1.message.content": question,
                        "llm.output_messages.0.message.role": "assistant",
                        "llm.output_messages.0.message.content": f"Step {step}: reading the next clause. " * 30,
                        "llm.output_messages.0.message.tool_calls.0.tool_call.function.name": "read_clause",
                        "llm.output_messages.0.message.tool_calls.0.tool_call.function.arguments": '{"clause": %d}' % step,
                        "llm.token_count.prompt": 900, "llm.token_count.completion": 120, "llm.token_count.total": 1020,
                        "llm.invocation_parameters": '{"temperature": 0.2}'}):
                    pass
                with tracer.start_as_current_span("read_clause", attributes={
                        "openinference.span.kind": "TOOL", "tool.name": "read_clause",
                        "input.value": '{"clause": %d, "document": "contract.pdf"}' % step + " " * 600,
                        "output.value": f"Clause {step}: the agreement renews for twelve months unless notice is given. " * 16}):
                    pass
            root.set_attribute("output.value", "Renewal is automatic for twelve months; notice is 90 days.")
    provider.shutdown()
    return list(memory.get_finished_spans())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--traces", type=int, default=100)
    parser.add_argument("--batch", type=int, default=512, help="spans per export request (the SDK's default 512)")
    parser.add_argument("--senders", type=int, default=1, help="exporters sending at once")
    parser.add_argument("--page-requests", type=int, default=50)
    args = parser.parse_args()

    app = configure(Path(tempfile.mkdtemp(prefix="loopsite-bench-ingest-")),
                    database_url=os.environ.get("DATABASE_URL", ""))
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
    from django.contrib.auth.models import Group, User
    from django.contrib.sessions.backends.db import SessionStore
    from django.core.management import call_command
    from django.db import connection

    from runs.models import Agent, Run, Span

    call_command("migrate", verbosity=0)
    engineer = User.objects.create_user(f"bench-{uuid.uuid4().hex[:8]}")
    engineer.groups.add(Group.objects.get_or_create(name="engineer")[0])
    agent, token = Agent.create_external(by=engineer, name=f"Bench agent {uuid.uuid4().hex[:8]}")
    session = SessionStore()
    session[SESSION_KEY], session[BACKEND_SESSION_KEY] = str(engineer.pk), "django.contrib.auth.backends.ModelBackend"
    session[HASH_SESSION_KEY] = engineer.get_session_auth_hash()
    session.create()

    print(f"Database: {connection.vendor}; {args.traces} traces x {1 + LLM_SPANS + TOOL_SPANS} spans, "
          f"batches of {args.batch}, {args.senders} sender(s)")
    began = time.monotonic()
    spans = make_spans(args.traces)
    print(f"Made {len(spans)} spans with the SDK in {time.monotonic() - began:.1f} s (not counted)")

    try:
        with started(app) as procs:
            print("Started as `make run` does: " + ", ".join(procs))
            return measure_ingest(app, procs, args=args, spans=spans, agent=agent, token=token, session=session)
    finally:
        if connection.vendor != "sqlite":
            Span.objects.filter(run__agent=agent).delete()
            Run.objects.filter(agent=agent).delete()


def measure_ingest(app, procs, *, args, spans, agent, token, session) -> int:
    from django.conf import settings

    from runs.models import Run, Span

    idle = {name: tree_rss(proc.pid) for name, proc in procs.items()}

    peaks = dict(idle)
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.is_set():
            for name, proc in procs.items():
                peaks[name] = max(peaks[name], tree_rss(proc.pid))
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()

    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import SpanExportResult

    import requests

    url = f"{app.base_url}/v1/traces"
    batches = [spans[i:i + args.batch] for i in range(0, len(spans), args.batch)]
    first_sent: list[float] = []

    class Timed(requests.Session):
        """The exporter's own HTTP session, noting when the first request goes out (after the SDK encoded
        its batch): the clock starts at the first byte sent, as the goal says."""

        def request(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN201
            if not first_sent:
                first_sent.append(time.monotonic())
            return super().request(*args, **kwargs)

    exporters = [OTLPSpanExporter(endpoint=url, headers={"Authorization": f"Bearer {token}"}, timeout=120,
                                  session=Timed()) for _ in range(args.senders)]
    failures = []

    def send(index: int) -> None:
        result = exporters[index % len(exporters)].export(batches[index])
        if result != SpanExportResult.SUCCESS:
            failures.append(index)

    began = time.monotonic()
    with ThreadPoolExecutor(max_workers=args.senders) as pool:
        list(pool.map(send, range(len(batches))))
    while Span.objects.filter(run__agent=agent).count() < len(spans):
        if time.monotonic() - began > 600 or failures:
            break
        time.sleep(0.01)
    elapsed = time.monotonic() - (first_sent[0] if first_sent else began)
    sampling.set()
    sampler.join()
    stored = Span.objects.filter(run__agent=agent).count()
    runs = Run.objects.filter(agent=agent).count()
    if failures or stored != len(spans):
        print(f"FAILED: {len(failures)} export(s) failed; {stored} of {len(spans)} spans stored. "
              f"Web log: {app.logs['web'].read_text(errors='replace')[-2000:]}")
        return 1
    print(f"\nIngest: {stored} spans in {runs} runs in {elapsed:.2f} s = {stored / elapsed:,.0f} spans/s end to end")
    print("Peak RSS while sending (idle before):")
    for name in procs:
        print(f"  {name:<8} {peaks[name] / 1024:7.1f} MB  (idle {idle[name] / 1024:.1f} MB)")

    run = Run.objects.filter(agent=agent).order_by("pk").first()
    assert run.spans.count() == 1 + LLM_SPANS + TOOL_SPANS
    http = requests.Session()
    http.cookies.set(settings.SESSION_COOKIE_NAME, session.session_key)
    page = f"{app.base_url}{run.get_absolute_url()}"
    first = http.get(page, timeout=30)
    assert first.status_code == 200 and "read_clause" in first.text, first.status_code
    times = []
    for _ in range(args.page_requests):
        begin = time.perf_counter()
        response = http.get(page, timeout=30)
        times.append((time.perf_counter() - begin) * 1000)
        assert response.status_code == 200
    times.sort()
    p95 = times[min(len(times) - 1, int(round(0.95 * len(times))) - 1)]
    print(f"Run page ({run.spans.count()} spans, {len(first.content) / 1024:.0f} KB): "
          f"p50 {statistics.median(times):.1f} ms, p95 {p95:.1f} ms over {len(times)} requests")
    return 0


if __name__ == "__main__":
    sys.exit(main())
