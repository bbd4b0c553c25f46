#!/usr/bin/env python
"""How fast is the run page with a realistic trace?

Builds a throwaway SQLite database in a temporary directory, creates a run whose trace
has N spans (default 500: an agent span, turns, LLM calls with sizeable message lists,
shell tool calls with command output, some nested function spans and a few errors),
then prints:

- the time to store the trace (parse the JSONL lines and bulk-insert the Span rows,
  as the runner does after a run),
- p50/p95 server time of the run detail page, requested with the Django test client
  while logged in,
- p50/p95 of the span-detail fragment (an LLM span and a tool span, as htmx loads them),
- the number of SQL queries per page.

It prints figures and asserts nothing about speed.

    .venv/bin/python bench/run_page.py [--spans 500] [--requests 30]
"""

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SYSTEM_PROMPT = (
    "You are a diligence analyst reviewing a synthetic company dataroom.\n\n"
    "Evidence scope:\n- Use only files under `data/`.\n- Do not use outside knowledge.\n"
    + "Citation rules: every material claim must cite one or more source filenames.\n" * 40
)
FILES = [
    "financials/p_and_l.csv", "financials/arr_bridge.csv", "financials/monthly_kpis.csv",
    "customers/top_customers.csv", "customers/account_hierarchy.csv", "legal/open_issues.md",
    "board_deck.md", "security/security_overview.md", "sales/pipeline.csv", "notes/qa_log.md",
]


def _ts(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond:06d}000Z"


def _csv_output(rng: random.Random, rows: int) -> str:
    lines = ["month,metric,value,source,notes"]
    for i in range(rows):
        lines.append(f"2025-{1 + i % 12:02d},metric_{i},{rng.randint(1, 10**6)},finance export,"
                     f"\"row {i} of the controlled finance export, reconciled to the board packet\"")
    return "\n".join(lines) + "\n"


def make_trace(trace_id: str, spans: int, seed: int = 7) -> list[dict]:
    """HALO JSONL lines shaped like the exporter's: AGENT → turn SPAN → LLM + TOOL (+ nested function)."""
    rng = random.Random(seed)
    t0 = datetime(2025, 3, 1, 12, 0, tzinfo=timezone.utc)
    lines: list[dict] = []
    clock = [t0]

    def line(span_id, parent, name, kind, seconds, attributes, error=""):
        start = clock[0]
        end = start + timedelta(seconds=seconds)
        clock[0] = start + timedelta(seconds=seconds / 3)
        lines.append({
            "trace_id": trace_id, "span_id": span_id, "parent_span_id": parent, "trace_state": "", "name": name,
            "kind": "SPAN_KIND_CLIENT" if kind == "LLM" else "SPAN_KIND_INTERNAL",
            "start_time": _ts(start), "end_time": _ts(end),
            "status": {"code": "STATUS_CODE_ERROR" if error else "STATUS_CODE_OK", "message": error},
            "resource": {"attributes": {"service.name": "financial-diligence-analyst", "service.version": "v001"}},
            "scope": {"name": "openai-agents-sdk", "version": "0.14.7"},
            "attributes": {"inference.observation_kind": kind, "inference.export.schema_version": 1,
                           "inference.project_id": "loopsite", **attributes},
        })

    root = "a" * 16
    line(root, "", "agent.Financial diligence analyst", "AGENT", 300,
         {"openinference.span.kind": "AGENT", "agent.name": "Financial diligence analyst",
          "agent.tools": json.dumps(["shell"]), "inference.agent_name": "Financial diligence analyst"})
    conversation = [{"role": "system", "content": SYSTEM_PROMPT},
                    {"role": "user", "content": "What do runway and burn tell us about near-term financing risk?"}]
    turn = 0
    while len(lines) < spans:
        turn += 1
        turn_id = f"{turn:08x}turn0000"
        line(turn_id, root, "turn", "SPAN", 4, {"openinference.span.kind": "CHAIN", "sdk.span.type": "turn"})
        if len(lines) >= spans:
            break
        path = rng.choice(FILES)
        call_id = f"call_{turn:05d}"
        prompt_tokens = 2500 + 180 * turn
        output = [{"type": "function_call", "name": "exec_command", "call_id": call_id,
                   "arguments": json.dumps({"cmd": f"cat data/{path}"})}]
        line(f"{turn:08x}llm00000", turn_id, "response.gpt-5.5", "LLM", 2.5, {
            "openinference.span.kind": "LLM", "llm.provider": "openai", "llm.model_name": "gpt-5.5",
            # The exporter caps each attribute at 20,000 characters; keep the last messages.
            "llm.input_messages": json.dumps(conversation[:2] + conversation[-8:])[:20_000],
            "llm.output_messages": json.dumps(output),
            "llm.token_count.prompt": prompt_tokens, "llm.token_count.completion": 180,
            "llm.token_count.total": prompt_tokens + 180,
            "inference.llm.input_tokens": prompt_tokens, "inference.llm.output_tokens": 180,
        })
        if len(lines) >= spans:
            break
        result = _csv_output(rng, rng.randint(15, 40))
        failed = turn % 37 == 0
        line(f"{turn:08x}tool0000", turn_id, "function.exec_command", "TOOL", 0.4, {
            "openinference.span.kind": "TOOL", "tool.name": "exec_command",
            "input.value": json.dumps({"cmd": f"cat data/{path}"}),
            "output.value": f"cat: data/{path}: No such file or directory" if failed else result,
        }, error="exit status 1" if failed else "")
        if turn % 5 == 0 and len(lines) < spans:
            line(f"{turn:08x}fn000000", f"{turn:08x}tool0000", "function.write_file", "TOOL", 0.1, {
                "openinference.span.kind": "TOOL", "tool.name": "write_file",
                "input.value": json.dumps({"path": "outputs/summary_answer.md", "content": "# Summary\n" + "claim. " * 200}),
                "output.value": "ok",
            })
        conversation.append(output[0])
        conversation.append({"type": "function_call_output", "call_id": call_id, "output": result})
    return lines[:spans]


