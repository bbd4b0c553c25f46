"""From a HALO handoff to a proposed next harness: where handoffs come from, and "Draft from handoff".

- `latest_handoff_for(harness)`: the Markdown of the newest handoff HALO wrote for a cycle of
  `harness` (reviews.Optimization.handoff), or None; then the engineer pastes one into the editor.
- `draft_from_handoff(...)`: asks the analysis model (settings.OPENAI_ANALYSIS_MODEL through
  loopsite.llm, Responses API) to edit the system prompt and tool policy as the handoff's
  recommendations say. The answer must be JSON `{system_prompt, tool_policy, rationale}`; on
  output that does not fit, the model is asked once to repair it, then the draft fails with a
  message that says why. Synchronous, with a short timeout: it runs inside the request.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from loopsite.llm import endpoint, openai_client
from reviews.validation import SchemaError, parse_json

log = logging.getLogger(__name__)

# Readable markers: they say in a log what the request was for, and tell the offline
# stand-in model which role to play (loopsite/standin/harness_drafter.py).
DRAFT_MARKER = "Loopsite task: draft-harness-from-handoff"
REPAIR_MARKER = "Loopsite task: repair-json"  # shared with reviews/generation.py and the stand-in's faults

DRAFT_TIMEOUT_SECONDS = 45.0  # per model call; the draft runs inside the web request
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


def latest_handoff_for(harness) -> str | None:
    """The handoff of the newest successful HALO run (reviews.Optimization) over a cycle of `harness`, or None."""
    from reviews.models import Optimization

    row = (
        Optimization.objects.filter(cycle__harness=harness, status=Optimization.Status.SUCCEEDED)
        .exclude(handoff="").order_by("-finished_at", "-pk").only("handoff").first()
    )
    return row.handoff if row is not None and row.handoff.strip() else None


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
        except json.JSONDecodeError:
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


def draft_from_handoff(*, version: str, system_prompt: str, tool_policy: dict[str, Any], handoff: str) -> DraftProposal:
    """Ask the analysis model for the edited prompt and policy; one repair request on unusable output."""
    if not (handoff or "").strip():
        raise DraftError("There is no handoff to draft from: paste one into the handoff panel.")
    model, ep = settings.OPENAI_ANALYSIS_MODEL, endpoint()
    messages = [{"role": "user", "content": draft_prompt(version=version, system_prompt=system_prompt,
                                                           tool_policy=tool_policy, handoff=handoff)}]
    raw = _respond(model=model, messages=messages)
    try:
        proposal = validate_proposal(parse_json(raw))
    except SchemaError as first:
        log.warning("draft from handoff: output not usable (%s); asking once for a repair", first)
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
