from django.contrib import admin

from loopsite.admin import AuditedAdmin

from .models import (Agent, Artifact, Batch, Dataroom, DataroomFile, Harness, HarnessDraft, Question, Run, Span,
                     WebhookDelivery)


@admin.register(Agent)
class AgentAdmin(AuditedAdmin):
    list_display = ["name", "slug", "kind", "token_prefix", "token_revoked_at", "created_at"]
    readonly_fields = ["token_hash", "token_prefix", "token_created_at"]
    exclude = ["endpoint_header_value", "webhook_secret"]  # credentials: set on the agent page, never shown back


@admin.register(Harness)
class HarnessAdmin(AuditedAdmin):
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
class DataroomAdmin(AuditedAdmin):
    list_display = ["name", "file_count", "total_bytes", "created_by", "created_at"]
    inlines = [DataroomFileInline]


@admin.register(DataroomFile)
class DataroomFileAdmin(AuditedAdmin):
    list_display = ["path", "dataroom", "size"]
    list_filter = ["dataroom"]
    search_fields = ["path"]
    exclude = ["content"]


@admin.register(Question)
class QuestionAdmin(AuditedAdmin):
    list_display = ["text", "bank_index", "is_default"]
    list_filter = ["is_default"]


@admin.register(Batch)
class BatchAdmin(AuditedAdmin):
    list_display = ["id", "harness", "dataroom", "created_by", "created_at"]


@admin.register(Run)
class RunAdmin(AuditedAdmin):
    list_display = ["id", "label", "harness", "dataroom", "status", "attempts", "created_at", "finished_at"]
    list_filter = ["status", "harness", "dataroom"]
    search_fields = ["trace_id", "label", "question__text"]
    raw_id_fields = ["question", "batch"]


@admin.register(Span)
class SpanAdmin(AuditedAdmin):
    list_display = ["name", "run", "position", "observation_kind", "is_error"]
    list_filter = ["observation_kind", "is_error"]
    raw_id_fields = ["run"]


@admin.register(Artifact)
class ArtifactAdmin(AuditedAdmin):
    list_display = ["name", "run", "size"]
    raw_id_fields = ["run"]


@admin.register(HarnessDraft)
class HarnessDraftAdmin(AuditedAdmin):
    list_display = ["id", "base", "version", "status", "attempts", "model_name", "requested_by", "created_at"]
    list_filter = ["status"]
    raw_id_fields = ["base", "requested_by"]


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(AuditedAdmin):
    list_display = ["id", "agent", "event", "status", "attempts", "response_code", "created_at"]
    list_filter = ["status", "event"]
    raw_id_fields = ["agent"]
