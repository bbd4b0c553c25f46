"""Rows for the run-page tests, built straight in the database (no model calls)."""

import json
from datetime import datetime, timedelta, timezone as dt_timezone

from runs.models import Artifact, Dataroom, DataroomFile, Harness, Question, Run, Span

T0 = datetime(2025, 3, 1, 12, 0, 0, tzinfo=dt_timezone.utc)


def make_harness(version="v001", status=Harness.Status.PROMOTED, **kwargs) -> Harness:
    kwargs.setdefault("system_prompt", "You are a diligence analyst.")
    kwargs.setdefault("model_settings", {"agent_model": "gpt-test"})
    kwargs.setdefault("tool_policy", {"shell": "read-only"})
    return Harness.objects.create(version=version, status=status, **kwargs)


def make_dataroom(name="sample", files=None) -> Dataroom:
    files = files if files is not None else {"overview.md": b"# Overview\n", "financials/p_and_l.csv": b"a,b\n1,2\n"}
    dataroom = Dataroom.objects.create(name=name, file_count=len(files), total_bytes=sum(len(v) for v in files.values()))
    for path, content in files.items():
        DataroomFile.objects.create(dataroom=dataroom, path=path, content=content, size=len(content))
    return dataroom


def make_question(text="What do runway and burn tell us?", *, is_default=True, bank_index=None) -> Question:
    if bank_index is None:
        bank_index = Question.objects.count()
    return Question.objects.create(text=text, is_default=is_default, bank_index=bank_index)


_counter = {"n": 0}


def make_run(*, harness=None, dataroom=None, question=None, status=Run.Status.SUCCEEDED, **kwargs) -> Run:
    _counter["n"] += 1
    harness = harness or Harness.objects.filter(version="v001").first() or make_harness()
    dataroom = dataroom or Dataroom.objects.filter(name="sample").first() or make_dataroom()
    question = question or Question.objects.first() or make_question()
    if status in (Run.Status.SUCCEEDED, Run.Status.FAILED):
        kwargs.setdefault("started_at", T0)
        kwargs.setdefault("finished_at", T0 + timedelta(seconds=42))
    return Run.objects.create(
        harness=harness, dataroom=dataroom, question=question, status=status,
        label=kwargs.pop("label", f"trace-{_counter['n']:02d}"), trace_id=Run.new_trace_id(), **kwargs,
    )


def span_line(run, span_id, *, parent="", name="agent.analyst", kind="AGENT", start=0.0, end=1.0,
              error="", attributes=None) -> dict:
    def ts(seconds):
        moment = T0 + timedelta(seconds=seconds)
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond:06d}000Z"

    attrs = {"inference.observation_kind": kind, **(attributes or {})}
    return {
        "trace_id": run.trace_id, "span_id": span_id, "parent_span_id": parent, "trace_state": "",
        "name": name, "kind": "SPAN_KIND_INTERNAL", "start_time": ts(start), "end_time": ts(end),
        "status": {"code": "STATUS_CODE_ERROR" if error else "STATUS_CODE_OK", "message": error},
        "resource": {"attributes": {"service.name": "financial-diligence-analyst"}},
        "scope": {"name": "openai-agents-sdk", "version": "0.14.7"},
        "attributes": attrs,
    }


def store_spans(run, lines) -> list[Span]:
    spans = []
    for position, line in enumerate(lines):
        start = datetime.fromisoformat(line["start_time"][:26] + "+00:00") if line.get("start_time") else None
        end = datetime.fromisoformat(line["end_time"][:26] + "+00:00") if line.get("end_time") else None
        spans.append(Span(
            run=run, position=position, span_id=line["span_id"], parent_span_id=line.get("parent_span_id") or "",
            name=line["name"], observation_kind=line["attributes"].get("inference.observation_kind", ""),
            start_time=start, end_time=end, is_error=line["status"]["code"] == "STATUS_CODE_ERROR", data=line,
        ))
    return Span.objects.bulk_create(spans)


def small_trace(run) -> list[Span]:
    """agent → (llm, tool, llm): the shape of a short analyst run."""
    return store_spans(run, [
        span_line(run, "a1", name="agent.analyst", kind="AGENT", start=0, end=9),
        span_line(run, "l1", parent="a1", name="response.gpt-test", kind="LLM", start=0.1, end=2, attributes={
            "llm.model_name": "gpt-test",
            "llm.input_messages": json.dumps([{"role": "user", "content": "How long is the runway?"}]),
            "llm.output_messages": json.dumps([{"role": "assistant", "content": "Let me read p_and_l.csv"}]),
            "llm.token_count.prompt": 120, "llm.token_count.completion": 30, "llm.token_count.total": 150,
        }),
        span_line(run, "t1", parent="a1", name="function.exec_command", kind="TOOL", start=2, end=2.5, attributes={
            "tool.name": "exec_command",
            "input.value": json.dumps({"cmd": "cat data/financials/p_and_l.csv"}),
            "output.value": "metric,value\nrunway_months,11\n",
        }),
        span_line(run, "l2", parent="a1", name="response.gpt-test", kind="LLM", start=2.6, end=8, attributes={
            "llm.token_count.total": 99,
        }),
    ])


def add_artifacts(run, artifacts: dict[str, str]) -> None:
    for name, content in artifacts.items():
        Artifact.objects.create(run=run, name=name, content=content, size=len(content.encode()))


GOOD_ARTIFACTS = {
    "summary_answer.md": "# Summary Answer\n\nRunway is **11 months**. (`financials/p_and_l.csv`)\n",
    "investment_memo.md": "# Investment Memo\n\n## Bottom Line\n- Financing risk is elevated.\n",
    "risk_register.json": json.dumps([{"id": "R-001", "risk": "Sub-12-month runway", "severity": "High"}]),
    "open_questions.md": "# Open Questions\n\n- What is current unrestricted cash?\n",
    "citations.json": json.dumps([{"claim_id": "C-001", "claim": "Burn is $2.9M", "sources": ["financials/p_and_l.csv"]}]),
    "evidence_table.csv": "claim_id,claim,sources\nC-001,Burn is $2.9M,financials/p_and_l.csv\n",
}


XSS = '<script>alert("x")</script><img src=x onerror="alert(1)"><a href="#" onclick="steal()">click</a>'


def assert_inert(html: str) -> None:
    """No element the page did not write itself: no inline script, no on* handler, no javascript: URL.
    Text that merely looks like markup (escaped, or quotes inside text) is fine."""
    from html.parser import HTMLParser

    problems = []

    class Checker(HTMLParser):
        def handle_starttag(self, tag, attrs):
            attrs = dict(attrs)
            if tag == "script" and not (attrs.get("src") or "").startswith("/static/"):
                problems.append(f"inline <script> {attrs}")
            if tag == "img" and attrs.get("src") == "x":
                problems.append("injected <img>")
            for name, value in attrs.items():
                if name.startswith("on"):
                    problems.append(f"<{tag} {name}={value!r}>")
                if name in ("href", "src", "action") and (value or "").strip().lower().startswith("javascript:"):
                    problems.append(f"<{tag} {name}={value!r}>")

    Checker().feed(html)
    assert not problems, problems
