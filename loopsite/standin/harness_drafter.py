"""The harness drafter: "Draft from handoff" on the new-version page, by readable rules.

Claims a request whose first user message carries `MARKER` (runs/handoffs.py). It reads the
current harness (the JSON after the line "Current harness:") and the handoff (between
`<handoff>` and `</handoff>`), then:

1. takes the handoff's top recommendations: the "## Top 3 changes to implement first" section,
   and the first three entries of the `top_priorities` list in its fenced JSON block;
2. a harness rule (rules.py) is *named* there when its id (`parent_account_rollup`) or its
   title appears, or its sentence is quoted; in `top_priorities` also when an entry's
   `rule_id` is the rule's id or its `prompt_sentence` is the rule's sentence;
3. each named rule the prompt does not already state (its triggers are absent) gets its
   sentence added as a bullet under a "Diligence rules:" heading at the end of the system
   prompt (the heading is reused when the prompt has one), in the order of rules.RULES;
4. everything else stays as it was: the rest of the prompt and the whole tool policy.

It answers JSON `{system_prompt, tool_policy, rationale}`; the rationale names the rules added,
those already stated, and the top recommendations that name no known rule. A repair request
(REPAIR_MARKER in the last user message) gets the same answer, rebuilt from the first message.
"""

from __future__ import annotations

import json
import re
from typing import Any

from .conversation import Conversation, Reply
from .rules import RULES, Rule
from .textrules import json_after

NAME = "harness_drafter"
PRODUCES_JSON = True
MARKER = "Loopsite task: draft-harness-from-handoff"  # as in runs/handoffs.py
HEADING = "Diligence rules:"
TOP_SECTION = "## Top 3 changes to implement first"
TOP_COUNT = 3


def matches(conv: Conversation) -> bool:
    return MARKER in conv.first_user_text


def reply(conv: Conversation) -> Reply:
    text = conv.first_user_text
    current = json_after(text, "Current harness:")
    handoff = _between(text, "<handoff>", "</handoff>")
    if not isinstance(current, dict) or not isinstance(current.get("system_prompt"), str):
        return Reply(text=json.dumps({"error": "The prompt has no `Current harness:` JSON object with a system_prompt."}))
    return Reply(text=json.dumps(draft(current, handoff), indent=2, ensure_ascii=False))


def draft(current: dict[str, Any], handoff: str) -> dict[str, Any]:
    prompt = current["system_prompt"]
    policy = current.get("tool_policy") if isinstance(current.get("tool_policy"), dict) else {}
    top_text = _section(handoff, TOP_SECTION)
    priorities = top_priorities(handoff)[:TOP_COUNT]
    named = [rule for rule in RULES if _named_in_text(rule, top_text) or any(_named_in_priority(rule, p) for p in priorities)]
    already = [rule for rule in named if rule.is_on(prompt)]
    to_add = [rule for rule in named if rule not in already]
    unmatched = [str(p.get("title") or "") for p in priorities
                 if isinstance(p, dict) and p.get("title") and not any(_named_in_priority(rule, p) for rule in RULES)]

    rationale = []
    if to_add:
        rationale.append("Added to the system prompt under \"" + HEADING + "\" the rule(s) named in the handoff's top "
                         "recommendations: " + ", ".join(f"`{rule.id}` ({rule.title})" for rule in to_add) + ".")
    else:
        rationale.append("No rule sentence added: the top recommendations name no known rule the prompt lacks.")
    if already:
        rationale.append("Already stated in the prompt, left as is: " + ", ".join(f"`{rule.id}`" for rule in already) + ".")
    if unmatched:
        rationale.append("Left for an engineer (no known rule): " + "; ".join(unmatched) + ".")
    rationale.append("The tool policy is unchanged.")
    return {"system_prompt": add_rules(prompt, to_add), "tool_policy": policy, "rationale": " ".join(rationale)}


def add_rules(prompt: str, rules: list[Rule]) -> str:
    """Append each rule's sentence as a bullet under HEADING (after the heading's last bullet if it exists)."""
    if not rules:
        return prompt
    bullets = [f"- {rule.sentence}" for rule in rules]
    lines = prompt.rstrip("\n").split("\n")
    if HEADING in (line.strip() for line in lines):
        at = next(i for i, line in enumerate(lines) if line.strip() == HEADING) + 1
        while at < len(lines) and lines[at].startswith("- "):
            at += 1
        return "\n".join(lines[:at] + bullets + lines[at:])
    return "\n".join(lines) + "\n\n" + HEADING + "\n" + "\n".join(bullets)


def _named_in_text(rule: Rule, text: str) -> bool:
    lowered = text.lower()
    return bool(text) and (rule.id in text or rule.title.lower() in lowered or _squash(rule.sentence) in _squash(text))


def _named_in_priority(rule: Rule, priority: Any) -> bool:
    if not isinstance(priority, dict):
        return False
    if priority.get("rule_id") == rule.id:
        return True
    if isinstance(priority.get("prompt_sentence"), str) and _squash(priority["prompt_sentence"]) == _squash(rule.sentence):
        return True
    return _named_in_text(rule, str(priority.get("title") or ""))


def top_priorities(handoff: str) -> list:
    """`top_priorities` from the first fenced JSON block that has it; [] if none."""
    for block in re.findall(r"```(?:json)?[ \t]*\n(.*?)```", handoff or "", flags=re.DOTALL | re.IGNORECASE):
        try:
            value = json.loads(block)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict) and isinstance(value.get("top_priorities"), list):
            return value["top_priorities"]
    return []


def _section(markdown: str, heading: str) -> str:
    """The text under `heading` up to the next heading of the same or a higher level."""
    match = re.search(rf"(?m)^{re.escape(heading)}\s*$", markdown or "")
    if match is None:
        return ""
    rest = markdown[match.end():]
    following = re.search(r"(?m)^#{1,2} ", rest)
    return rest[: following.start()] if following else rest


def _between(text: str, start: str, end: str) -> str:
    begin = text.find(start)
    if begin < 0:
        return ""
    begin += len(start)
    finish = text.find(end, begin)
    return text[begin:] if finish < 0 else text[begin:finish]


def _squash(text: str) -> str:
    """Lower case, whitespace runs collapsed, curly quotes made straight: for quoting checks."""
    text = text.replace("“", '"').replace("”", '"').replace("’", "'")
    return " ".join(text.lower().split())
