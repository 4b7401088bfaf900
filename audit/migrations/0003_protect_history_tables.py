"""Append-only triggers and filter indexes on every simple-history table."""

from django.db import migrations

from audit.protection import protect_history_tables_migration


class Migration(migrations.Migration):

    dependencies = [
        ("audit", "0002_historicalroleassignment_roleassignment_and_more"),
        ("automations", "0001_initial"),
        ("risk", "0001_initial"),
        ("execution", "0001_initial"),
    ]

    operations = [
        migrations.RunPython(protect_history_tables_migration, migrations.RunPython.noop, elidable=False),
    ]
