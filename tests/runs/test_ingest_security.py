"""Markup inside imported span attributes reaches every page as text."""

import json

import pytest

from runs.ingest import lines_from_otlp_json, store_lines
from runs.models import Agent, Run

from .otlp_builders import request, span
from .ui_builders import XSS, assert_inert

pytestmark = pytest.mark.django_db

EVIL = XSS + '"><svg onload=alert(2)>'


def test_script_tags_and_event_handlers_in_attributes_stay_inert(client_for, engineer, reviewer):
    agent, _ = Agent.create_external(by=engineer, name="Bot")
    trace, root, llm, tool = "9" * 32, "a" * 16, "b" * 16, "c" * 16
    document = request([
        span(trace, root, EVIL, {"openinference.span.kind": "AGENT", "input.value": EVIL, "output.value": EVIL,
                                 EVIL: EVIL}),
        span(trace, llm, EVIL, {
            "openinference.span.kind": "LLM", "llm.model_name": EVIL,
            "llm.input_messages.0.message.role": EVIL, "llm.input_messages.0.message.content": EVIL,
            "llm.output_messages.0.message.role": "assistant",
            "llm.output_messages.0.message.tool_calls.0.tool_call.function.name": EVIL,
            "llm.output_messages.0.message.tool_calls.0.tool_call.function.arguments": EVIL,
        }, parent=root, error=EVIL),
        span(trace, tool, "tool", {"openinference.span.kind": "TOOL", "tool.name": EVIL, "input.value": EVIL,
                                   "output.value": json.dumps({"html": EVIL})}, parent=root),
    ], service=EVIL, version=EVIL)
    lines, rejected = lines_from_otlp_json(document)
    assert not rejected
    store_lines(agent=agent, lines=lines)
    run = Run.objects.get(agent=agent)
    client = client_for(reviewer)
    pages = [run.get_absolute_url(), f"/runs/?agent={agent.slug}", "/runs/", f"/agents/{agent.slug}/", "/agents/",
             f"/harnesses/{run.harness.version}/", "/harnesses/"]
    pages += [f"/runs/{run.pk}/spans/{span_id}/" for span_id in (root, llm, tool)]
    for url in pages:
        response = client.get(url)
        assert response.status_code == 200, url
        html = response.content.decode()
        assert_inert(html)
        assert "<svg onload" not in html, url
    detail = client.get(f"/runs/{run.pk}/spans/{llm}/").content.decode()
    assert "&lt;script&gt;alert" in detail  # shown, as text
