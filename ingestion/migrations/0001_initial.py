from __future__ import annotations

from django.db import migrations, models

PARTITIONED_SQL = """
CREATE TABLE ingestion_quote (
    raw_stream varchar(64) NOT NULL,
    raw_seq bigint NOT NULL,
    symbol varchar(32) NOT NULL,
    source_ts timestamptz NOT NULL,
    recv_ts timestamptz NOT NULL,
    bid numeric(30, 12) NOT NULL,
    bid_size numeric(30, 12) NOT NULL,
    ask numeric(30, 12) NOT NULL,
    ask_size numeric(30, 12) NOT NULL,
    PRIMARY KEY (raw_stream, raw_seq, source_ts)
) PARTITION BY RANGE (source_ts);
CREATE INDEX ingestion_quote_symbol_ts ON ingestion_quote (symbol, source_ts);
CREATE TABLE ingestion_quote_default PARTITION OF ingestion_quote DEFAULT;

CREATE TABLE ingestion_trade (
    raw_stream varchar(64) NOT NULL,
    raw_seq bigint NOT NULL,
    symbol varchar(32) NOT NULL,
    source_ts timestamptz NOT NULL,
    recv_ts timestamptz NOT NULL,
    price numeric(30, 12) NOT NULL,
    size numeric(30, 12) NOT NULL,
    aggressor varchar(4) NOT NULL DEFAULT '',
    trade_id varchar(64) NOT NULL,
    PRIMARY KEY (raw_stream, raw_seq, source_ts)
) PARTITION BY RANGE (source_ts);
CREATE INDEX ingestion_trade_symbol_ts ON ingestion_trade (symbol, source_ts);
CREATE TABLE ingestion_trade_default PARTITION OF ingestion_trade DEFAULT;
"""


class Migration(migrations.Migration):
    initial = True
    dependencies: list = []

    operations = [
        migrations.CreateModel(
            name="Instrument",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("symbol", models.CharField(max_length=32, unique=True)),
                ("venue", models.CharField(default="sim", max_length=32)),
                ("tick_size", models.DecimalField(decimal_places=12, max_digits=24)),
                ("lot_size", models.DecimalField(decimal_places=12, max_digits=24)),
                ("active", models.BooleanField(default=True)),
            ],
        ),
        migrations.RunSQL(PARTITIONED_SQL, reverse_sql="DROP TABLE ingestion_quote; DROP TABLE ingestion_trade;"),
    ]
