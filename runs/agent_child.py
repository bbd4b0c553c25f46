"""One agent run in a child process: `python -m runs.agent_child < job.json`.

The parent (runs.runner) starts this process with a scrubbed environment, because
the SDK's unix_local sandbox copies this process's environment into the agent's
shell. So this module never imports Django and never reads secrets from the
environment: the API key arrives on stdin with the rest of the job.

Every command the agent runs goes through JailedSandboxSession into a bubblewrap jail
(runs.jail): no network, a fresh /proc, nothing of the host but read-only system
directories and the workspace. The model client in this process keeps its route to the
model endpoint; only the commands are cut off.

Job (JSON on stdin):
    instructions, user_prompt, model, reasoning_effort, base_url, api_key,
    dataroom_dir (staged copy, incl. tools/ and manifest.json), output_dir,
    trace_path, result_path, sdk_trace_id (`trace_<32 hex>`), max_turns,
    harness_version, required_artifacts, workflow_name, trace_metadata,
    project_id, service_name, request_timeout, max_retries, api ("responses",
    the default, or "chat_completions" for endpoints without the Responses API),
    sandbox ({"bwrap": "/usr/bin/bwrap"}: every shell command runs inside that jail,
    see runs.jail; {"unconfined": true}: commands run on the host, only when the
    operator allowed it. A job with neither is refused), model_limits (the endpoint's
    limits and the Redis URL that counts them, see runs.model_limits), status_path
    (where the model client writes "waiting" while a call waits for a slot or a
    Retry-After; the runner shows it on the run's page).

Result (JSON written to result_path):
    final_answer, error ({type, message} or null), artifacts (names copied to
    output_dir), agent_seconds, model.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from agents.sandbox.sandboxes.unix_local import UnixLocalSandboxClient, UnixLocalSandboxSession

from runs import jail
from runs.model_limits import limited_transport
from runs.tracing import ExportContext, HaloJsonlProcessor

log = logging.getLogger("runs.agent_child")

AGENT_NAME = "Synthetic dataroom diligence analyst"
DEFAULT_WORKFLOW = "Synthetic dataroom diligence"
# Files the agent leaves in outputs/ besides the required ones are copied too, up to these limits.
MAX_EXTRA_OUTPUTS = jail.MAX_EXTRA_OUTPUTS
MAX_OUTPUT_BYTES = jail.MAX_OUTPUT_BYTES


async def run_job(job: dict[str, Any]) -> dict[str, Any]:
    from agents import ModelSettings, Runner, custom_span, flush_traces, set_default_openai_client
    from agents import set_default_openai_api, set_trace_processors, trace
    from agents.run import RunConfig
    from agents.sandbox import Manifest, SandboxAgent, SandboxPathGrant, SandboxRunConfig
    from agents.sandbox.capabilities import Shell
    from agents.sandbox.entries import Dir, LocalDir
    from openai import AsyncOpenAI, DefaultAsyncHttpxClient
    from openai.types.shared import Reasoning

    dataroom_dir = Path(job["dataroom_dir"]).resolve()
    output_dir = Path(job["output_dir"])
    output_dir.mkdir(parents=True, exist_ok=True)
    version = job.get("harness_version") or ""
    required = list(job.get("required_artifacts") or [])
    workflow_name = job.get("workflow_name") or DEFAULT_WORKFLOW
    result: dict[str, Any] = {"final_answer": "", "error": None, "artifacts": [], "agent_seconds": None,
                              "model": job["model"]}

    # Every model call passes the endpoint's shared limits and waits out 429 / 503 (runs.model_limits).
    transport = limited_transport(job.get("model_limits"), base_url=job["base_url"],
                                  status_path=Path(job["status_path"]) if job.get("status_path") else None)
    client = AsyncOpenAI(
        base_url=job["base_url"],
        api_key=job["api_key"],
        max_retries=int(job.get("max_retries", 2)),
        timeout=float(job.get("request_timeout", 120)),
        http_client=DefaultAsyncHttpxClient(transport=transport),
    )
    set_default_openai_client(client, use_for_tracing=False)
    chat_completions = job.get("api") == "chat_completions"
    if chat_completions:
        # For endpoints without the Responses API; apply_patch is Responses-only, so shell only.
        set_default_openai_api("chat_completions")
    processor = HaloJsonlProcessor(
        Path(job["trace_path"]),
        ctx=ExportContext(
            project_id=job.get("project_id") or "loopsite",
            service_name=job.get("service_name") or "financial-diligence-analyst",
            service_version=version or None,
            deployment_environment=job.get("deployment_environment") or None,
            extra_resource_attributes={"agent.config.version": version},
        ),
    )
    set_trace_processors([processor])

    effort = job.get("reasoning_effort") or None
    agent = SandboxAgent(
        name=AGENT_NAME,
        model=job["model"],
        model_settings=ModelSettings(reasoning=Reasoning(effort=effort) if effort else None),
        instructions=job["instructions"],
        **({"capabilities": [Shell()]} if chat_completions else {}),
        default_manifest=Manifest(
            entries={"data": LocalDir(src=dataroom_dir), "outputs": Dir()},
            extra_path_grants=(SandboxPathGrant(path=str(dataroom_dir), read_only=True),),
        ),
    )
    sandbox = sandbox_client(job.get("sandbox"))
    session = None
    started = time.monotonic()
    try:
        with trace(workflow_name=workflow_name, trace_id=job["sdk_trace_id"],
                   metadata=job.get("trace_metadata") or None):
            try:
                with custom_span("sandbox_workspace", {
                    "tool.name": "sandbox_workspace",
                    "tool.input": {"mounted": "data", "writable": "outputs", "agent_config_version": version},
                }):
                    with custom_span("agent_config", {
                        "tool.name": "agent_config",
                        "tool.input": {"version": version, "required_artifacts": required},
                    }):
                        pass
                    session = await sandbox.create(manifest=agent.default_manifest)
                    async with session:
                        try:
                            run = await Runner.run(
                                agent,
                                job["user_prompt"],
                                run_config=RunConfig(
                                    sandbox=SandboxRunConfig(session=session),
                                    workflow_name=workflow_name,
                                    trace_include_sensitive_data=True,
                                ),
                                max_turns=int(job.get("max_turns") or 30),
                            )
                            result["final_answer"] = str(run.final_output or "")
                        except Exception as exc:  # noqa: BLE001 - reported to the parent, not raised
                            log.warning("agent run failed: %s: %s", type(exc).__name__, exc)
                            result["error"] = describe_error(exc)
                        finally:
                            result["agent_seconds"] = round(time.monotonic() - started, 3)
                            # Whatever the agent wrote is kept, also when it failed half way.
                            result["artifacts"] = await copy_outputs(session, output_dir, required, custom_span)
            except Exception as exc:  # noqa: BLE001 - sandbox set-up or copy failed
                log.exception("sandbox failed")
                if result["error"] is None:
                    result["error"] = describe_error(exc)
    finally:
        if session is not None:
            try:
                await sandbox.delete(session)
            except Exception:  # noqa: BLE001
                log.warning("could not delete the sandbox workspace", exc_info=True)
        try:
            flush_traces()
        except Exception:  # noqa: BLE001
            pass
        processor.shutdown()
        await client.close()
        if transport.retried:
            log.warning("waited out %d answer(s) 429/503 from the model endpoint", transport.retried)
    return result


class JailedSandboxSession(UnixLocalSandboxSession):
    """The SDK's unix_local session with every command it spawns (exec_command, PTY sessions,
    writes run as a user) wrapped in bubblewrap. The SDK routes all of them through
    `_confined_exec_command`, its own confinement hook (sandbox-exec on macOS, nothing on Linux)."""

    bwrap: str = ""

    def _confined_exec_command(self, *, command_parts, workspace_root, env):  # noqa: ANN001, ANN202
        return jail.wrap(self.bwrap, command_parts, workspace=Path(workspace_root).resolve())


class JailedSandboxClient(UnixLocalSandboxClient):
    """UnixLocalSandboxClient whose sessions run their commands in the jail (runs.jail)."""

    def __init__(self, *, bwrap: str) -> None:
        super().__init__()
        self.bwrap = bwrap

    def _jailed(self, session):  # noqa: ANN001, ANN202
        inner = JailedSandboxSession.from_state(session._inner.state)
        inner.bwrap = self.bwrap
        return self._wrap_session(inner, instrumentation=self._instrumentation)

    async def create(self, *, snapshot=None, manifest=None, options=None):  # noqa: ANN001, ANN201
        # The parent makes the workspace (a temp dir) and the session state; nothing has run yet.
        return self._jailed(await super().create(snapshot=snapshot, manifest=manifest, options=options))

    async def resume(self, state):  # noqa: ANN001, ANN201
        return self._jailed(await super().resume(state))


def sandbox_client(spec: dict[str, Any] | None) -> UnixLocalSandboxClient:
    """The jailed client the runner asked for; unconfined only when it said so explicitly."""
    spec = spec or {}
    if spec.get("bwrap"):
        return JailedSandboxClient(bwrap=str(spec["bwrap"]))
    if spec.get("unconfined") is True:
        log.warning("the agent's shell runs unconfined (%s=1)", jail.UNCONFINED_SETTING)
        return UnixLocalSandboxClient()
    raise RuntimeError("The job names no sandbox: refusing to run the agent's commands unconfined.")


async def copy_outputs(session, output_dir: Path, required: list[str], custom_span) -> list[str]:  # noqa: ANN001
    """Copy outputs/<name> out of the sandbox: required artifacts first, then other top-level files."""
    from agents.sandbox.files import EntryKind

    try:
        listed = await session.ls(Path("outputs"))
    except Exception:  # noqa: BLE001 - no outputs directory
        listed = []
    names = jail.output_names(required, [Path(entry.path).name for entry in listed if entry.kind == EntryKind.FILE])

    copied: list[str] = []
    for name in names:
        try:
            with custom_span("artifact_write", {"tool.name": "artifact_write", "tool.input": {"filename": name}}):
                handle = await session.read(Path("outputs") / name)
                with handle:
                    content = handle.read(MAX_OUTPUT_BYTES + 1)
                if len(content) > MAX_OUTPUT_BYTES:
                    log.warning("outputs/%s is larger than %d bytes: skipped", name, MAX_OUTPUT_BYTES)
                    continue
                (output_dir / name).write_bytes(content)
                copied.append(name)
        except Exception:  # noqa: BLE001 - a missing artifact is reported by the validators
            continue
    return copied


def describe_error(exc: BaseException) -> dict[str, str]:
    message = str(exc) or repr(exc)
    cause = exc.__cause__ or exc.__context__
    if cause is not None and str(cause) and str(cause) not in message:
        message = f"{message} (caused by {type(cause).__name__}: {cause})"
    return {"type": type(exc).__name__, "message": message[:4000]}


def _not_dumpable() -> None:
    """Keep the agent's own shell from reading this process's memory (where the API key is)
    through /proc/<pid>/mem when both run as the same non-root user."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(4, 0)  # PR_SET_DUMPABLE
    except Exception:  # noqa: BLE001 - not Linux
        pass


def main() -> int:
    _not_dumpable()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    job = json.loads(sys.stdin.read())
    result_path = Path(job["result_path"])
    try:
        result = asyncio.run(run_job(job))
    except Exception as exc:  # noqa: BLE001 - the parent reads the result file, not a traceback
        log.exception("agent child crashed")
        result = {"final_answer": "", "error": describe_error(exc), "artifacts": [], "agent_seconds": None,
                  "model": job.get("model")}
    result_path.write_text(json.dumps(result, ensure_ascii=False), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
