"""Run the agent for one claimed Run and store everything it produced.

Flow: stage a temporary copy of the dataroom (from DataroomFile rows) with the
validators in tools/ and a runtime manifest.json; start `python -m runs.agent_child`
with a scrubbed environment (the API key travels on stdin, never in the
environment); beat the row while it works; then store the trace as Span rows,
the artifacts, both validators' results (run here, not trusted from the agent) and
the run's totals. A failure (provider error, timeout, crash) is stored on the row
with whatever spans and artifacts exist.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import transaction

from loopsite.childproc import PREEXEC, kill_group, secretless_env
from loopsite import llm
from loopsite.llm import endpoint

from . import jail
from .agent_tools import TOOL_NAMES, TOOLS_DIR, tool_sources
from .ingest import parse_time as parse_otlp_timestamp  # an `otlp_timestamp` string as a datetime
from .models import Artifact, Run, Span

log = logging.getLogger(__name__)

# Spans per INSERT when a trace is stored: a 500-span trace is three statements.
SPAN_BATCH_SIZE = 200

BEAT_SECONDS = 5.0
MODEL_STATUS_FILE = "model_status"
VALIDATOR_TIMEOUT_SECONDS = 60
MAX_ARTIFACT_CHARS = 2 * 1024 * 1024
SERVICE_NAME = "financial-diligence-analyst"
PROJECT_ID = "loopsite"
WORKFLOW_NAME = "Synthetic dataroom diligence"


class Heartbeat:
    """Beats the run's row while this worker works on it: called from every wait (the agent child,
    the validators) and between steps, so a slow validation or a long store never leaves the
    heartbeat older than WORK_STALE_SECONDS. It runs on the worker's own thread and connection, so
    a beat never waits on the worker's own open transaction.

    With a `status_path` (the agent child's model status file) each call also carries a change of
    "waiting for the model" to the row at once."""

    def __init__(self, run: Run, *, status_path: Path | None = None) -> None:
        self.run = run
        self.last = time.monotonic()
        self.status_path = status_path
        self.waiting = False

    @property
    def interval(self) -> float:
        return max(0.5, min(BEAT_SECONDS, settings.WORK_STALE_SECONDS / 4))

    def __call__(self, *, now: bool = False) -> None:
        if self.status_path is not None:
            waiting = _read_status(self.status_path) == "waiting"
            if waiting != self.waiting:
                self.waiting = waiting
                self.run.mark_waiting_for_model(waiting=waiting)
        if now or time.monotonic() - self.last >= self.interval:
            self.run.beat()
            self.last = time.monotonic()


def _read_status(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return ""


def model_limits() -> dict[str, Any]:
    """What the agent child needs to keep the endpoint's limits (runs.model_limits): no secret but the
    Redis URL, which travels on stdin with the API key."""
    return llm.model_limits(
        lease_seconds=settings.RUN_REQUEST_TIMEOUT_SECONDS * (settings.RUN_MODEL_MAX_RETRIES + 1) + 30)


@dataclass
class ChildOutcome:
    result: dict[str, Any] | None = None
    error: str = ""
    timed_out: bool = False
    log_tail: str = ""
    seconds: float = 0.0


@dataclass
class Collected:
    spans: list[Span] = field(default_factory=list)
    artifacts: list[Artifact] = field(default_factory=list)


def execute_run(*, run: Run) -> None:
    """Run the agent for `run` (already claimed: status running) and store the outcome."""
    attempt = run.attempts
    # The attempt's own directory (loopsite.work.WorkItem.scratch_dir): removed when the run ends, or,
    # if this worker is killed mid-run, by the run's next claim or by the sweep.
    with run.scratch_dir(attempt) as workdir:
        try:
            _execute(run=run, workdir=workdir)
        except Exception as exc:  # noqa: BLE001 - a bug here must still leave a readable row
            log.exception("run %s: runner crashed", run.pk)
            _finish(run, attempt, {"status": Run.Status.FAILED,
                                   "last_error": f"Runner error: {type(exc).__name__}: {exc}"})


def _execute(*, run: Run, workdir: Path) -> None:
    attempt = run.attempts
    harness = run.harness
    ep = endpoint()
    model = harness.agent_model
    with transaction.atomic():
        run.spans.all().delete()
        run.artifacts.all().delete()
        Run.objects.filter(pk=run.pk).update(
            model_name=model, endpoint=ep.base_url, used_standin=ep.is_standin,
            final_answer="", evidence_coverage=None, output_contract=None,
        )
    log.info("run %s attempt %s: %s on %s (%s)", run.pk, attempt, harness.version, run.dataroom, ep)

    sandbox = jail.availability(bwrap=settings.LOOPSITE_BWRAP, unconfined=settings.LOOPSITE_UNCONFINED_SANDBOX)
    if not sandbox.usable:
        log.error("run %s not started: %s", run.pk, sandbox.error)
        _finish(run, attempt, {"status": Run.Status.FAILED, "last_error": sandbox.error})
        return

    dataroom_dir = stage_dataroom(run.dataroom, workdir / "dataroom")
    output_dir = workdir / "outputs"
    trace_path = workdir / "trace.jsonl"
    (workdir / "tmp").mkdir()
    job = {
        "instructions": harness.build_instructions(),
        "user_prompt": _user_prompt(run),
        "model": model,
        "reasoning_effort": (harness.model_settings or {}).get("reasoning_effort") or "",
        "base_url": ep.base_url,
        "api_key": ep.api_key,
        "dataroom_dir": str(dataroom_dir),
        "output_dir": str(output_dir),
        "trace_path": str(trace_path),
        "result_path": str(workdir / "result.json"),
        "sdk_trace_id": f"trace_{run.trace_id}",
        "max_turns": settings.RUN_MAX_TURNS,
        "harness_version": harness.version,
        "required_artifacts": harness.required_artifacts,
        "workflow_name": WORKFLOW_NAME,
        "trace_metadata": {"loopsite_run_id": str(run.pk), "trace_label": run.label or f"run-{run.pk}"},
        "project_id": PROJECT_ID,
        "service_name": SERVICE_NAME,
        "deployment_environment": "standin" if ep.is_standin else "loopsite",
        "request_timeout": settings.RUN_REQUEST_TIMEOUT_SECONDS,
        "max_retries": settings.RUN_MODEL_MAX_RETRIES,
        # A harness may say "api": "chat_completions" for an endpoint without the Responses API.
        "api": (harness.model_settings or {}).get("api") or "responses",
        # Every shell command of the agent runs in this jail (runs.jail); unconfined only when allowed.
        "sandbox": {"bwrap": sandbox.bwrap} if sandbox.confined else {"unconfined": True},
        # The endpoint's limits, counted in Redis by every worker (runs.model_limits). The child writes
        # "waiting" to status_path while a call waits; the heartbeat shows it on the row.
        "model_limits": model_limits(),
        "status_path": str(workdir / MODEL_STATUS_FILE),
    }
    beat = Heartbeat(run, status_path=workdir / MODEL_STATUS_FILE)
    outcome = run_child(job, workdir=workdir, run=run, timeout=settings.RUN_TIMEOUT_SECONDS, beat=beat)

    result = outcome.result or {}
    if not any(output_dir.glob("*")):
        _salvage_outputs(workdir / "tmp", output_dir, required=list(harness.required_artifacts or []))
    beat()
    collected = Collected(spans=load_spans(run, trace_path), artifacts=load_artifacts(run, output_dir))
    checks_dir = workdir / "checks"
    beat()
    evidence = run_evidence_check(output_dir=output_dir, dataroom_dir=dataroom_dir, work_dir=checks_dir, beat=beat)
    contract = run_contract_check(output_dir=output_dir, dataroom_dir=dataroom_dir, work_dir=checks_dir, beat=beat)

    fields: dict[str, Any] = {
        "final_answer": str(result.get("final_answer") or ""),
        "evidence_coverage": evidence,
        "output_contract": contract,
        "agent_seconds": result.get("agent_seconds") or round(outcome.seconds, 3),
        **span_totals(collected.spans),
    }
    error = _error_text(outcome, result)
    if error:
        fields.update(status=Run.Status.FAILED, last_error=error)
        log.warning("run %s failed: %s", run.pk, error)
    else:
        fields.update(status=Run.Status.SUCCEEDED, last_error="")
    beat(now=True)  # the store below is one transaction that re-checks ownership first
    if _finish(run, attempt, fields, collected):
        log.info("run %s %s in %.1fs: %d spans, %d artifacts, %s tokens", run.pk, fields["status"],
                 outcome.seconds, len(collected.spans), len(collected.artifacts), fields["total_tokens"])


def _user_prompt(run: Run) -> str:
    from .prompts import build_user_prompt

    return build_user_prompt(run.question.text, harness_version=run.harness.version)


def _error_text(outcome: ChildOutcome, result: dict[str, Any]) -> str:
    if outcome.error:
        return outcome.error
    error = result.get("error")
    if error:
        return f"{error.get('type') or 'Error'}: {error.get('message') or ''}".strip()
    return ""


def _finish(run: Run, attempt: int, fields: dict[str, Any], collected: Collected | None = None) -> bool:
    """Store the outcome if this attempt still owns the row (the sweep may have given it away):
    `fields["status"]` failed with `fields["last_error"]`, or succeeded; spans and artifacts in the same
    transaction (loopsite.work.WorkItem.finish, fenced by `attempt`)."""
    fields = {**fields, "waiting_for_model": False}
    failed = fields.pop("status") == Run.Status.FAILED
    error = fields.pop("last_error", "") or ("The run failed without a reason." if failed else "")

    def store() -> None:
        if collected is not None:
            run.spans.all().delete()
            run.artifacts.all().delete()
            Span.objects.bulk_create(collected.spans, batch_size=SPAN_BATCH_SIZE)
            Artifact.objects.bulk_create(collected.artifacts)

    return run.finish(attempt, error=error if failed else "", store=store, **fields)


# -- staging ------------------------------------------------------------------

def stage_dataroom(dataroom, target: Path) -> Path:  # noqa: ANN001
    """Write the dataroom's files under `target`, add tools/ and the runtime manifest.json."""
    target.mkdir(parents=True)
    root = target.resolve()
    for item in dataroom.files.all().iterator():
        path = (root / item.path).resolve()
        if not path.is_relative_to(root) or path == root:
            log.warning("dataroom %s: skipped unsafe path %r", dataroom.pk, item.path)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(bytes(item.content))
    write_tools(root)
    write_runtime_manifest(root)
    return root


def write_tools(dataroom_dir: Path) -> list[str]:
    tools_dir = dataroom_dir / "tools"
    tools_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, source in tool_sources().items():
        path = tools_dir / name
        path.write_text(source, encoding="utf-8")
        path.chmod(0o755)
        written.append(f"tools/{name}")
    return written


def write_runtime_manifest(dataroom_dir: Path) -> dict[str, Any]:
    """manifest.json as the seed writes it (runtime scope + file list), keeping the dataroom's own keys."""
    path = dataroom_dir / "manifest.json"
    manifest: dict[str, Any] = {}
    if path.is_file():
        try:
            original = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            original = None
        if isinstance(original, dict):
            manifest.update(original)
    manifest["runtime_scope"] = "sdk_agent_visible_dataroom"
    manifest["files"] = sorted(
        p.relative_to(dataroom_dir).as_posix() for p in dataroom_dir.rglob("*")
        if p.is_file() and p.name != "manifest.json"
    )
    path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


# -- the child process --------------------------------------------------------

def run_child(job: dict[str, Any], *, workdir: Path, run: Run, timeout: float,
              beat: Heartbeat | None = None) -> ChildOutcome:
    """Start the agent child, feed it the job, beat the row until it ends or times out."""
    beat = beat or Heartbeat(run)
    log_path = workdir / "child.log"
    started = time.monotonic()
    outcome = ChildOutcome()
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "runs.agent_child"],
            stdin=subprocess.PIPE, stdout=log_file, stderr=subprocess.STDOUT,
            cwd=workdir, env=secretless_env(workdir), start_new_session=True, preexec_fn=PREEXEC,
        )
        try:
            proc.stdin.write(json.dumps(job).encode("utf-8"))
            proc.stdin.close()
        except BrokenPipeError:
            pass
        if not _wait_beating(proc, deadline=started + timeout, beat=beat):
            kill_group(proc)
            outcome.timed_out = True
            outcome.error = f"Timed out after {int(timeout)} s: the agent process was stopped."
    outcome.seconds = time.monotonic() - started
    outcome.log_tail = _tail(log_path)
    result_path = Path(job["result_path"])
    if result_path.is_file():
        try:
            outcome.result = json.loads(result_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            outcome.result = None
    if outcome.result is None and not outcome.error:
        last_line = next((line for line in reversed(outcome.log_tail.splitlines()) if line.strip()), "")
        outcome.error = f"The agent process exited with code {proc.returncode} without a result. {last_line}".strip()
    if outcome.log_tail and (outcome.error or proc.returncode):
        log.warning("run %s: agent process output (tail):\n%s", run.pk, outcome.log_tail)
    return outcome


def _wait_beating(proc: subprocess.Popen, *, deadline: float, beat: Heartbeat | None) -> bool:
    """Wait for `proc`, beating meanwhile. False if it was still running at `deadline` (monotonic)."""
    while True:
        try:
            step = min(1.0, beat.interval) if beat is not None else 1.0
            proc.wait(timeout=max(0.05, min(step, deadline - time.monotonic())))
            return True
        except subprocess.TimeoutExpired:
            pass
        if time.monotonic() >= deadline:
            return False
        if beat is not None:
            beat()


def _tail(path: Path, limit: int = 4000) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    return data[-limit:].decode("utf-8", errors="replace")


def _salvage_outputs(sandbox_tmp: Path, output_dir: Path, *, required: list[str] | None = None) -> list[str]:
    """After a timeout or crash, take what the agent had written from its sandbox workspace, with the
    limits of the normal path (agent_child.copy_outputs): the required artifacts, then up to
    MAX_EXTRA_OUTPUTS other top-level files, each at most MAX_OUTPUT_BYTES; links are never followed."""
    for outputs in sorted(sandbox_tmp.glob("*/outputs")):
        if outputs.is_symlink() or not outputs.is_dir():
            continue
        present = [item.name for item in outputs.iterdir() if item.is_file() and not item.is_symlink()]
        copied = []
        output_dir.mkdir(parents=True, exist_ok=True)
        for name in jail.output_names(required or [], present):
            content = _read_capped(outputs / name, jail.MAX_OUTPUT_BYTES)
            if content is None:
                continue
            (output_dir / name).write_bytes(content)
            copied.append(name)
        return copied
    return []


def _read_capped(path: Path, limit: int) -> bytes | None:
    """The file's bytes if it is a regular file (not a link) of at most `limit` bytes, else None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            return None
        content = handle.read(limit + 1)
    if len(content) > limit:
        log.warning("salvaged %s is larger than %d bytes: skipped", path.name, limit)
        return None
    return content


# -- what the run produced ----------------------------------------------------

def load_spans(run: Run, trace_path: Path) -> list[Span]:
    """Span rows (unsaved) from the child's HALO JSONL, in line order; broken lines are skipped."""
    spans: list[Span] = []
    if not trace_path.is_file():
        return spans
    with trace_path.open(encoding="utf-8", errors="replace") as handle:
        for number, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            try:
                line = json.loads(text)
            except json.JSONDecodeError:
                log.warning("run %s: trace line %d is not JSON (cut off?): skipped", run.pk, number)
                continue
            if not isinstance(line, dict):
                continue
            attributes = line.get("attributes") or {}
            status = line.get("status") or {}
            spans.append(Span(
                run=run,
                position=len(spans),
                span_id=str(line.get("span_id") or "")[:64],
                parent_span_id=str(line.get("parent_span_id") or "")[:64],
                name=str(line.get("name") or "")[:300],
                observation_kind=str(attributes.get("inference.observation_kind") or "")[:40],
                start_time=parse_otlp_timestamp(line.get("start_time")),
                end_time=parse_otlp_timestamp(line.get("end_time")),
                is_error=status.get("code") == "STATUS_CODE_ERROR",
                data=line,
            ))
    return spans


def load_artifacts(run: Run, output_dir: Path) -> list[Artifact]:
    artifacts = []
    if not output_dir.is_dir():
        return artifacts
    for path in sorted(output_dir.iterdir()):
        if not path.is_file() or path.is_symlink():
            continue
        data = path.read_bytes()
        artifacts.append(Artifact(
            run=run, name=path.name[:200], size=len(data),
            content=data.decode("utf-8", errors="replace")[:MAX_ARTIFACT_CHARS],
        ))
    return artifacts


def span_totals(spans: list[Span]) -> dict[str, int]:
    """Token counts summed over LLM spans, model and tool call counts."""
    input_tokens = output_tokens = total_tokens = model_calls = tool_calls = 0
    for span in spans:
        attrs = span.attributes
        if span.observation_kind == "LLM":
            model_calls += 1
            prompt = _int(attrs.get("inference.llm.input_tokens"))
            completion = _int(attrs.get("inference.llm.output_tokens"))
            input_tokens += prompt
            output_tokens += completion
            total_tokens += _int(attrs.get("llm.token_count.total")) or prompt + completion
        elif span.observation_kind == "TOOL":
            tool_calls += 1
    return {"input_tokens": input_tokens, "output_tokens": output_tokens, "total_tokens": total_tokens,
            "model_calls": model_calls, "tool_calls": tool_calls}


def _int(value: Any) -> int:
    try:
        return max(int(value), 0)
    except (TypeError, ValueError):
        return 0


# -- validators, run by us on the copied artifacts ----------------------------

def claims_from_citations(output_dir: Path) -> list[dict[str, Any]]:
    """The evidence check's input, built from the run's citations.json (nothing if absent or broken)."""
    path = output_dir / "citations.json"
    try:
        citations = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return []
    if not isinstance(citations, list):
        return []
    claims = []
    for index, item in enumerate(citations):
        if not isinstance(item, dict):
            continue
        claims.append({
            "claim": str(item.get("claim") or item.get("claim_id") or f"citation {index}"),
            "claim_type": str(item.get("claim_type") or "citation"),
            "citations": item.get("sources") if item.get("sources") is not None else item.get("citations") or [],
        })
    return claims


def run_evidence_check(*, output_dir: Path, dataroom_dir: Path, work_dir: Path,
                       beat: Heartbeat | None = None) -> dict[str, Any]:
    work_dir.mkdir(parents=True, exist_ok=True)
    claims_path = work_dir / "claims.json"
    claims_path.write_text(json.dumps(claims_from_citations(output_dir), indent=2), encoding="utf-8")
    return _run_validator(
        "check_evidence_coverage.py",
        ["--claims-json", str(claims_path), "--dataset-root", str(dataroom_dir),
         "--output", str(work_dir / "evidence_coverage.json")],
        result_path=work_dir / "evidence_coverage.json",
        work_dir=work_dir,
        beat=beat,
    )


def run_contract_check(*, output_dir: Path, dataroom_dir: Path, work_dir: Path,
                       beat: Heartbeat | None = None) -> dict[str, Any]:
    work_dir.mkdir(parents=True, exist_ok=True)
    return _run_validator(
        "validate_output_contract.py",
        ["--outputs", str(output_dir), "--dataset-root", str(dataroom_dir),
         "--output", str(work_dir / "output_contract.json")],
        result_path=work_dir / "output_contract.json",
        work_dir=work_dir,
        beat=beat,
    )


def _run_validator(name: str, args: list[str], *, result_path: Path, work_dir: Path,
                   beat: Heartbeat | None = None) -> dict[str, Any]:
    """Run one validator on the copied outputs, beating the run's row while it works."""
    assert name in TOOL_NAMES
    stderr_path = work_dir / f"{name}.stderr"
    with stderr_path.open("wb") as stderr_file:
        proc = subprocess.Popen(
            [sys.executable, str(TOOLS_DIR / name), *args],
            cwd=work_dir, env=secretless_env(work_dir), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=stderr_file, start_new_session=True, preexec_fn=PREEXEC,
        )
        if not _wait_beating(proc, deadline=time.monotonic() + VALIDATOR_TIMEOUT_SECONDS, beat=beat):
            kill_group(proc)
            return {"passed": False, "error": f"{name} timed out after {VALIDATOR_TIMEOUT_SECONDS} s"}
    if proc.returncode != 0 or not result_path.is_file():
        stderr = _tail(stderr_path, 2000).strip()
        return {"passed": False, "error": f"{name} exited with code {proc.returncode}: {stderr}"}
    try:
        return json.loads(result_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        return {"passed": False, "error": f"{name} wrote invalid JSON: {exc}"}
