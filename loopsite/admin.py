"""Django admin writes to the audit log like every other change; audit rows are read-only there."""

import json

from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import GroupAdmin, UserAdmin
from django.contrib.auth.models import Group
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models

from .models import AuditEvent

# Long text (prompts, answers, span data) is cut in the audit log's snapshots; binary content is sized.
SNAPSHOT_MAX_CHARS = 2000
_HIDDEN = {"password"}


def admin_snapshot(obj) -> dict:
    """The object's fields and many-to-many ids as JSON-ready values (secrets hidden: passwords and a model's
    SECRET_FIELDS; long text cut)."""
    data = {}
    hidden = _HIDDEN | set(getattr(obj, "SECRET_FIELDS", ()))
    for field in obj._meta.concrete_fields:
        value = field.value_from_object(obj)
        if field.name in hidden:
            value = "(hidden)"
        elif isinstance(field, models.BinaryField):
            value = f"({len(bytes(value or b''))} bytes)"
        elif isinstance(value, str) and len(value) > SNAPSHOT_MAX_CHARS:
            value = value[:SNAPSHOT_MAX_CHARS] + f"… ({len(value)} characters)"
        data[field.attname] = value
    if obj.pk is not None:
        for field in obj._meta.many_to_many:
            data[field.name] = sorted(getattr(obj, field.name).values_list("pk", flat=True))
    return json.loads(json.dumps(data, cls=DjangoJSONEncoder, default=str))


def _changes(before: dict | None, after: dict) -> tuple[dict | None, dict]:
    """Only the keys whose values differ (everything when there is no before)."""
    if before is None:
        return None, after
    keys = [key for key in after if before.get(key) != after.get(key)]
    return {key: before.get(key) for key in keys}, {key: after[key] for key in keys}


def _record(request, *, action: str, obj, object_id, summary: str, before=None, after=None) -> None:
    user = request.user if request.user.is_authenticated else None
    AuditEvent.objects.create(
        actor=user, action=action, object_type=obj._meta.label_lower, object_id=str(object_id),
        summary=summary[:300], before=before, after=after,
    )


class AuditedAdmin(admin.ModelAdmin):
    """A ModelAdmin whose additions, changes (inline rows included) and deletions go to the audit log
    with the state before and after, as `admin.add`, `admin.change` and `admin.delete`."""

    def _pending(self, request) -> dict:
        if not hasattr(request, "_loopsite_admin_before"):
            request._loopsite_admin_before = {}
        return request._loopsite_admin_before

    def save_model(self, request, obj, form, change):
        if change and obj.pk is not None:
            stored = type(obj)._default_manager.filter(pk=obj.pk).first()
            if stored is not None:
                before = admin_snapshot(stored)
                for name in _HIDDEN:
                    if hasattr(obj, name) and getattr(stored, name) != getattr(obj, name):
                        before[name] = "(hidden: changed)"
                self._pending(request)[(obj._meta.label_lower, obj.pk)] = before
        super().save_model(request, obj, form, change)

    def save_formset(self, request, form, formset, change):
        stored = {}
        for row in formset.initial_forms:
            instance = row.instance
            if instance.pk is not None and (row.has_changed() or formset._should_delete_form(row)):
                fresh = type(instance)._default_manager.filter(pk=instance.pk).first()
                if fresh is not None:
                    stored[id(instance)] = (instance.pk, admin_snapshot(fresh))
        super().save_formset(request, form, formset, change)
        for obj in formset.new_objects:
            _record(request, action="admin.add", obj=obj, object_id=obj.pk, after=admin_snapshot(obj),
                    summary=f"Admin added {obj._meta.verbose_name} “{obj}” (inline)")
        for obj, _fields in formset.changed_objects:
            before, after = _changes(stored.get(id(obj), (None, None))[1], admin_snapshot(obj))
            _record(request, action="admin.change", obj=obj, object_id=obj.pk, before=before, after=after,
                    summary=f"Admin changed {obj._meta.verbose_name} “{obj}” (inline)")
        for obj in formset.deleted_objects:
            pk, before = stored.get(id(obj), (obj.pk, None))
            _record(request, action="admin.delete", obj=obj, object_id=pk, before=before,
                    summary=f"Admin deleted {obj._meta.verbose_name} “{obj}” (inline)")

    def log_addition(self, request, obj, message):
        entry = super().log_addition(request, obj, message)
        _record(request, action="admin.add", obj=obj, object_id=obj.pk, after=admin_snapshot(obj),
                summary=f"Admin added {obj._meta.verbose_name} “{obj}”")
        return entry

    def log_change(self, request, obj, message):
        entry = super().log_change(request, obj, message)
        before = self._pending(request).pop((obj._meta.label_lower, obj.pk), None)
        after = admin_snapshot(obj)
        if before is not None:
            before, after = _changes(before, after)
        detail = entry.get_change_message() if entry is not None else ""
        _record(request, action="admin.change", obj=obj, object_id=obj.pk, before=before, after=after,
                summary=f"Admin changed {obj._meta.verbose_name} “{obj}”" + (f": {detail}" if detail else ""))
        return entry

    def log_deletions(self, request, queryset):
        entries = super().log_deletions(request, queryset)
        for obj in queryset:
            _record(request, action="admin.delete", obj=obj, object_id=obj.pk, before=admin_snapshot(obj),
                    summary=f"Admin deleted {obj._meta.verbose_name} “{obj}”")
        return entries


# Users and roles are managed here too: their admin pages are audited like the rest.
admin.site.unregister(get_user_model())
admin.site.unregister(Group)


@admin.register(get_user_model())
class AuditedUserAdmin(AuditedAdmin, UserAdmin):
    pass


@admin.register(Group)
class AuditedGroupAdmin(AuditedAdmin, GroupAdmin):
    pass


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    list_display = ["created_at", "actor", "action", "object_type", "object_id", "summary"]
    list_filter = ["action", "object_type"]
    search_fields = ["object_id", "summary", "actor__username"]
    readonly_fields = [f.name for f in AuditEvent._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
