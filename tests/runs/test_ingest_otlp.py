"""POST /v1/traces: the real OpenTelemetry SDK exporters against the live server, and the edge cases by hand."""

import gzip
import json

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Status, StatusCode

from runs.models import Agent, Run, Span

from .otlp_builders import openinference_trace, request, span

URL = "/v1/traces"


@pytest.fixture
def agent_token(engineer):
    agent, token = Agent.create_external(by=engineer, name="Support bot")
    return agent, token


def sdk_spans(version="2.0.0"):
    """One trace made with the real SDK: agent → LLM (OpenInference attributes) and a failing tool."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "support-bot", "service.version": version}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("test-agent")
    with tracer.start_as_current_span("support-agent", attributes={
            "openinference.span.kind": "AGENT", "input.value": "Where is my order?", "output.value": "It ships today."}):
        with tracer.start_as_current_span("llm", attributes={
                "openinference.span.kind": "LLM", "llm.model_name": "gpt-4o-mini",
                "llm.input_messages.0.message.role": "user", "llm.input_messages.0.message.content": "Where is my order?",
                "llm.output_messages.0.message.role": "assistant",
                "llm.output_messages.0.message.content": "It ships today.",
                "llm.token_count.prompt": 12, "llm.token_count.completion": 4}):
            pass
        with tracer.start_as_current_span("lookup_order", attributes={
                "openinference.span.kind": "TOOL", "tool.name": "lookup_order", "input.value": '{"id": 7}'}) as tool:
            tool.set_status(Status(StatusCode.ERROR, "order service timed out"))
    provider.shutdown()
    return memory.get_finished_spans()


@pytest.mark.django_db(transaction=True)
def test_the_sdk_protobuf_exporter_stores_the_trace(live_server, agent_token):
    from opentelemetry.exporter.otlp.proto.http import Compression
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    agent, token = agent_token
    spans = sdk_spans()
    exporter = OTLPSpanExporter(endpoint=live_server.url + URL, headers={"Authorization": f"Bearer {token}"},
                                compression=Compression.Gzip)
    assert exporter.export(spans) == SpanExportResult.SUCCESS
    run = Run.objects.get(agent=agent)
    assert run.trace_id == format(spans[0].context.trace_id, "032x")
    assert run.spans.count() == 3 and run.question.text == "Where is my order?"
    assert run.final_answer == "It ships today." and run.model_name == "gpt-4o-mini"
    assert run.harness.agent_version == "2.0.0" and run.tool_calls == 1
    assert "order service timed out" in run.last_error
    assert Span.objects.get(run=run, name="lookup_order").is_error


@pytest.mark.django_db(transaction=True)
def test_the_sdk_json_exporter_stores_the_trace(live_server, agent_token):
    from opentelemetry.exporter.otlp.json.http.trace_exporter import OTLPSpanExporter

    agent, token = agent_token
    exporter = OTLPSpanExporter(endpoint=live_server.url + URL, headers={"Authorization": f"Bearer {token}"})
    assert exporter.export(sdk_spans(version="3.1")) == SpanExportResult.SUCCESS
    run = Run.objects.get(agent=agent)
    assert run.spans.count() == 3 and run.harness.agent_version == "3.1"
    assert run.input_tokens == 12 and run.output_tokens == 4


@pytest.mark.django_db(transaction=True)
def test_the_sdk_exporter_with_a_bad_token_is_refused(live_server, agent_token):
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    exporter = OTLPSpanExporter(endpoint=live_server.url + URL, headers={"Authorization": "Bearer lsk_wrong"}, timeout=5)
    assert exporter.export(sdk_spans()) == SpanExportResult.FAILURE
    assert not Run.objects.exists()


def _proto_body(document) -> bytes:
    """A JSON request re-encoded as protobuf (ids hex → bytes), to send by hand."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    message = ExportTraceServiceRequest()
    for rs in document["resourceSpans"]:
        out_rs = message.resource_spans.add()
        for kv in rs["resource"]["attributes"]:
            out_rs.resource.attributes.add(key=kv["key"]).value.string_value = kv["value"]["stringValue"]
        for ss in rs["scopeSpans"]:
            out_ss = out_rs.scope_spans.add()
            for item in ss["spans"]:
                out = out_ss.spans.add(name=item["name"], kind=item["kind"],
                                       start_time_unix_nano=int(item["startTimeUnixNano"]),
                                       end_time_unix_nano=int(item["endTimeUnixNano"]))
                out.trace_id = bytes.fromhex(item["traceId"]) if len(item["traceId"]) % 2 == 0 else b"\x01"
                out.span_id = bytes.fromhex(item["spanId"])
                if item["parentSpanId"]:
                    out.parent_span_id = bytes.fromhex(item["parentSpanId"])
                for kv in item["attributes"]:
                    value = kv["value"]
                    target = out.attributes.add(key=kv["key"]).value
                    if "intValue" in value:
                        target.int_value = int(value["intValue"])
                    else:
                        target.string_value = value["stringValue"]
    return message.SerializeToString()


