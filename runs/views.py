import io
import json
import posixpath
import zipfile

from django.conf import settings
from django.contrib import messages
from django.core.paginator import Paginator
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import Count, Max
from django.http import Http404, HttpResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.http import urlencode
from django.views.decorators.http import require_http_methods, require_POST
from django_htmx.http import HttpResponseStopPolling

from loopsite.forms import bounded_int
from loopsite.models import AuditEvent
from loopsite.roles import APPROVER, ENGINEER, REVIEWER, has_role, role_required

from . import annotations, display
from .datarooms import DataroomImportError, import_dataroom_zip, is_text
from .forms import DataroomUploadForm, QuestionForm, RunFilterForm, StartRunsForm
from .models import Dataroom, DataroomFile, Harness, Question, Run, Span
from .work import start_batch

RUNS_PER_PAGE = 25

# Reading needs any role; a logged-in user without one sees nothing.
reader_required = role_required(REVIEWER, APPROVER, ENGINEER)


def _get_run_for_user(request, pk: int, *, detail: bool = False) -> Run:
    queryset = Run.objects.select_related("agent", "harness", "dataroom", "question")
    if detail:
        queryset = queryset.select_related("batch", "created_by")
    return get_object_or_404(queryset, pk=pk)


# ---------------------------------------------------------------- runs


@reader_required
def run_list(request):
    form = RunFilterForm(request.GET or None)
    runs = Run.objects.select_related("agent", "harness", "dataroom", "question").defer(
        "final_answer", "last_error", "harness__system_prompt", "harness__eval_metadata",
        "dataroom__description",
    )
    runs = form.filter(runs)  # invalid filter values are dropped, valid ones apply
    page = Paginator(runs, RUNS_PER_PAGE).get_page(request.GET.get("page"))
    any_active = any(run.is_active for run in page.object_list)
    context = {"form": form, "page": page, "runs": page.object_list, "any_active": any_active,
               "batch": form.cleaned_data.get("batch") if form.is_bound else None}

    if request.htmx and request.htmx.target == "run-rows":
        response = render(request, "runs/run_list.html#run-rows", context)
        if not any_active:
            return HttpResponseStopPolling(response.content)
        return response
    return render(request, "runs/run_list.html", context)


@role_required(ENGINEER)
@require_http_methods(["GET", "POST"])
def run_start(request):
    if request.method == "POST":
        form = StartRunsForm(request.POST)
        if form.is_valid():
            harness, dataroom = form.cleaned_data["harness"], form.cleaned_data["dataroom"]
            questions = list(form.cleaned_data["questions"])
            with transaction.atomic():
                batch = start_batch(harness=harness, dataroom=dataroom, questions=questions, user=request.user)
                AuditEvent.record(
                    actor=request.user, action="batch.start", obj=batch,
                    summary=f"Started {len(questions)} run(s) of {harness.version} on {dataroom.name}",
                    after={"harness": harness.version, "dataroom": dataroom.name,
                           "questions": [q.pk for q in questions]},
                )
            messages.success(request, f"Started {len(questions)} run(s) of {harness.version} on {dataroom.name}.")
            return redirect(reverse("runs:list") + "?" + urlencode({"batch": batch.pk}))
    else:
        initial = {}
        if request.GET.get("harness"):
            initial["harness"] = Harness.objects.filter(version=request.GET["harness"]).first()
        dataroom_id = bounded_int(request.GET.get("dataroom"))
        if dataroom_id is not None:
            initial["dataroom"] = Dataroom.objects.filter(pk=dataroom_id).first()
        form = StartRunsForm(initial={k: v for k, v in initial.items() if v is not None})
    return render(request, "runs/run_start.html", {"form": form})


