"""HALO in its own process: `python -m reviews.halo_child < job.json`.

HALO resets the Agents SDK's trace processors for the whole process
(`agents.set_trace_processors([])`), so it never runs inside the web or worker
process. The parent (reviews.halo.run_halo) starts this module with a scrubbed
environment; the API key arrives on stdin with the rest of the job. No Django here.

Job (JSON on stdin):
    context_path, messages ([{role, content}], the last one the prompt) or prompt,
    model, base_url, api_key, maximum_depth, maximum_turns,
    maximum_parallel_subagents, index_dir, status_interval (seconds, optional),
    max_llm_failures (optional: consecutive failed model calls before HALO gives up; HALO's own is 10),
    model_limits (optional: the endpoint's limits and the Redis URL that counts them, see
    runs.model_limits; HALO's model client keeps them and waits out 429 / 503 for their Retry-After).

Output: one JSON object per line on stdout, as things happen:
    {"type": "status", "elapsed": 1.9}                                  every status_interval
    {"type": "tool_call", "name", "arguments" (shortened), "agent", "depth"}
    {"type": "tool_result", "name", "chars", "agent", "depth"}
    {"type": "text", "delta", "agent", "depth"}                          streamed assistant text, coalesced
    {"type": "report", "text", "elapsed"}                                last, on success (exit 0)
    {"type": "error", "message", "elapsed"}                              last, on failure (exit 1)
Anything else the libraries print goes to stderr.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ARGUMENT_CHARS = 300
TEXT_FLUSH_CHARS = 2000
TEXT_FLUSH_SECONDS = 0.5


class EventWriter:
    """Writes event lines to the real stdout; fd 1 itself is pointed at stderr so stray prints cannot corrupt it.

    Given `fd`, it writes there and leaves stdout alone (for tests).
    """

    def __init__(self, fd: int | None = None) -> None:
        if fd is None:
            sys.stdout.flush()
            fd = os.dup(1)
            os.dup2(2, 1)
            sys.stdout = sys.stderr
        self._fd = fd
        self._started = time.monotonic()
        self._text: list[str] = []
        self._text_key: tuple[str, str, int] | None = None
        self._text_since = 0.0

    @property
    def elapsed(self) -> float:
        return round(time.monotonic() - self._started, 2)

    def emit(self, event: dict[str, Any]) -> None:
        self.flush_text()
        self._write(event)

    def text(self, delta: str, *, agent: str, agent_id: str, depth: int) -> None:
        key = (agent_id, agent, depth)
        if self._text_key is not None and key != self._text_key:
            self.flush_text()
        if not self._text:
            self._text_since = time.monotonic()
        self._text_key = key
        self._text.append(delta)
        if sum(len(part) for part in self._text) >= TEXT_FLUSH_CHARS:
            self.flush_text()

    def flush_text_if_stale(self) -> None:
        if self._text and time.monotonic() - self._text_since >= TEXT_FLUSH_SECONDS:
            self.flush_text()

    def flush_text(self) -> None:
        if not self._text or self._text_key is None:
            return
        _, agent, depth = self._text_key
        event = {"type": "text", "delta": "".join(self._text), "agent": agent, "depth": depth}
        self._text, self._text_key = [], None
        self._write(event)

    def _write(self, event: dict[str, Any]) -> None:
        data = (json.dumps(event, ensure_ascii=False) + "\n").encode("utf-8")
        while data:
            written = os.write(self._fd, data)
            data = data[written:]


def shorten(text: str, limit: int = ARGUMENT_CHARS) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def build_config(job: dict[str, Any]):  # noqa: ANN201 - engine types are imported lazily
    from engine.agents.agent_config import AgentConfig
    from engine.engine_config import EngineConfig
    from engine.model_config import ModelConfig
    from engine.model_provider_config import ModelProviderConfig
    from engine.traces.models.trace_index_config import TraceIndexConfig

    # No temperature: GPT-5-class models reject 0.0 (FACTS.md); the model's default applies.
    model = ModelConfig(name=job["model"])
    root = AgentConfig(name="root", model=model, maximum_turns=int(job.get("maximum_turns") or 20))
    return EngineConfig(
        root_agent=root,
        subagent=root.model_copy(update={"name": "sub"}),
        synthesis_model=model,
        compaction_model=model,
        model_provider=ModelProviderConfig(base_url=job["base_url"], api_key=job["api_key"]),
        trace_index=TraceIndexConfig(index_dir=Path(job["index_dir"])),
        maximum_depth=int(job.get("maximum_depth", 1)),
        maximum_parallel_subagents=max(1, int(job.get("maximum_parallel_subagents") or 2)),
    )


def limit_model_calls(job: dict[str, Any]) -> None:
    """HALO builds its one AsyncOpenAI client in engine.main (every agent and subagent shares it): give that
    client the limited transport of runs.model_limits, as the agent child's client has."""
    import engine.main
    from openai import AsyncOpenAI, DefaultAsyncHttpxClient

    from runs.model_limits import limited_transport

    class LimitedAsyncOpenAI(AsyncOpenAI):
        def __init__(self, **kwargs: Any) -> None:
            if kwargs.get("http_client") is None:
                transport = limited_transport(job.get("model_limits"), base_url=str(kwargs.get("base_url") or job["base_url"]),
                                              status_path=None)
                kwargs["http_client"] = DefaultAsyncHttpxClient(transport=transport)
            super().__init__(**kwargs)

    engine.main.AsyncOpenAI = LimitedAsyncOpenAI