def _post(client, body, *, token, content_type, **headers):
    return client.post(URL, body, content_type=content_type, HTTP_AUTHORIZATION=f"Bearer {token}", **headers)


@pytest.mark.django_db
def test_a_protobuf_request_gets_a_protobuf_reply_with_partial_success(client, agent_token):
    agent, token = agent_token
    document = request(openinference_trace() + [span("abcd", "3333333333333333", "bad ids", {})])
    response = _post(client, _proto_body(document), token=token, content_type="application/x-protobuf")
    assert response.status_code == 200 and response["Content-Type"] == "application/x-protobuf"
    reply = ExportTraceServiceResponse()
    reply.ParseFromString(response.content)
    assert reply.partial_success.rejected_spans == 1
    assert "trace_id must be 16 bytes" in reply.partial_success.error_message
    assert Span.objects.filter(run__agent=agent).count() == 4


@pytest.mark.django_db
def test_a_json_request_gets_a_json_reply(client, agent_token):
    agent, token = agent_token
    response = _post(client, json.dumps(request(openinference_trace())), token=token, content_type="application/json")
    assert response.status_code == 200 and response["Content-Type"] == "application/json"
    assert response.json() == {}
    bad = request([span("0" * 32, "3333333333333333", "zero trace", {})])
    response = _post(client, json.dumps(bad), token=token, content_type="application/json")
    assert response.json() == {"partialSuccess": {"rejectedSpans": "1", "errorMessage":
                               "resourceSpans[0].scopeSpans[0].spans[0]: trace_id is all zeros"}}


@pytest.mark.django_db
def test_gzip_json_is_unpacked(client, agent_token):
    agent, token = agent_token
    body = gzip.compress(json.dumps(request(openinference_trace())).encode())
    response = _post(client, body, token=token, content_type="application/json", HTTP_CONTENT_ENCODING="gzip")
    assert response.status_code == 200
    assert Run.objects.filter(agent=agent).count() == 1


@pytest.mark.django_db
@pytest.mark.parametrize("header", ["", "Bearer ", "Bearer lsk_nope", "Basic abc"])
def test_a_missing_or_wrong_token_is_401(client, agent_token, header):
    response = client.post(URL, "{}", content_type="application/json", HTTP_AUTHORIZATION=header)
    assert response.status_code == 401 and "token" in response.json()["message"]


@pytest.mark.django_db
def test_a_revoked_token_is_401(client, agent_token, engineer):
    agent, token = agent_token
    agent.revoke_token(by=engineer)
    response = _post(client, json.dumps(request(openinference_trace())), token=token, content_type="application/json")
    assert response.status_code == 401
    assert not Run.objects.exists()


@pytest.mark.django_db
def test_another_content_type_is_415(client, agent_token):
    _, token = agent_token
    response = _post(client, "x", token=token, content_type="text/plain")
    assert response.status_code == 415 and "application/x-protobuf" in response.json()["message"]


@pytest.mark.django_db
def test_a_body_over_the_limit_is_413(client, agent_token, settings):
    _, token = agent_token
    settings.TRACE_MAX_UPLOAD_BYTES = 1000
    response = _post(client, json.dumps(request(openinference_trace(payload="x" * 2000))), token=token,
                     content_type="application/json")
    assert response.status_code == 413
    assert not Run.objects.exists()


