"""Start a batch of runs from the command line, optionally waiting for them to finish."""

import time

from django.core.management.base import BaseCommand, CommandError

from runs.models import Dataroom, Harness, Question, Run
from runs.work import start_batch

from .load_sample import DATAROOM_NAME


class Command(BaseCommand):
    help = "Start one run per question for a harness version and dataroom (a worker executes them)."

    def add_arguments(self, parser):
        parser.add_argument("--harness", required=True, help="Harness version, e.g. v001.")
        parser.add_argument("--dataroom", help=f"Dataroom name (default: the only one, or {DATAROOM_NAME!r}).")
        parser.add_argument("--questions", help="Question bank indices, e.g. 0,1,2,4,6 (default: the default questions).")
        parser.add_argument("--wait", action="store_true", help="Print progress until every run finished.")
        parser.add_argument("--poll", type=float, default=2.0, help="Seconds between progress checks with --wait.")

    def handle(self, *args, harness, dataroom, questions, wait, poll, **options):
        harness_row = Harness.objects.filter(version=harness).first()
        if harness_row is None:
            known = ", ".join(Harness.objects.values_list("version", flat=True)) or "none (run load_sample)"
            raise CommandError(f"Unknown harness {harness!r}. Known versions: {known}.")
        dataroom_row = pick_dataroom(dataroom)
        question_rows = pick_questions(questions)

        batch = start_batch(harness=harness_row, dataroom=dataroom_row, questions=question_rows, user=None)
        runs = list(batch.runs.order_by("pk"))
        self.stdout.write(f"Batch {batch.pk}: {len(runs)} run(s) of {harness_row.version} on {dataroom_row.name!r}.")
        for run in runs:
            self.stdout.write(f"  run {run.pk} {run.label}: {run.question.text}")
        if not wait:
            return
        self.wait_for(batch.pk, poll)

    def wait_for(self, batch_id: int, poll: float) -> None:
        seen: dict[int, str] = {}
        started = time.monotonic()
        while True:
            rows = list(Run.objects.filter(batch_id=batch_id).order_by("pk"))
            for run in rows:
                if seen.get(run.pk) != run.status:
                    seen[run.pk] = run.status
                    self.stdout.write(f"[{time.monotonic() - started:6.1f}s] run {run.pk} {run.label}: {describe(run)}")
            if all(not run.is_active for run in rows):
                break
            time.sleep(poll)
        failed = [run for run in rows if run.status == Run.Status.FAILED]
        self.stdout.write(f"Done: {len(rows) - len(failed)} succeeded, {len(failed)} failed.")
        if failed:
            raise CommandError(f"{len(failed)} run(s) failed: " + ", ".join(str(run.pk) for run in failed))


def describe(run: Run) -> str:
    if run.status == Run.Status.SUCCEEDED:
        return (f"succeeded ({run.model_calls} model calls, {run.tool_calls} tool calls, {run.total_tokens} tokens, "
                f"{run.artifacts.count()} artifacts, evidence {'passed' if run.evidence_passed else 'failed'}, "
                f"contract {'passed' if run.contract_passed else 'failed'})")
    if run.status == Run.Status.FAILED:
        return f"failed: {run.last_error}"
    return run.status


def pick_dataroom(name: str | None) -> Dataroom:
    if name:
        dataroom = Dataroom.objects.filter(name=name).first()
        if dataroom is None:
            known = ", ".join(repr(n) for n in Dataroom.objects.values_list("name", flat=True)) or "none"
            raise CommandError(f"Unknown dataroom {name!r}. Known datarooms: {known}.")
        return dataroom
    datarooms = list(Dataroom.objects.all()[:2])
    if len(datarooms) == 1:
        return datarooms[0]
    sample = Dataroom.objects.filter(name=DATAROOM_NAME).first()
    if sample is not None:
        return sample
    raise CommandError("No dataroom given and no single default: pass --dataroom NAME (or run load_sample).")


def pick_questions(spec: str | None) -> list[Question]:
    if not spec:
        questions = list(Question.objects.filter(is_default=True).order_by("bank_index", "pk"))
        if not questions:
            raise CommandError("No default questions: pass --questions or run load_sample.")
        return questions
    try:
        indices = [int(part) for part in spec.split(",") if part.strip()]
    except ValueError:
        raise CommandError(f"--questions must be comma-separated numbers, got {spec!r}.") from None
    if not indices:
        raise CommandError("--questions is empty.")
    by_index = {q.bank_index: q for q in Question.objects.filter(bank_index__in=indices)}
    unknown = [index for index in indices if index not in by_index]
    if unknown:
        known = sorted(i for i in Question.objects.exclude(bank_index=None).values_list("bank_index", flat=True))
        raise CommandError(f"Unknown question index(es) {unknown}. Known indices: {known or 'none'}.")
    return [by_index[index] for index in indices]
