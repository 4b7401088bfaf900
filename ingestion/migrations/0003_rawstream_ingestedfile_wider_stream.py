from __future__ import annotations

from django.db import migrations, models

# Raw-store stream names may be up to 128 characters (ingestion.rawstore);
# the tick tables are created in SQL (partitioned), so they are widened in SQL
# too. Growing a varchar rewrites nothing in PostgreSQL.
WIDEN_SQL = """
ALTER TABLE ingestion_quote ALTER COLUMN raw_stream TYPE varchar(128);
ALTER TABLE ingestion_trade ALTER COLUMN raw_stream TYPE varchar(128);
"""
NARROW_SQL = """
ALTER TABLE ingestion_quote ALTER COLUMN raw_stream TYPE varchar(64);
ALTER TABLE ingestion_trade ALTER COLUMN raw_stream TYPE varchar(64);
"""


class Migration(migrations.Migration):
    dependencies = [
        ("ingestion", "0002_quote_trade_clocksource_quarantinedmessage"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[migrations.RunSQL(WIDEN_SQL, reverse_sql=NARROW_SQL)],
            state_operations=[
                migrations.AlterField(model_name="quote", name="raw_stream", field=models.CharField(max_length=128)),
                migrations.AlterField(model_name="trade", name="raw_stream", field=models.CharField(max_length=128)),
            ],
        ),
        migrations.AlterField(model_name="quarantinedmessage", name="raw_stream", field=models.CharField(max_length=128)),
        migrations.AlterField(model_name="clocksource", name="source", field=models.CharField(max_length=128, unique=True)),
        migrations.CreateModel(
            name="RawStream",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("name", models.CharField(max_length=128, unique=True)),
                ("fmt", models.CharField(max_length=32)),
                ("symbol", models.CharField(blank=True, max_length=32)),
                ("check_symbols", models.BooleanField(default=True)),
                ("created_at", models.DateTimeField(auto_now_add=True)),
            ],
        ),
        migrations.CreateModel(
            name="IngestedFile",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("stream", models.CharField(max_length=128)),
                ("sha256", models.CharField(max_length=64)),
                ("fmt", models.CharField(max_length=32)),
                ("path", models.TextField()),
                ("size_bytes", models.BigIntegerField()),
                ("first_seq", models.BigIntegerField()),
                ("last_seq", models.BigIntegerField(blank=True, null=True)),
                ("records", models.BigIntegerField(default=0)),
                ("status", models.CharField(choices=[("appending", "Appending"), ("stored", "Stored"), ("queued", "Queued"), ("ingested", "Ingested")], default="appending", max_length=16)),
                ("created_at", models.DateTimeField(auto_now_add=True)),
                ("finished_at", models.DateTimeField(blank=True, null=True)),
            ],
            options={
                "constraints": [models.UniqueConstraint(fields=("stream", "sha256"), name="ingested_file_once_per_stream")],
            },
        ),
    ]