@pytest.mark.django_db
def test_a_gzip_bomb_is_413_without_unpacking_it(client, agent_token, settings):
    _, token = agent_token
    settings.TRACE_MAX_UPLOAD_BYTES = 100_000
    bomb = gzip.compress(b"{" + b" " * 50_000_000 + b"}")
    assert len(bomb) < 100_000
    response = _post(client, bomb, token=token, content_type="application/json", HTTP_CONTENT_ENCODING="gzip")
    assert response.status_code == 413 and "unpacks to more than" in response.json()["message"]


@pytest.mark.django_db
@pytest.mark.parametrize("body, content_type, encoding, message", [
    (b"{not json", "application/json", "", "not JSON"),
    (b'{"hello": 1}', "application/json", "", "resourceSpans is missing"),
    (b"\xff\xff\xff\xff", "application/x-protobuf", "", "not an OTLP ExportTraceServiceRequest"),
    (b"not gzip", "application/json", "gzip", "not valid gzip"),
    (b"{}", "application/json", "br", "Content-Encoding br is not supported"),
])
def test_a_broken_body_is_400_with_a_clear_message(client, agent_token, body, content_type, encoding, message):
    _, token = agent_token
    headers = {"HTTP_CONTENT_ENCODING": encoding} if encoding else {}
    response = _post(client, body, token=token, content_type=content_type, **headers)
    assert response.status_code == 400
    if content_type == "application/json":
        assert message in response.json()["message"]
    else:
        assert message.encode() in response.content and response["Content-Type"] == "application/x-protobuf"


@pytest.mark.django_db
def test_get_is_405(client):
    assert client.get(URL).status_code == 405


@pytest.mark.django_db
def test_an_export_over_the_concurrency_limit_is_429_with_retry_after_and_reads_nothing(client, agent_token, settings):
    from runs.ingest_views import ingest_slots

    agent, token = agent_token
    settings.INGEST_MAX_CONCURRENT = 2
    body = json.dumps(request(openinference_trace()))
    assert ingest_slots.take() and ingest_slots.take()  # two exports are being stored
    try:
        busy = _post(client, body, token=token, content_type="application/json")
    finally:
        ingest_slots.give_back()
        ingest_slots.give_back()
    assert busy.status_code == 429 and busy["Retry-After"] == "1"
    assert "2 exports are being stored at once" in busy.json()["message"]
    assert not Run.objects.filter(agent=agent).exists()
    assert _post(client, body, token=token, content_type="application/json").status_code == 200
    assert ingest_slots.busy == 0  # the slot is given back after a success too
    assert Span.objects.filter(run__agent=agent).count() == 4


@pytest.mark.django_db(transaction=True)
def test_the_sdk_exporter_waits_out_a_429_and_its_spans_arrive(live_server, agent_token, settings, monkeypatch):
    """One export holds the only slot on the live server; the SDK's second export is told 429 and retries."""
    import threading

    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    import runs.ingest_views

    agent, token = agent_token
    settings.INGEST_MAX_CONCURRENT = 1
    store, inside, release = runs.ingest_views.store_lines, threading.Event(), threading.Event()
    refused = []

    def slow_store(**kwargs):
        inside.set()
        release.wait(10)
        return store(**kwargs)

    monkeypatch.setattr(runs.ingest_views, "store_lines", slow_store)
    original_error = runs.ingest_views._otlp_error

    def counting_error(status, message, **kwargs):
        if status == 429:
            refused.append(message)
            release.set()  # the first export may finish now; the refused one retries after Retry-After
        return original_error(status, message, **kwargs)

    monkeypatch.setattr(runs.ingest_views, "_otlp_error", counting_error)

    def exporter():
        return OTLPSpanExporter(endpoint=live_server.url + URL, headers={"Authorization": f"Bearer {token}"}, timeout=20)

    results = {}
    first = threading.Thread(target=lambda: results.setdefault("first", exporter().export(sdk_spans("1.0"))))
    first.start()
    assert inside.wait(10)
    results["second"] = exporter().export(sdk_spans("2.0"))
    first.join(20)
    assert results == {"first": SpanExportResult.SUCCESS, "second": SpanExportResult.SUCCESS}
    assert len(refused) >= 1
    assert sorted(Run.objects.filter(agent=agent).values_list("harness__agent_version", flat=True)) == ["1.0", "2.0"]
