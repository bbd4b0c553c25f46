"""The stand-in speaks the Responses and Chat Completions protocols as openai==2.32.0 reads them."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from loopsite.standin.server import serve_in_thread

EXEC_COMMAND_SCHEMA = {
    "type": "object",
    "properties": {"cmd": {"type": "string"}, "workdir": {"type": ["string", "null"]}},
    "required": ["cmd"],
}
QUESTION = "Answer this diligence question using only the mounted dataroom:\n\nWhat is the runway?\n"


@pytest.fixture
def client(standin_server):
    return OpenAI(base_url=standin_server, api_key="standin-test", max_retries=0, timeout=10)


def responses_tools():
    return [{"type": "function", "name": "exec_command", "description": "Run a shell command.",
             "parameters": EXEC_COMMAND_SCHEMA, "strict": False}]


def chat_tools():
    return [{"type": "function", "function": {"name": "exec_command", "description": "Run a shell command.",
                                              "parameters": EXEC_COMMAND_SCHEMA}}]


def test_it_answers_a_plain_responses_request(client):
    response = client.responses.create(model="my-model", input="Say hello.")
    assert response.status == "completed"
    assert response.model == "my-model"
    assert "stand-in" in response.output_text
    assert response.usage.input_tokens > 0 and response.usage.output_tokens > 0
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens


def test_it_streams_responses_events_ending_with_completed(client):
    events = list(client.responses.create(model="m", input="Say hello.", stream=True))
    types = [event.type for event in events]
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types[-1] == "response.completed"
    assert "response.output_item.added" in types and "response.output_text.delta" in types
    assert [event.sequence_number for event in events] == list(range(len(events)))
    deltas = "".join(event.delta for event in events if event.type == "response.output_text.delta")
    assert deltas == events[-1].response.output_text


def test_it_calls_the_shell_tool_when_offered_it(client):
    response = client.responses.create(model="agent-model", instructions="Be careful.", input=QUESTION,
                                       tools=responses_tools())
    [call] = response.output
    assert call.type == "function_call" and call.name == "exec_command"
    assert json.loads(call.arguments) == {"cmd": "cat data/manifest.json"}
    assert call.call_id.startswith("call_")


def test_it_streams_a_tool_call(client):
    events = list(client.responses.create(model="m", input=QUESTION, tools=responses_tools(), stream=True))
    types = [event.type for event in events]
    assert "response.function_call_arguments.done" in types
    done = next(event for event in events if event.type == "response.function_call_arguments.done")
    assert json.loads(done.arguments)["cmd"] == "cat data/manifest.json"
    assert events[-1].response.output[0].name == "exec_command"


def test_it_continues_from_a_tool_output(client):
    first = client.responses.create(model="m", input=QUESTION, tools=responses_tools())
    call = first.output[0]
    output = 'Chunk ID: 1\nWall time: 0.01 seconds\nProcess exited with code 0\nOutput:\n{"files": ["runway.md"]}\n'
    second = client.responses.create(model="m", input=[
        {"role": "user", "content": QUESTION},
        {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": output},
    ], tools=responses_tools())
    assert json.loads(second.output[0].arguments)["cmd"].startswith("grep -rciE 'runway")


def test_it_answers_chat_completions_with_and_without_streaming(client):
    completion = client.chat.completions.create(model="chat-model", messages=[{"role": "user", "content": "Hi"}])
    assert completion.model == "chat-model"
    assert completion.choices[0].finish_reason == "stop"
    assert "stand-in" in completion.choices[0].message.content
    assert completion.usage.total_tokens > 0

    chunks = list(client.chat.completions.create(model="chat-model", messages=[{"role": "user", "content": "Hi"}],
                                                 stream=True, stream_options={"include_usage": True}))
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == completion.choices[0].message.content
    assert chunks[-1].usage.total_tokens == completion.usage.total_tokens


def test_it_makes_chat_tool_calls_with_and_without_streaming(client):
    messages = [{"role": "system", "content": "Rules."}, {"role": "user", "content": QUESTION}]
    completion = client.chat.completions.create(model="m", messages=messages, tools=chat_tools())
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls
    assert call.function.name == "exec_command"
    assert json.loads(call.function.arguments) == {"cmd": "cat data/manifest.json"}

    chunks = list(client.chat.completions.create(model="m", messages=messages, tools=chat_tools(), stream=True))
    deltas = [chunk.choices[0].delta for chunk in chunks if chunk.choices]
    calls = [tool_call for delta in deltas for tool_call in (delta.tool_calls or [])]
    assert calls[0].id.startswith("call_") and calls[0].function.name == "exec_command"
    assert "".join(tool_call.function.arguments or "" for tool_call in calls) == call.function.arguments
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_it_lists_models(client):
    assert "loopsite-standin" in [model.id for model in client.models.list()]


def test_the_same_request_gets_the_same_bytes(standin_server):
    body = {"model": "m", "input": QUESTION, "tools": responses_tools()}
    first = httpx.post(f"{standin_server}/responses", json=body)
    second = httpx.post(f"{standin_server}/responses", json=body)
    assert first.status_code == 200
    assert first.content == second.content


def test_it_waits_the_configured_delay_per_model_call():
    server, thread = serve_in_thread("127.0.0.1", 0, delay=1.0)  # long enough that a loaded machine cannot blur it
    try:
        started = time.monotonic()
        response = httpx.post(f"{server.base_url}/responses", json={"model": "m", "input": "hi"})
        assert response.status_code == 200
        assert time.monotonic() - started >= 1.0
        started = time.monotonic()
        httpx.get(f"{server.base_url}/models")
        assert time.monotonic() - started < 1.0  # not a model call: no delay
    finally:
        server.shutdown()
        server.server_close()


def test_the_command_line_serves_and_reads_the_delay_from_the_environment():
    root = Path(__file__).resolve().parents[2]
    env = {"PATH": os.environ.get("PATH", ""), "LOOPSITE_STANDIN_DELAY": "0.2"}
    process = subprocess.Popen([sys.executable, "-m", "loopsite.standin", "--port", "0"], cwd=root, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        banner = process.stdout.readline()
        assert "delay 0.2s" in banner
        base_url = banner.split("listening on ")[1].split()[0]
        response = httpx.post(f"{base_url}/chat/completions",
                              json={"model": "m", "messages": [{"role": "user", "content": "hi"}]}, timeout=10)
        assert response.status_code == 200
        logged = ""
        for _ in range(50):  # the request line is logged just after the reply is sent
            line = process.stderr.readline()
            logged += line
            if not line or "POST /v1/chat/completions 200" in line:
                break
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=10)
    assert "POST /v1/chat/completions 200" in logged + stderr