@reader_required
def run_detail(request, pk):
    if request.htmx and request.htmx.target == "run-status":
        run = _get_run_for_user(request, pk)
        response = render(request, "runs/run_detail.html#run-status", {"run": run})
        if not run.is_active:
            # Finished: stop polling and reload so the answer, artifacts and trace appear.
            response = HttpResponseStopPolling(response.content)
            response["HX-Refresh"] = "true"
        return response

    run = _get_run_for_user(request, pk, detail=True)
    # Artifacts and validators are computed by their partials (runs_display tags);
    # the span tree is passed in, as the review page does.
    return render(request, "runs/run_detail.html", {"run": run, "span_tree": display.span_tree(run)})


@reader_required
def span_detail(request, pk, span_id):
    run = _get_run_for_user(request, pk)
    span = Span.objects.filter(run=run, span_id=span_id).order_by("position").first()
    if span is None:
        raise Http404("No such span in this run.")
    context = {"run": run, "detail": display.span_detail(span)}
    if request.htmx:
        return render(request, "runs/span_detail.html#span-detail", context)
    return render(request, "runs/span_detail.html", context)


@reader_required
def trace_jsonl(request, pk):
    run = _get_run_for_user(request, pk)

    reviews = annotations.annotations_for(run)
    root = annotations.root_span_id(run) if reviews else ""

    def lines():
        stored = Span.objects.filter(run=run).order_by("position").values_list("data", flat=True).iterator(chunk_size=200)
        for data in annotations.annotated_lines(stored, reviews, root_span_id=root):
            yield Span.jsonl_line(data) + "\n"

    response = StreamingHttpResponse(lines(), content_type="application/x-ndjson; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="run-{run.pk}-trace-{run.trace_id}.jsonl"'
    return response


@reader_required
def artifacts_zip(request, pk):
    run = _get_run_for_user(request, pk)
    buffer = io.BytesIO()
    folder = f"run-{run.pk}"
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for artifact in run.artifacts.all():
            safe = posixpath.normpath("/" + artifact.name.replace("\\", "/")).lstrip("/") or "artifact"
            archive.writestr(f"{folder}/{safe}", artifact.content)
        if run.final_answer:
            archive.writestr(f"{folder}/final_answer.md", run.final_answer)
        for name, result in (("evidence_coverage.json", run.evidence_coverage),
                             ("output_contract_validation.json", run.output_contract)):
            if result is not None:
                archive.writestr(f"{folder}/validators/{name}", json.dumps(result, indent=2, ensure_ascii=False))
    response = HttpResponse(buffer.getvalue(), content_type="application/zip")
    response["Content-Disposition"] = f'attachment; filename="run-{run.pk}-artifacts.zip"'
    return response


# ---------------------------------------------------------------- datarooms


@reader_required
def dataroom_list(request):
    datarooms = Dataroom.objects.select_related("created_by").annotate(run_count=Count("runs")).order_by("name")
    return render(request, "runs/dataroom_list.html", {"datarooms": datarooms})


@role_required(ENGINEER)
@require_http_methods(["GET", "POST"])
def dataroom_upload(request):
    form = DataroomUploadForm(request.POST or None, request.FILES or None)
    if request.method == "POST" and form.is_valid():
        upload = form.cleaned_data["zip_file"]
        try:
            dataroom = import_dataroom_zip(
                name=form.cleaned_data["name"], fileobj=upload, user=request.user,
                description=form.cleaned_data["description"],
            )
        except DataroomImportError as exc:
            for error in exc.errors:
                form.add_error("zip_file", error)
        else:
            note = f" ({dataroom.binary_files} binary)" if dataroom.binary_files else ""
            messages.success(request, f"Imported {dataroom.file_count} files{note} into {dataroom.name}.")
            return redirect(dataroom)
    limits = {"zip": settings.DATAROOM_MAX_ZIP_BYTES, "files": settings.DATAROOM_MAX_FILES,
              "file": settings.DATAROOM_MAX_FILE_BYTES, "total": settings.DATAROOM_MAX_TOTAL_BYTES}
    return render(request, "runs/dataroom_upload.html", {"form": form, "limits": limits})


def _file_tree(files) -> list[dict]:
    """Rows for an indented tree: folders (with their total size) before the files in them."""
    folders: dict[tuple[str, ...], int] = {}
    for f in files:
        parts = tuple(f.path.split("/"))
        for depth in range(1, len(parts)):
            folders[parts[:depth]] = folders.get(parts[:depth], 0) + f.size
    rows = []
    for key in folders:
        rows.append({"sort": key, "is_dir": True, "name": key[-1], "depth": len(key) - 1, "size": folders[key],
                     "path": "/".join(key)})
    for f in files:
        parts = tuple(f.path.split("/"))
        rows.append({"sort": parts, "is_dir": False, "name": parts[-1], "depth": len(parts) - 1, "size": f.size,
                     "path": f.path})
    # Within a folder, subfolders first, then files, each alphabetically.
    rows.sort(key=lambda r: [(0 if (i < len(r["sort"]) - 1 or r["is_dir"]) else 1, p) for i, p in enumerate(r["sort"])])
    return rows


@reader_required
def dataroom_detail(request, pk):
    dataroom = get_object_or_404(Dataroom.objects.select_related("created_by"), pk=pk)
    files = list(dataroom.files.only("id", "path", "size"))
    runs = dataroom.runs.select_related("harness", "question").defer("final_answer", "last_error")[:20]
    context = {"dataroom": dataroom, "tree": _file_tree(files), "file_total": len(files), "runs": runs}
    return render(request, "runs/dataroom_detail.html", context)


@reader_required
def dataroom_file(request, pk, path):
    dataroom = get_object_or_404(Dataroom, pk=pk)
    file = get_object_or_404(DataroomFile, dataroom=dataroom, path=path)
    data = bytes(file.content)
    text = data.decode("utf-8") if is_text(data) else None
    table = None
    if text is not None and path.lower().endswith(".csv"):
        view = display.render_content(path, text, size=file.size)
        table = view if view.kind == "csv" and not view.problem else None
    context = {"dataroom": dataroom, "file": file, "text": text, "table": table}
    return render(request, "runs/dataroom_file.html", context)


# ---------------------------------------------------------------- questions


@reader_required
@require_http_methods(["GET", "POST"])
def question_list(request):
    can_edit = has_role(request.user, ENGINEER)
    form = QuestionForm(request.POST or None) if can_edit else None
    if request.method == "POST":
        if not can_edit:
            raise PermissionDenied("This needs the engineer role.")
        if form.is_valid():
            with transaction.atomic():
                question = form.save(commit=False)
                question.bank_index = (Question.objects.aggregate(m=Max("bank_index"))["m"] or -1) + 1
                question.save()
                AuditEvent.record(
                    actor=request.user, action="question.add", obj=question,
                    summary=f"Added question {question.bank_index}",
                    after={"text": question.text, "is_default": question.is_default, "bank_index": question.bank_index},
                )
            messages.success(request, "Question added to the bank.")
            return redirect("runs:question-list")
    questions = Question.objects.filter(imported=False).annotate(run_count=Count("runs")).order_by(*Question._meta.ordering)
    return render(request, "runs/question_list.html", {"questions": questions, "form": form, "can_edit": can_edit})


@role_required(ENGINEER)
@require_POST
def question_toggle_default(request, pk):
    with transaction.atomic():
        question = get_object_or_404(Question.objects.select_for_update(), pk=pk)
        before = question.is_default
        question.is_default = not before
        question.save(update_fields=["is_default"])
        AuditEvent.record(
            actor=request.user, action="question.toggle_default", obj=question,
            summary=f"{'Marked' if question.is_default else 'Unmarked'} question {question.pk} as default",
            before={"is_default": before}, after={"is_default": question.is_default},
        )
    if request.htmx:
        question.run_count = question.runs.count()
        return render(request, "runs/question_list.html#question-row", {"q": question, "can_edit": True})
    return redirect("runs:question-list")
