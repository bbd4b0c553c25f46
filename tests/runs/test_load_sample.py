"""The load_sample command."""

import io
import json
from pathlib import Path

from django.core.management import call_command

from runs.models import Dataroom, DataroomFile, Harness, Question

SAMPLE = Path(__file__).resolve().parents[2] / "runs" / "sample"


def load() -> str:
    out = io.StringIO()
    call_command("load_sample", stdout=out)
    return out.getvalue()


def snapshot() -> dict:
    return {
        "datarooms": list(Dataroom.objects.values_list("pk", "name", "file_count", "total_bytes")),
        "files": list(DataroomFile.objects.values_list("pk", "path", "size")),
        "questions": list(Question.objects.values_list("pk", "text", "bank_index", "is_default")),
        "harnesses": list(Harness.objects.values_list("pk", "version", "status", "system_prompt")),
    }


def test_it_loads_the_sample_dataroom(db):
    load()
    dataroom = Dataroom.objects.get()
    assert dataroom.name == "FictionalCorp XYZ"
    paths = list(dataroom.files.values_list("path", flat=True))
    assert len(paths) == dataroom.file_count == 24
    assert "manifest.json" in paths and "financials/arr_bridge.csv" in paths
    p_and_l = dataroom.files.get(path="financials/p_and_l.csv")
    assert bytes(p_and_l.content) == (SAMPLE / "dataroom" / "financials" / "p_and_l.csv").read_bytes()
    assert dataroom.total_bytes == sum(dataroom.files.values_list("size", flat=True)) > 0


def test_it_loads_the_question_bank_with_its_defaults(db):
    load()
    bank = json.loads((SAMPLE / "questions.json").read_text())["questions"]
    assert list(Question.objects.values_list("bank_index", "text")) == list(enumerate(bank))
    assert list(Question.objects.filter(is_default=True).values_list("bank_index", flat=True)) == [0, 1, 2, 4, 6]


def test_it_loads_harness_v001_as_promoted(db):
    load()
    harness = Harness.objects.get()
    config = json.loads((SAMPLE / "harness_v001.json").read_text())
    assert harness.version == "v001"
    assert harness.status == Harness.Status.PROMOTED
    assert harness.system_prompt == config["system_prompt"]
    assert harness.tool_policy == config["tool_policy"]
    assert harness.model_settings == {"agent_model": "gpt-5.5", "reasoning_effort": "medium"}
    assert "Config version: `v001`" in harness.build_instructions()


def test_running_it_again_changes_nothing(db):
    first = load()
    before = snapshot()
    second = load()
    assert snapshot() == before
    assert "24 new" in first
    assert "0 new" in second and "already present" in second


def test_it_leaves_edited_rows_alone(db):
    load()
    Harness.objects.filter(version="v001").update(system_prompt="edited")
    Question.objects.filter(bank_index=3).update(is_default=True)
    load()
    assert Harness.objects.get(version="v001").system_prompt == "edited"
    assert Question.objects.get(bank_index=3).is_default is True


def test_the_harness_config_keeps_its_key_order(db):
    # The tool policy is rendered into the agent's instructions in key order; PostgreSQL's jsonb
    # would sort the keys, so the same harness must not read back differently on another database.
    call_command("load_sample", stdout=io.StringIO())
    config = json.loads((SAMPLE / "harness_v001.json").read_text(encoding="utf-8"))
    harness = Harness.objects.get(version="v001")
    assert list(harness.tool_policy) == list(config["tool_policy"])
    assert list(harness.eval_metadata) == list(config["eval_metadata"])
    assert harness.build_instructions().index("allowed_data_root") < harness.build_instructions().index("mutation_policy")
