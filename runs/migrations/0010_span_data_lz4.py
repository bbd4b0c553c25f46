"""Span JSON is compressed with LZ4 in PostgreSQL (14 and later, when built with it) instead of the slower
default (pglz): the ingest spends less time in TOAST. Other databases, and a server without LZ4, are left as
they are."""

from django.db import DatabaseError, migrations, transaction


def _set_compression(apps, schema_editor, method: str) -> None:
    connection = schema_editor.connection
    if connection.vendor != "postgresql" or connection.pg_version < 140000:
        return
    table = schema_editor.quote_name(apps.get_model("runs", "Span")._meta.db_table)
    try:
        with transaction.atomic(using=connection.alias):
            schema_editor.execute(f"ALTER TABLE {table} ALTER COLUMN data SET COMPRESSION {method}")
    except DatabaseError:  # built without LZ4: pglz stays
        pass


def span_data_lz4(apps, schema_editor):
    _set_compression(apps, schema_editor, "lz4")


def span_data_default(apps, schema_editor):
    _set_compression(apps, schema_editor, "DEFAULT")


class Migration(migrations.Migration):
    dependencies = [("runs", "0009_agent_webhook")]

    operations = [migrations.RunPython(span_data_lz4, span_data_default)]
