"""The agents pages: list, create (token shown once), rotate, revoke, upload; the runs list filter by agent."""

import json

import pytest

from loopsite.models import AuditEvent
from runs.models import Agent, Run, Span

from .otlp_builders import openinference_trace, request
from .ui_builders import make_run

pytestmark = pytest.mark.django_db


def test_the_list_shows_the_builtin_agent_to_any_role(client_for, reviewer):
    Agent.builtin()
    html = client_for(reviewer).get("/agents/").content.decode()
    assert "Diligence analyst" in html
    assert "Create agent and token" not in html


def test_a_reviewer_cannot_create_an_agent(client_for, reviewer):
    response = client_for(reviewer).post("/agents/", {"name": "Bot", "version_attribute": "service.version"})
    assert response.status_code == 403
    assert not Agent.objects.filter(name="Bot").exists()


def test_an_engineer_creates_an_agent_and_sees_the_token_once(client_for, engineer):
    client = client_for(engineer)
    response = client.post("/agents/", {"name": "Support bot", "version_attribute": "app.version"})
    assert response.status_code == 200
    html = response.content.decode()
    agent = Agent.objects.get(name="Support bot")
    token = html.split('id="new-token-value">')[1].split("<")[0]
    assert Agent.for_token(token) == agent and agent.version_attribute == "app.version"
    assert "/v1/traces" in html
    again = client.get(agent.get_absolute_url()).content.decode()
    assert token not in again and agent.token_prefix in again


def test_a_duplicate_name_is_refused(client_for, engineer):
    Agent.create_external(by=engineer, name="Bot")
    response = client_for(engineer).post("/agents/", {"name": "bot", "version_attribute": "service.version"})
    assert "already exists" in response.content.decode()
    assert Agent.objects.filter(kind=Agent.Kind.EXTERNAL).count() == 1


def test_rotate_shows_a_new_token_and_revoke_stops_it(client_for, engineer):
    agent, old = Agent.create_external(by=engineer, name="Bot")
    client = client_for(engineer)
    html = client.post(f"/agents/{agent.slug}/rotate/").content.decode()
    new = html.split('id="new-token-value">')[1].split("<")[0]
    assert new != old and Agent.for_token(new) == agent and Agent.for_token(old) is None
    assert client.post(f"/agents/{agent.slug}/revoke/").status_code == 302
    assert Agent.for_token(new) is None
    assert AuditEvent.objects.filter(action="agent.revoke_token").count() == 1


def test_only_engineers_rotate_or_revoke(client_for, approver, engineer):
    agent, token = Agent.create_external(by=engineer, name="Bot")
    client = client_for(approver)
    assert client.post(f"/agents/{agent.slug}/rotate/").status_code == 403
    assert client.post(f"/agents/{agent.slug}/revoke/").status_code == 403
    assert Agent.for_token(token) == agent


def _jsonl(*documents) -> bytes:
    return "\n".join(json.dumps(document) for document in documents).encode()


def _upload(client, agent, data: bytes, name="traces.jsonl"):
    from django.core.files.uploadedfile import SimpleUploadedFile

    return client.post(f"/agents/{agent.slug}/upload/", {"file": SimpleUploadedFile(name, data)})


def test_an_uploaded_otlp_json_lines_file_becomes_runs(client_for, engineer):
    agent, _ = Agent.create_external(by=engineer, name="Bot")
    data = _jsonl(request(openinference_trace("1" * 32)), request(openinference_trace("2" * 32, question="Other?")))
    response = _upload(client_for(engineer), agent, data)
    assert response.status_code == 302 and response["Location"] == f"/runs/?agent={agent.slug}"
    assert Run.objects.filter(agent=agent).count() == 2
    listing = client_for(engineer).get(f"/runs/?agent={agent.slug}").content.decode()
    assert "What is our refund policy?" in listing and "Other?" in listing


def test_a_file_with_a_broken_line_is_refused_whole_with_the_line_number(client_for, engineer):
    agent, _ = Agent.create_external(by=engineer, name="Bot")
    data = _jsonl(request(openinference_trace("1" * 32))) + b"\n{\"trace_id\": \"a\", \"name\": \"x\"}\n"
    response = _upload(client_for(engineer), agent, data)
    assert response.status_code == 400
    assert "Line 2: field `span_id` is missing" in response.content.decode()
    assert not Run.objects.filter(agent=agent).exists() and not Span.objects.exists()


def test_a_file_over_the_limit_is_refused(client_for, engineer, settings):
    agent, _ = Agent.create_external(by=engineer, name="Bot")
    settings.TRACE_MAX_UPLOAD_BYTES = 100
    response = _upload(client_for(engineer), agent, _jsonl(request(openinference_trace())))
    assert response.status_code == 400 and "the limit is 100" in response.content.decode()
    assert not Run.objects.exists()


