"""Which role answers a conversation.

Each role is a module with `NAME`, `matches(conv) -> bool` and `reply(conv) -> Reply`.
`ROLES` is checked in order and the first match answers; `generic` comes last and
matches everything. To add a role (insight writer, eval generator, rubric judge,
HALO agent), write its module and insert it above `generic`.
"""

from __future__ import annotations

from types import ModuleType

from . import analyst, eval_generator, generic, insight_writer, judge
from . import halo_agent
from . import harness_drafter
from .conversation import Conversation

ROLES: list[ModuleType] = [
    analyst,  # the request offers the sandbox shell tool (exec_command)
    insight_writer,  # the first user message carries "Loopsite task: llm-insights"
    eval_generator,  # the first user message carries "Loopsite task: eval-generation"
    judge,  # promptfoo's grading system prompt, or <Output> and <Rubric> blocks
    halo_agent,  # the request offers HALO's trace tools (get_dataset_overview, query_traces, ...)
    harness_drafter,  # the first user message carries "Loopsite task: draft-harness-from-handoff"
    generic,
]


def choose_role(conv: Conversation) -> ModuleType:
    for role in ROLES:
        if role.matches(conv):
            return role
    return generic
