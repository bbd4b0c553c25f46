"""The fallback role: answers any request no other role claims, in a fixed, readable way."""

from __future__ import annotations

from .conversation import Conversation, Reply

NAME = "generic"


def matches(conv: Conversation) -> bool:
    return True


def reply(conv: Conversation) -> Reply:
    asked = " ".join(conv.last_user_text.split())
    if len(asked) > 200:
        asked = asked[:197] + "..."
    return Reply(text=(
        "Offline stand-in model: no role rule matched this request, so this is a fixed reply.\n\n"
        f"Request received: {asked or '(no user message)'}"
    ))
