"""Load the sample dataroom, question bank and harness v001. Idempotent."""

import json
from pathlib import Path

from django.core.management.base import BaseCommand
from django.db import transaction

from runs.models import Dataroom, DataroomFile, Harness, Question

SAMPLE_DIR = Path(__file__).resolve().parents[2] / "sample"
DATAROOM_NAME = "FictionalCorp XYZ"
DATAROOM_DESCRIPTION = "The seed's synthetic acquisition-diligence dataroom (FictionalCorp XYZ)."


class Command(BaseCommand):
    help = "Load the sample dataroom, the ten sample questions and harness v001 (re-running changes nothing)."

    def handle(self, *args, **options):
        with transaction.atomic():
            dataroom, files_created = load_dataroom()
            questions_created = load_questions()
            harness_created = load_harness()
        self.stdout.write(
            f"Dataroom {dataroom.name!r}: {dataroom.file_count} files ({files_created} new). "
            f"Questions: {questions_created} new. Harness v001: {'created' if harness_created else 'already present'}."
        )


def load_dataroom() -> tuple[Dataroom, int]:
    root = SAMPLE_DIR / "dataroom"
    dataroom, _ = Dataroom.objects.get_or_create(name=DATAROOM_NAME, defaults={"description": DATAROOM_DESCRIPTION})
    existing = set(dataroom.files.values_list("path", flat=True))
    new_files = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        relative = path.relative_to(root).as_posix()
        if relative in existing:
            continue
        content = path.read_bytes()
        new_files.append(DataroomFile(dataroom=dataroom, path=relative, content=content, size=len(content)))
    DataroomFile.objects.bulk_create(new_files)
    if new_files:
        files = list(dataroom.files.values_list("size", flat=True))
        dataroom.file_count = len(files)
        dataroom.total_bytes = sum(files)
        dataroom.save(update_fields=["file_count", "total_bytes"])
    return dataroom, len(new_files)


def load_questions() -> int:
    bank = json.loads((SAMPLE_DIR / "questions.json").read_text(encoding="utf-8"))
    defaults = set(bank["default_indices"])
    created = 0
    for index, text in enumerate(bank["questions"]):
        _, was_created = Question.objects.get_or_create(
            text=text, defaults={"bank_index": index, "is_default": index in defaults}
        )
        created += was_created
    return created


def load_harness() -> bool:
    config = json.loads((SAMPLE_DIR / "harness_v001.json").read_text(encoding="utf-8"))
    _, created = Harness.objects.get_or_create(
        version=config["version"],
        defaults={
            "system_prompt": config["system_prompt"],
            "model_settings": config["model_settings"],
            "tool_policy": config["tool_policy"],
            "eval_metadata": config["eval_metadata"],
            "status": Harness.Status.PROMOTED,
        },
    )
    return created
