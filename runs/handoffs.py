"""From a HALO handoff to a proposed next harness: where handoffs come from, and "Draft from handoff".

- `latest_handoff_for(harness)`: the Markdown of the newest handoff HALO wrote for a cycle of
  `harness` (read by reviews/, which runs HALO), or None; then the engineer pastes one into the editor.
- `draft_from_handoff(...)`: asks the analysis model (settings.OPENAI_ANALYSIS_MODEL through
  loopsite.llm, Responses API) to edit the system prompt and tool policy as the handoff's
  recommendations say. The answer must be JSON `{system_prompt, tool_policy, rationale}`; on
  output that does not fit, the model is asked once to repair it, then the draft fails with a
  message that says why.
- `request_draft(...)` queues it as a HarnessDraft row for the worker (runs/tasks.py: draft_harness),
  `run_draft(draft=...)` is the task's body: never a model call inside a web request. The editor
  polls the row's progress and fills itself in with the proposal once it is there.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.utils import timezone

from loopsite.hooks import Hook
from loopsite.llm import SchemaError, endpoint, openai_client, parse_json

log = logging.getLogger(__name__)

# Readable markers: they say in a log what the request was for, and tell the offline
# stand-in model which role to play (loopsite/standin/harness_drafter.py).
DRAFT_MARKER = "Loopsite task: draft-harness-from-handoff"
REPAIR_MARKER = "Loopsite task: repair-json"  # shared with reviews/generation.py and the stand-in's faults

DRAFT_TIMEOUT_SECONDS = 45.0  # per model call (the draft runs in the worker)
MAX_HANDOFF_CHARS = 60_000
MAX_PROMPT_CHARS = 100_000


class DraftError(Exception):
    """No usable proposal; the message is shown in the editor."""

    def __init__(self, message: str, *, raw_output: str = ""):
        super().__init__(message)
        self.raw_output = raw_output


@dataclass(frozen=True)
class DraftProposal:
    system_prompt: str
    tool_policy: dict[str, Any]
    rationale: str
    model_name: str
    endpoint: str
    used_standin: bool

    def provenance(self) -> dict[str, Any]:
        return {"model": self.model_name, "endpoint": self.endpoint, "used_standin": self.used_standin,
                "rationale": self.rationale}


# --- where handoffs come from ------------------------------------------------------------------


# The handoff of the newest successful HALO run over a cycle of a harness, or None: provided by reviews/
# (which runs HALO) when it loads.
latest_handoff_for = Hook(default=lambda harness: None)


# --- the prompt ---------------------------------------------------------------------------------


def draft_prompt(*, version: str, system_prompt: str, tool_policy: dict[str, Any], handoff: str) -> str:
    current = {"version": version, "system_prompt": system_prompt, "tool_policy": tool_policy}
    clipped = handoff if len(handoff) <= MAX_HANDOFF_CHARS else (
        handoff[:MAX_HANDOFF_CHARS] + f"\n[... {len(handoff) - MAX_HANDOFF_CHARS} more characters]"
    )
    return f"""{DRAFT_MARKER}
You maintain the harness (system prompt and tool policy) of a financial diligence analyst agent.
Below are the current harness and the handoff an optimizer (HALO) wrote after analysing its traces, human feedback and eval results.
Propose the next harness version by applying the handoff's top recommendations, in particular the "## Top 3 changes to implement first" section and the `top_priorities` in its machine-readable summary.
Rules:
- Keep everything in the current system prompt and tool policy that the recommendations do not ask to change; edit, do not rewrite.
- When a recommendation quotes a sentence to add to the prompt, add it verbatim.
- Change the tool policy only where a recommendation asks for it; keep its keys and structure otherwise.
- Do not add rules the handoff does not recommend.
Return JSON only: an object with keys `system_prompt` (the whole new prompt, a string), `tool_policy` (the whole new policy, a JSON object) and `rationale` (a short string: which recommendations you applied and which you left for an engineer, and why).

Current harness:
{json.dumps(current, indent=2, ensure_ascii=False)}

<handoff>
{clipped}
</handoff>
"""


def repair_prompt(error: SchemaError) -> str:
    return f"""{REPAIR_MARKER}
