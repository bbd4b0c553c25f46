from django.contrib import admin

from loopsite.admin import AuditedAdmin

from .models import (
    Cycle,
    EvalCase,
    EvalCaseRevision,
    Feedback,
    FeedbackItem,
    FeedbackRevision,
    GenerationJob,
    Insight,
    ReviewAssignment,
)


@admin.register(Cycle)
class CycleAdmin(AuditedAdmin):
    list_display = ["name", "harness", "status", "created_by", "created_at"]
    list_filter = ["status", "harness"]
    search_fields = ["name"]
    filter_horizontal = ["runs"]
    raw_id_fields = ["batch"]


@admin.register(ReviewAssignment)
class ReviewAssignmentAdmin(AuditedAdmin):
    list_display = ["cycle", "run", "reviewer", "assigned_by", "created_at"]
    list_filter = ["cycle"]
    raw_id_fields = ["run"]


class FeedbackItemInline(admin.TabularInline):
    model = FeedbackItem
    extra = 0
    fields = ["position", "kind", "text", "citation_span_id", "citation_artifact", "citation_line"]


@admin.register(Feedback)
class FeedbackAdmin(AuditedAdmin):
    list_display = ["id", "cycle", "run", "reviewer", "is_merged", "verdict", "status", "version", "updated_at"]
    list_filter = ["status", "is_merged", "verdict", "cycle"]
    search_fields = ["summary", "theme", "reviewer__username"]
    raw_id_fields = ["run"]
    filter_horizontal = ["merged_from"]
    inlines = [FeedbackItemInline]


@admin.register(FeedbackItem)
class FeedbackItemAdmin(AuditedAdmin):
    list_display = ["feedback", "kind", "position", "text", "citation_span_id", "citation_artifact", "citation_line"]
    list_filter = ["kind"]
    raw_id_fields = ["feedback"]


@admin.register(FeedbackRevision)
class FeedbackRevisionAdmin(AuditedAdmin):
    list_display = ["feedback", "action", "version", "by", "at"]
    list_filter = ["action"]
    raw_id_fields = ["feedback"]


@admin.register(GenerationJob)
class GenerationJobAdmin(AuditedAdmin):
    list_display = ["id", "cycle", "kind", "status", "attempts", "model_name", "started_at", "finished_at"]
    list_filter = ["kind", "status"]


@admin.register(Insight)
class InsightAdmin(AuditedAdmin):
    list_display = ["id", "cycle", "run", "model_name", "created_at"]
    list_filter = ["cycle"]
    raw_id_fields = ["run", "job"]


@admin.register(EvalCase)
class EvalCaseAdmin(AuditedAdmin):
    list_display = ["eval_id", "cycle", "title", "scoring_method", "status", "approved_by", "approved_at"]
    list_filter = ["status", "scoring_method", "cycle"]
    search_fields = ["eval_id", "title"]
    raw_id_fields = ["source_run", "job"]
    filter_horizontal = ["source_feedback", "source_insights"]


@admin.register(EvalCaseRevision)
class EvalCaseRevisionAdmin(AuditedAdmin):
    list_display = ["case", "edited_by", "at"]
    raw_id_fields = ["case"]


# --- HALO (reviews/optimization.py) ---

from .models import Optimization  # noqa: E402


@admin.register(Optimization)
class OptimizationAdmin(AuditedAdmin):
    list_display = ["id", "cycle", "status", "attempts", "retried", "model_name", "created_at", "finished_at"]
    list_filter = ["status", "retried"]
    raw_id_fields = ["cycle", "gate_run", "requested_by"]
    readonly_fields = ["report", "handoff", "context_stats", "missing_sections"]


# --- the gate (reviews/gate.py) ---

from .models import GateRow, GateRun  # noqa: E402


class GateRowInline(admin.TabularInline):
    model = GateRow
    extra = 0
    fields = ["eval_id", "run", "passed", "score", "reason", "error"]
    readonly_fields = fields
    can_delete = False


@admin.register(GateRun)
class GateRunAdmin(AuditedAdmin):
    list_display = ["id", "harness", "cycle", "kind", "status", "passed", "total", "attempts", "created_at", "finished_at"]
    list_filter = ["status", "kind"]
    raw_id_fields = ["cycle", "harness", "baseline", "requested_by"]
    readonly_fields = ["results", "config", "log_tail"]
    inlines = [GateRowInline]
