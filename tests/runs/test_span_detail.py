import json

import pytest
from django.urls import reverse

from .ui_builders import XSS, assert_inert, make_run, small_trace, span_line, store_spans

pytestmark = pytest.mark.django_db


def _url(run, span_id):
    return reverse("runs:span-detail", args=[run.pk, span_id])


def test_it_requires_login(client):
    run = make_run()
    small_trace(run)
    response = client.get(_url(run, "l1"))
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


def test_it_requires_a_role(client_for, outsider):
    run = make_run()
    small_trace(run)
    assert client_for(outsider).get(_url(run, "l1")).status_code == 403


def test_an_unknown_span_is_404(client_for, reviewer):
    run = make_run()
    small_trace(run)
    assert client_for(reviewer).get(_url(run, "nope")).status_code == 404


def test_a_span_of_another_run_is_404(client_for, reviewer):
    run, other = make_run(), make_run()
    small_trace(other)
    assert client_for(reviewer).get(_url(run, "l1")).status_code == 404


def test_htmx_gets_the_fragment_only(client_for, reviewer):
    run = make_run()
    small_trace(run)
    response = client_for(reviewer).get(_url(run, "l1"), headers={"HX-Request": "true"})
    assert response.status_code == 200
    body = response.content.decode()
    assert "<html" not in body
    assert body.strip().startswith('<div class="span-body" data-detail-of="l1"')


def test_without_htmx_it_is_a_full_page(client_for, reviewer):
    run = make_run()
    small_trace(run)
    response = client_for(reviewer).get(_url(run, "l1"))
    body = response.content.decode()
    assert "<html" in body
    assert 'data-detail-of="l1"' in body
    assert f'href="{run.get_absolute_url()}#span-l1"' in body


def test_llm_spans_show_messages_and_tokens(client_for, reviewer):
    run = make_run()
    small_trace(run)
    body = client_for(reviewer).get(_url(run, "l1"), headers={"HX-Request": "true"}).content.decode()
    assert "Input messages (1)" in body and "How long is the runway?" in body
    assert "Output messages (1)" in body and "Let me read p_and_l.csv" in body
    assert "Prompt 120 · Completion 30 · Total 150" in body
    assert "gpt-test" in body


def test_tool_spans_show_command_and_output(client_for, reviewer):
    run = make_run()
    small_trace(run)
    body = client_for(reviewer).get(_url(run, "t1"), headers={"HX-Request": "true"}).content.decode()
    assert "exec_command" in body
    assert "&quot;cmd&quot;: &quot;cat data/financials/p_and_l.csv&quot;" in body  # JSON input, indented
    assert "runway_months,11" in body


def test_message_lists_with_parts_and_tool_calls(client_for, reviewer):
    run = make_run()
    messages = [
        {"role": "user", "content": [{"type": "input_text", "text": "part one"}, {"type": "input_text", "text": "part two"}]},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "function": {"name": "exec_command", "arguments": "{\"cmd\": \"ls data\"}"}}]},
        {"type": "function_call_output", "call_id": "c1", "output": "board_deck.md"},
    ]
    store_spans(run, [span_line(run, "g1", kind="LLM", attributes={"llm.input_messages": json.dumps(messages)})])
    body = client_for(reviewer).get(_url(run, "g1"), headers={"HX-Request": "true"}).content.decode()
    assert "part one\n\npart two" in body
    assert "<code>exec_command</code>" in body and "&quot;cmd&quot;: &quot;ls data&quot;" in body
    assert "function_call_output" in body and "board_deck.md" in body


def test_errors_and_other_attributes_are_shown(client_for, reviewer):
    run = make_run()
    store_spans(run, [span_line(run, "e1", kind="SPAN", error="it broke", attributes={"custom.key": "custom value"})])
    body = client_for(reviewer).get(_url(run, "e1"), headers={"HX-Request": "true"}).content.decode()
    assert "it broke" in body and "badge-fail" in body
    assert "custom.key" in body and "custom value" in body


def test_span_attributes_are_inert(client_for, reviewer):
    run = make_run()
    messages = [{"role": XSS, "content": XSS, "name": XSS}]
    store_spans(run, [span_line(run, "x1", name=XSS, kind="LLM", error=XSS, attributes={
        "llm.input_messages": json.dumps(messages), "llm.output_messages": XSS, "tool.name": XSS,
        "input.value": XSS, "output.value": XSS, "llm.model_name": XSS, XSS: XSS,
    })])
    for headers in ({"HX-Request": "true"}, {}):
        body = client_for(reviewer).get(_url(run, "x1"), headers=headers).content.decode()
        assert_inert(body)
        assert "<script>alert" not in body
        assert "&lt;script&gt;alert" in body


def test_very_long_values_are_clipped(client_for, reviewer):
    run = make_run()
    store_spans(run, [span_line(run, "big", kind="TOOL", attributes={"output.value": "x" * 150_000})])
    body = client_for(reviewer).get(_url(run, "big"), headers={"HX-Request": "true"}).content.decode()
    assert "50,000 more characters" in body
    assert "x" * 150_000 not in body