Your previous answer (above) could not be used: {error}
Return the corrected JSON only, for the same task and with the same schema: an object with `system_prompt`, `tool_policy` and `rationale`; no commentary, no Markdown fences."""


def validate_proposal(parsed: Any) -> dict[str, Any]:
    """{system_prompt: non-empty str, tool_policy: object (or a JSON string of one), rationale: str}."""
    if not isinstance(parsed, dict):
        raise SchemaError(f"Expected a JSON object with `system_prompt`, `tool_policy` and `rationale`, got {type(parsed).__name__}.")
    problems = []
    prompt = parsed.get("system_prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        problems.append("`system_prompt` must be a non-empty string")
    elif len(prompt) > MAX_PROMPT_CHARS:
        problems.append(f"`system_prompt` is longer than {MAX_PROMPT_CHARS} characters")
    policy = parsed.get("tool_policy")
    if isinstance(policy, str):
        try:
            policy = json.loads(policy)
        except ValueError:  # JSONDecodeError, or a number too long to convert
            pass
    if not isinstance(policy, dict):
        problems.append("`tool_policy` must be a JSON object")
    rationale = parsed.get("rationale", "")
    if not isinstance(rationale, str):
        problems.append("`rationale` must be a string")
    if problems:
        raise SchemaError("; ".join(problems) + ".")
    return {"system_prompt": prompt.strip("\n"), "tool_policy": policy, "rationale": rationale.strip()}


# --- calling the model -----------------------------------------------------------------------------


def _respond(*, model: str, messages: list[dict[str, str]]) -> str:
    import openai

    client = openai_client(timeout=DRAFT_TIMEOUT_SECONDS, max_retries=0)
    try:
        response = client.responses.create(model=model, input=messages)
    except openai.APITimeoutError as exc:
        raise DraftError(f"The analysis model did not answer within {DRAFT_TIMEOUT_SECONDS:.0f} s. Try again, "
                         "or edit the prompt by hand.") from exc
    except openai.OpenAIError as exc:
        raise DraftError(f"The model endpoint {endpoint().base_url} failed ({type(exc).__name__}): {exc}") from exc
    return response.output_text or ""


NO_HANDOFF = "There is no handoff to draft from: paste one into the handoff panel."


def draft_from_handoff(*, version: str, system_prompt: str, tool_policy: dict[str, Any], handoff: str,
                       progress: Callable[[str], Any] | None = None) -> DraftProposal:
    """Ask the analysis model for the edited prompt and policy; one repair request on unusable output.
    `progress(text)` hears what it is doing (the worker shows it in the editor)."""
    if not (handoff or "").strip():
        raise DraftError(NO_HANDOFF)
    say = progress or (lambda text: None)
    model, ep = settings.OPENAI_ANALYSIS_MODEL, endpoint()
    messages = [{"role": "user", "content": draft_prompt(version=version, system_prompt=system_prompt,
                                                           tool_policy=tool_policy, handoff=handoff)}]
    say(f"Asking the analysis model ({model}) for a proposal…")
    raw = _respond(model=model, messages=messages)
    try:
        proposal = validate_proposal(parse_json(raw))
    except SchemaError as first:
        log.warning("draft from handoff: output not usable (%s); asking once for a repair", first)
        say(f"The proposal was not usable ({str(first)[:120]}); asking the model once to correct it…")
        messages += [{"role": "assistant", "content": raw}, {"role": "user", "content": repair_prompt(first)}]
        repaired = _respond(model=model, messages=messages)
        try:
            proposal = validate_proposal(parse_json(repaired))
        except SchemaError as second:
            raise DraftError(
                f"The analysis model's proposal was not usable: {first} It was asked once to correct it, and the "
                f"corrected answer was not usable either: {second} Nothing in the editor was changed.",
                raw_output=f"=== first output ===\n{raw}\n\n=== output after the repair request ===\n{repaired}",
            ) from second
    return DraftProposal(**proposal, model_name=model, endpoint=ep.base_url, used_standin=ep.is_standin)


# --- as a task -----------------------------------------------------------------------------------------


def request_draft(*, base, version: str, system_prompt: str, tool_policy: dict[str, Any], handoff: str, user):
    """Queue a draft of the next version of `base` from the editor's prompt and policy and `handoff`."""
    from django.db import transaction

    from .models import HarnessDraft

    if not (handoff or "").strip():
        raise DraftError(NO_HANDOFF)
    with transaction.atomic():
        draft = HarnessDraft.objects.create(
            base=base, version=version, input_prompt=system_prompt, input_policy=tool_policy, handoff=handoff,
            requested_by=user, progress="Queued: waiting for a worker.", heartbeat_at=timezone.now())
        HarnessDraft.enqueue_work(draft.pk)
    return draft


def run_draft(*, draft) -> None:
    """The task's body for a claimed HarnessDraft: ask the model, store the proposal (and audit it) or the reason.
    `report`, `fail` and `finish` are fenced by the attempt `draft.claim()` took."""
    from loopsite.models import AuditEvent

    try:
        proposal = draft_from_handoff(version=draft.version, system_prompt=draft.input_prompt,
                                      tool_policy=draft.input_policy, handoff=draft.handoff,
                                      progress=draft.report)
    except DraftError as exc:
        draft.fail(str(exc), raw_output=exc.raw_output, progress="Failed.")
        return
    except Exception as exc:  # noqa: BLE001 - any other failure is shown in the editor, not lost in a log
        log.exception("draft %s failed", draft.pk)
        draft.fail(f"The draft failed ({type(exc).__name__}): {exc}", progress="Failed.")
        return

    def audit() -> None:
        AuditEvent.record(
            actor=draft.requested_by, action="harness.draft", obj=draft.base,
            summary=f"Drafted a next version of {draft.base.version} from a handoff with {proposal.model_name}",
            after={**proposal.provenance(), "draft": draft.pk, "system_prompt": proposal.system_prompt,
                   "tool_policy": proposal.tool_policy},
        )

    draft.finish(store=audit, progress="Done: the proposal is in the editor.",
                 proposed_prompt=proposal.system_prompt, proposed_policy=proposal.tool_policy,
                 rationale=proposal.rationale, model_name=proposal.model_name, endpoint=proposal.endpoint,
                 used_standin=proposal.used_standin)