def test_the_runs_list_filters_by_agent(client_for, engineer, reviewer):
    builtin_run = make_run()
    agent, _ = Agent.create_external(by=engineer, name="Bot")
    _upload(client_for(engineer), agent, _jsonl(request(openinference_trace())))
    client = client_for(reviewer)
    html = client.get(f"/runs/?agent={agent.slug}").content.decode()
    assert "What is our refund policy?" in html and builtin_run.question.text not in html
    html = client.get("/runs/?agent=diligence-analyst").content.decode()
    assert "What is our refund policy?" not in html and builtin_run.question.text in html


def test_an_imported_run_page_shows_input_answer_and_trace_without_dataroom_or_artifacts(client_for, engineer, reviewer):
    agent, _ = Agent.create_external(by=engineer, name="Bot")
    _upload(client_for(engineer), agent, _jsonl(request(openinference_trace())))
    run = Run.objects.get(agent=agent)
    client = client_for(reviewer)
    html = client.get(run.get_absolute_url()).content.decode()
    assert "What is our refund policy?" in html and "Refunds within 30 days." in html
    assert "<h2>Runtime validators</h2>" not in html and "<dt>Dataroom</dt>" not in html and "search_docs" in html
    detail = client.get(f"/runs/{run.pk}/spans/00f067aa0ba902b7/").content.decode()
    assert "search_docs" in detail and "Be helpful." in detail
    download = b"".join(client.get(f"/runs/{run.pk}/trace.jsonl").streaming_content).decode()
    assert len(download.splitlines()) == 4
    assert client.get(f"/harnesses/{run.harness.version}/").status_code == 200


def test_import_traces_command(tmp_path, engineer):
    from django.core.management import CommandError, call_command

    agent, _ = Agent.create_external(by=engineer, name="Bot")
    good = tmp_path / "good.jsonl"
    good.write_bytes(_jsonl(request(openinference_trace())))
    call_command("import_traces", str(good), "--agent", "Bot")
    assert Run.objects.filter(agent=agent).count() == 1
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(_jsonl(request(openinference_trace("5" * 32))) + b"\nnot json\n")
    with pytest.raises(CommandError, match="Line 2: not valid JSON"):
        call_command("import_traces", str(bad), "--agent", "bot")
    assert Run.objects.filter(agent=agent).count() == 1
    with pytest.raises(CommandError, match="No agent named"):
        call_command("import_traces", str(good), "--agent", "Nobody")
    call_command("import_traces", str(good), "--agent", "New one", "--create")
    assert Run.objects.filter(agent__name="New one").count() == 1


def test_import_traces_create_picks_a_free_slug(tmp_path, engineer):
    from django.core.management import call_command

    Agent.create_external(by=engineer, name="Bot")
    good = tmp_path / "good.jsonl"
    good.write_bytes(_jsonl(request(openinference_trace())))
    call_command("import_traces", str(good), "--agent", "Bot!", "--create")
    assert Agent.objects.get(name="Bot!").slug == "bot-2"
    assert Run.objects.filter(agent__slug="bot-2").count() == 1


@pytest.fixture
def span_writes_fail():
    """The database itself refuses every new span (a trigger), as a full disk or a lost primary would."""
    from django.db import connection

    table = Span._meta.db_table
    with connection.cursor() as cursor:
        if connection.vendor == "sqlite":
            cursor.execute(f"CREATE TRIGGER refuse_spans BEFORE INSERT ON {table} "
                           "BEGIN SELECT RAISE(ABORT, 'disk I/O error'); END")
        else:
            cursor.execute("CREATE FUNCTION refuse_spans() RETURNS trigger AS $$ BEGIN "
                           "RAISE EXCEPTION 'disk I/O error'; END $$ LANGUAGE plpgsql")
            cursor.execute(f"CREATE TRIGGER refuse_spans BEFORE INSERT ON {table} "
                           "FOR EACH ROW EXECUTE FUNCTION refuse_spans()")
    yield


def test_a_database_that_refuses_the_write_is_a_clear_503_and_keeps_nothing(client_for, engineer, span_writes_fail):
    agent, _ = Agent.create_external(by=engineer, name="Bot")
    response = _upload(client_for(engineer), agent, _jsonl(request(openinference_trace("1" * 32))))
    assert response.status_code == 503
    assert "could not be stored just now" in response.content.decode() and "nothing of it was kept" in response.content.decode()
    assert not Run.objects.filter(agent=agent).exists()
