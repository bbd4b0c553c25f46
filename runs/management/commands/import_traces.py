"""`manage.py import_traces FILE --agent NAME`: a JSONL trace file into an external agent's runs, all or nothing."""

from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db.models import Q

from runs.ingest import IngestError, import_trace_file
from runs.models import Agent


class Command(BaseCommand):
    help = ("Import a JSONL trace file (HALO span lines, Agents SDK span exports, or one OTLP JSON request per line) "
            "into an external agent. Nothing is stored unless every line is accepted.")

    def add_arguments(self, parser):
        parser.add_argument("file", type=Path)
        parser.add_argument("--agent", required=True, help="The external agent's name or slug.")
        parser.add_argument("--create", action="store_true", help="Create the agent (without a token) if it is missing.")

    def handle(self, *args, file: Path, agent: str, create: bool, **options):
        found = Agent.objects.filter(Q(name=agent) | Q(slug=agent)).first()
        if found is None and create:
            found = Agent.objects.create(name=agent, slug=Agent.free_slug(agent), kind=Agent.Kind.EXTERNAL)
        if found is None:
            names = ", ".join(Agent.objects.filter(kind=Agent.Kind.EXTERNAL).values_list("name", flat=True)) or "none yet"
            raise CommandError(f"No agent named {agent!r} (external agents: {names}). Create it on /agents/ or pass --create.")
        if found.is_builtin:
            raise CommandError("The built-in agent's runs are made here; import into an external agent.")
        if not file.is_file():
            raise CommandError(f"{file}: no such file.")
        limit = settings.TRACE_MAX_UPLOAD_BYTES
        if file.stat().st_size > limit:
            raise CommandError(f"Nothing imported. {file.name}: the file is {file.stat().st_size:,} bytes; "
                               f"the limit (TRACE_MAX_UPLOAD_BYTES) is {limit:,}.")
        try:
            outcome = import_trace_file(agent=found, data=file.read_bytes(), name=file.name)
        except IngestError as exc:
            raise CommandError(f"Nothing imported. {exc}") from exc
        self.stdout.write(f"Imported {outcome.spans_stored} span(s) into {found.name}: {outcome.runs_created} new run(s), "
                          f"{outcome.runs_updated} updated, {outcome.duplicates} already stored.")
