from django.contrib import admin

from .models import Artifact, Batch, Dataroom, DataroomFile, Harness, Question, Run, Span


@admin.register(Harness)
class HarnessAdmin(admin.ModelAdmin):
    list_display = ["version", "status", "parent", "author", "created_at"]
    list_filter = ["status"]
    search_fields = ["version", "system_prompt"]


class DataroomFileInline(admin.TabularInline):
    model = DataroomFile
    fields = ["path", "size"]
    readonly_fields = ["path", "size"]
    extra = 0
    can_delete = False


@admin.register(Dataroom)
class DataroomAdmin(admin.ModelAdmin):
    list_display = ["name", "file_count", "total_bytes", "created_by", "created_at"]
    inlines = [DataroomFileInline]


@admin.register(DataroomFile)
class DataroomFileAdmin(admin.ModelAdmin):
    list_display = ["path", "dataroom", "size"]
    list_filter = ["dataroom"]
    search_fields = ["path"]
    exclude = ["content"]


@admin.register(Question)
class QuestionAdmin(admin.ModelAdmin):
    list_display = ["text", "bank_index", "is_default"]
    list_filter = ["is_default"]


@admin.register(Batch)
class BatchAdmin(admin.ModelAdmin):
    list_display = ["id", "harness", "dataroom", "created_by", "created_at"]


@admin.register(Run)
class RunAdmin(admin.ModelAdmin):
    list_display = ["id", "label", "harness", "dataroom", "status", "attempts", "created_at", "finished_at"]
    list_filter = ["status", "harness", "dataroom"]
    search_fields = ["trace_id", "label", "question__text"]
    raw_id_fields = ["question", "batch"]


@admin.register(Span)
class SpanAdmin(admin.ModelAdmin):
    list_display = ["name", "run", "position", "observation_kind", "is_error"]
    list_filter = ["observation_kind", "is_error"]
    raw_id_fields = ["run"]


@admin.register(Artifact)
class ArtifactAdmin(admin.ModelAdmin):
    list_display = ["name", "run", "size"]
    raw_id_fields = ["run"]
