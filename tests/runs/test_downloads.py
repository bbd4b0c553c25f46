import io
import json
import zipfile

import pytest
from django.urls import reverse

from .ui_builders import GOOD_ARTIFACTS, add_artifacts, make_run, small_trace

pytestmark = pytest.mark.django_db


def test_downloads_require_login(client):
    run = make_run()
    for name in ("runs:trace-jsonl", "runs:artifacts-zip"):
        response = client.get(reverse(name, args=[run.pk]))
        assert response.status_code == 302


def test_downloads_require_a_role(client_for, outsider):
    run = make_run()
    client = client_for(outsider)
    for name in ("runs:trace-jsonl", "runs:artifacts-zip"):
        assert client.get(reverse(name, args=[run.pk])).status_code == 403


def test_trace_jsonl_round_trips_the_stored_lines(client_for, reviewer):
    run = make_run()
    spans = small_trace(run)
    response = client_for(reviewer).get(reverse("runs:trace-jsonl", args=[run.pk]))
    assert response.status_code == 200
    assert response["Content-Disposition"] == f'attachment; filename="run-{run.pk}-trace-{run.trace_id}.jsonl"'
    body = b"".join(response.streaming_content).decode()
    lines = body.split("\n")
    assert lines[-1] == ""  # newline-terminated
    assert [json.loads(line) for line in lines[:-1]] == [span.data for span in spans]
    # Compact separators, one span per line.
    assert lines[0] == json.dumps(spans[0].data, separators=(",", ":"), ensure_ascii=False)


def test_trace_jsonl_follows_position_not_insertion_order(client_for, reviewer):
    from runs.models import Span

    run = make_run()
    Span.objects.create(run=run, position=1, span_id="b", name="second", data={"span_id": "b"})
    Span.objects.create(run=run, position=0, span_id="a", name="first", data={"span_id": "a", "text": "é"})
    body = b"".join(client_for(reviewer).get(reverse("runs:trace-jsonl", args=[run.pk])).streaming_content).decode()
    assert body == '{"span_id":"a","text":"é"}\n{"span_id":"b"}\n'


def test_artifacts_zip_holds_every_artifact(client_for, reviewer):
    run = make_run(final_answer="The answer.", output_contract={"passed": True, "issues": []})
    add_artifacts(run, {**GOOD_ARTIFACTS, "../../etc/evil.md": "nope"})
    response = client_for(reviewer).get(reverse("runs:artifacts-zip", args=[run.pk]))
    assert response.status_code == 200
    assert response["Content-Type"] == "application/zip"
    assert response["Content-Disposition"] == f'attachment; filename="run-{run.pk}-artifacts.zip"'
    archive = zipfile.ZipFile(io.BytesIO(response.content))
    names = set(archive.namelist())
    folder = f"run-{run.pk}"
    assert {f"{folder}/{name}" for name in GOOD_ARTIFACTS} <= names
    assert f"{folder}/etc/evil.md" in names  # no way out of the folder
    assert all(name.startswith(folder + "/") and ".." not in name for name in names)
    assert archive.read(f"{folder}/evidence_table.csv").decode() == GOOD_ARTIFACTS["evidence_table.csv"]
    assert archive.read(f"{folder}/final_answer.md") == b"The answer."
    assert json.loads(archive.read(f"{folder}/validators/output_contract_validation.json")) == {"passed": True, "issues": []}