def store_trace(run, jsonl: str, workdir: Path) -> int:
    """Store a JSONL trace exactly as the runner does after a run: parse the file, bulk-insert."""
    from runs.models import Span
    from runs.runner import SPAN_BATCH_SIZE, load_spans

    path = workdir / f"trace-{run.pk}.jsonl"
    path.write_text(jsonl, encoding="utf-8")
    spans = load_spans(run, path)
    Span.objects.bulk_create(spans, batch_size=SPAN_BATCH_SIZE)
    return len(spans)


def timed(fn, repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return times


def summary(label: str, times: list[float]) -> str:
    ordered = sorted(times)
    p95 = ordered[max(0, round(0.95 * len(ordered)) - 1)]
    return f"{label:<34} p50 {statistics.median(ordered):7.1f} ms   p95 {p95:7.1f} ms   (n={len(ordered)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spans", type=int, default=500)
    parser.add_argument("--requests", type=int, default=30)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="loopsite-bench-"))
    os.environ["DATABASE_URL"] = f"sqlite:///{tmp / 'bench.sqlite3'}"
    os.environ["MEDIA_ROOT"] = str(tmp / "media")
    os.environ["DJANGO_SETTINGS_MODULE"] = "loopsite.settings"
    try:
        import django

        django.setup()
        from django.core.management import call_command
        from django.db import connection
        from django.test import Client
        from django.test.utils import CaptureQueriesContext, setup_test_environment
        from django.urls import reverse

        setup_test_environment()  # the test client's response.context, ALLOWED_HOSTS = testserver
        call_command("migrate", verbosity=0)

        from django.contrib.auth.models import Group, User

        from runs.models import Artifact, Dataroom, Harness, Question, Run

        user = User.objects.create_user("bench", password="bench")
        user.groups.add(Group.objects.get(name="reviewer"))
        harness = Harness.objects.create(version="v001", status="promoted", system_prompt=SYSTEM_PROMPT)
        dataroom = Dataroom.objects.create(name="sample")
        question = Question.objects.create(text="What do runway and burn tell us about near-term financing risk?")
        run = Run.objects.create(
            harness=harness, dataroom=dataroom, question=question, label="trace-01", trace_id=Run.new_trace_id(),
            status=Run.Status.SUCCEEDED, final_answer="# Summary Answer\n\n" + "Runway is 11 months. " * 80,
            started_at=datetime(2025, 3, 1, 12, tzinfo=timezone.utc),
            finished_at=datetime(2025, 3, 1, 12, 5, tzinfo=timezone.utc), total_tokens=512_000,
            evidence_coverage={"passed": True, "supported_claims": [{"claim": "c"}] * 12, "unsupported_claims": [], "missing_citations": []},
            output_contract={"passed": True, "issues": []},
        )
        for name, content in {
            "summary_answer.md": "# Summary Answer\n\n" + "Runway is 11 months. (`financials/p_and_l.csv`)\n\n" * 20,
            "investment_memo.md": "# Memo\n\n## Bottom Line\n" + "- Financing risk is elevated.\n" * 60,
            "risk_register.json": json.dumps([{"id": f"R-{i:03d}", "risk": "Sub-12-month runway", "evidence": ["board_deck.md"]} for i in range(30)]),
            "open_questions.md": "# Open Questions\n\n" + "- What is current unrestricted cash?\n" * 30,
            "citations.json": json.dumps([{"claim_id": f"C-{i:03d}", "claim": "Burn is $2.9M", "sources": ["financials/p_and_l.csv"]} for i in range(40)]),
            "evidence_table.csv": "claim_id,claim,sources\n" + "".join(f"C-{i:03d},Burn is $2.9M,financials/p_and_l.csv\n" for i in range(40)),
        }.items():
            Artifact.objects.create(run=run, name=name, content=content, size=len(content))

        lines = make_trace(run.trace_id, args.spans)
        jsonl = "\n".join(json.dumps(line, separators=(",", ":"), ensure_ascii=False) for line in lines) + "\n"
        kinds = {}
        for line in lines:
            kind = line["attributes"]["inference.observation_kind"]
            kinds[kind] = kinds.get(kind, 0) + 1
        print(f"trace: {len(lines)} spans ({', '.join(f'{n} {k}' for k, n in sorted(kinds.items()))}), "
              f"{len(jsonl.encode()) / 1e6:.2f} MB of JSONL")

        start = time.perf_counter()
        stored = store_trace(run, jsonl, tmp)
        print(f"{'store trace (parse + bulk insert)':<34} {(time.perf_counter() - start) * 1000:7.1f} ms for {stored} spans")

        client = Client()
        client.force_login(user)
        page = reverse("runs:detail", args=[run.pk])
        warm = client.get(page)
        assert warm.status_code == 200, warm.status_code
        with CaptureQueriesContext(connection) as queries:
            client.get(page)
        print(f"run detail page: {len(warm.content) / 1e3:.0f} kB of HTML, {len(queries)} SQL queries")
        print(summary("run detail page", timed(lambda: client.get(page), args.requests)))

        llm = next(line["span_id"] for line in lines if line["attributes"]["inference.observation_kind"] == "LLM")
        tool = next(line["span_id"] for line in lines if line["attributes"]["inference.observation_kind"] == "TOOL")
        for label, span_id in (("span detail fragment (LLM)", llm), ("span detail fragment (TOOL)", tool)):
            url = reverse("runs:span-detail", args=[run.pk, span_id])
            assert client.get(url, headers={"HX-Request": "true"}).status_code == 200
            print(summary(label, timed(lambda: client.get(url, headers={"HX-Request": "true"}), args.requests)))

        download = reverse("runs:trace-jsonl", args=[run.pk])
        print(summary("trace JSONL download", timed(lambda: b"".join(client.get(download).streaming_content), max(5, args.requests // 3))))
        runs_list = reverse("runs:list")
        print(summary("runs list", timed(lambda: client.get(runs_list), args.requests)))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