def job_messages(job: dict[str, Any]) -> list[dict[str, str]]:
    messages = job.get("messages")
    if not messages:
        messages = [{"role": "user", "content": job["prompt"]}]
    return [{"role": str(message["role"]), "content": str(message["content"])} for message in messages]


async def run_job(job: dict[str, Any], out: EventWriter) -> str:
    from agents import set_trace_processors, set_tracing_disabled
    from engine.main import stream_engine_async
    from engine.models.messages import AgentMessage
    from engine.sandbox.sandbox import Sandbox

    # Only the trace tools are needed: without this HALO looks for Deno and
    # Pyodide wheels (from a CDN) to offer run_code, and loses about a second offline.
    Sandbox.get = classmethod(lambda cls: None)
    # HALO retries a failing model call ten times with backoff (minutes against a dead
    # endpoint); the job may lower that. The runner reads this module global on every attempt.
    if job.get("max_llm_failures"):
        from engine.agents import openai_agent_runner

        openai_agent_runner.MAX_CONSECUTIVE_LLM_FAILURES = max(1, int(job["max_llm_failures"]))
    # Nothing from this process is uploaded anywhere (HALO clears the processors too).
    set_trace_processors([])
    set_tracing_disabled(True)

    limit_model_calls(job)

    config = build_config(job)
    messages = [AgentMessage(role=m["role"], content=m["content"]) for m in job_messages(job)]
    context_path = Path(job["context_path"])  # HALO needs a Path, not a str
    interval = float(job.get("status_interval") or 2.0)

    collector = Collector(out)
    done = asyncio.Event()

    async def ticker() -> None:
        out.emit({"type": "status", "elapsed": out.elapsed})
        next_status = time.monotonic() + interval
        while not done.is_set():
            try:
                await asyncio.wait_for(done.wait(), timeout=TEXT_FLUSH_SECONDS)
            except asyncio.TimeoutError:
                pass
            out.flush_text_if_stale()
            if not done.is_set() and time.monotonic() >= next_status:
                out.emit({"type": "status", "elapsed": out.elapsed})
                next_status += interval

    ticking = asyncio.create_task(ticker())
    try:
        async for event in stream_engine_async(messages, config, context_path):
            collector.handle(event)
    finally:
        done.set()
        await ticking
        out.flush_text()
    return collector.report()


class Collector:
    """Turns HALO's stream events into our event lines and keeps what makes the report.

    The report is the root agent's `final_answer` (HALO emits it as a final-flagged
    assistant message); without one, the root's assistant messages, then its streamed text.
    """

    def __init__(self, out: EventWriter) -> None:
        self.out = out
        self.final_items: list[str] = []
        self.root_messages: list[str] = []
        self.root_deltas: list[str] = []
        self.tool_names: dict[str, str] = {}

    def handle(self, event: Any) -> None:
        from engine.models.engine_output import AgentOutputItem, AgentTextDelta

        if isinstance(event, AgentTextDelta):
            agent = "root" if event.depth == 0 else "sub"
            self.out.text(event.text_delta, agent=agent, agent_id=event.agent_id, depth=event.depth)
            if event.depth == 0:
                self.root_deltas.append(event.text_delta)
            return
        if not isinstance(event, AgentOutputItem):
            return  # RunCheckpoint: not requested
        item = event.item
        if event.final:
            self.final_items.append(str(item.content or ""))
        elif item.role == "assistant" and item.tool_calls:
            for call in item.tool_calls:
                self.tool_names[call.id] = call.function.name
                self.out.emit({"type": "tool_call", "name": call.function.name,
                               "arguments": shorten(call.function.arguments), "agent": event.agent_name,
                               "depth": event.depth})
        elif item.role == "tool":
            content = item.content if isinstance(item.content, str) else json.dumps(item.content)
            name = item.name or self.tool_names.get(item.tool_call_id or "", "")
            self.out.emit({"type": "tool_result", "name": name, "chars": len(content or ""),
                           "agent": event.agent_name, "depth": event.depth})
        elif item.role == "assistant" and event.depth == 0 and isinstance(item.content, str):
            self.root_messages.append(item.content)

    def report(self) -> str:
        report = "\n\n".join(text for text in self.final_items if text.strip()).strip()
        if not report:
            report = "\n\n".join(self.root_messages).strip() or "".join(self.root_deltas).strip()
        if not report:
            raise RuntimeError("HALO completed without producing a report.")
        return report


def main() -> int:
    out = EventWriter()
    try:
        job = json.loads(sys.stdin.read())
        for key in ("context_path", "model", "base_url", "api_key", "index_dir"):
            if not job.get(key):
                raise ValueError(f"the job has no {key!r}")
    except (ValueError, json.JSONDecodeError) as exc:
        out.emit({"type": "error", "message": f"Bad job: {exc}", "elapsed": out.elapsed})
        return 2
    try:
        report = asyncio.run(run_job(job, out))
    except BaseException as exc:  # noqa: BLE001 - every failure becomes an error event
        if isinstance(exc, KeyboardInterrupt):
            raise
        import traceback

        traceback.print_exc(file=sys.stderr)
        message = f"{type(exc).__name__}: {exc}".strip()
        out.emit({"type": "error", "message": message, "elapsed": out.elapsed})
        return 1
    out.emit({"type": "report", "text": report, "elapsed": out.elapsed})
    return 0


if __name__ == "__main__":
    code = main()
    sys.stderr.flush()
    # Skip interpreter finalisation (about 0.7 s with the SDK and HALO loaded): every
    # event is already written with os.write and nothing else needs flushing.
    os._exit(code)
