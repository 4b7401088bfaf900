from __future__ import annotations

from django.db import migrations, models

# One index per tick table instead of two. The primary key was the raw-store
# reference (raw_stream, raw_seq, source_ts) and a second index (symbol,
# source_ts) served the window reads, so every stored tick paid two b-tree
# inserts. The key is now (symbol, source_ts, raw_seq, raw_stream): the same
# columns plus the symbol, so it still makes a re-ingested raw record a
# conflict (a raw record always parses to the same symbol and time), and it is
# the order the window reads ask for (by symbol, then time, then sequence).
# Partitions take the new key from the parent.
FORWARD = """
ALTER TABLE ingestion_quote DROP CONSTRAINT ingestion_quote_pkey;
ALTER TABLE ingestion_quote ADD CONSTRAINT ingestion_quote_pkey PRIMARY KEY (symbol, source_ts, raw_seq, raw_stream);
DROP INDEX IF EXISTS ingestion_quote_symbol_ts;
ALTER TABLE ingestion_trade DROP CONSTRAINT ingestion_trade_pkey;
ALTER TABLE ingestion_trade ADD CONSTRAINT ingestion_trade_pkey PRIMARY KEY (symbol, source_ts, raw_seq, raw_stream);
DROP INDEX IF EXISTS ingestion_trade_symbol_ts;
"""
BACKWARD = """
ALTER TABLE ingestion_quote DROP CONSTRAINT ingestion_quote_pkey;
ALTER TABLE ingestion_quote ADD CONSTRAINT ingestion_quote_pkey PRIMARY KEY (raw_stream, raw_seq, source_ts);
CREATE INDEX IF NOT EXISTS ingestion_quote_symbol_ts ON ingestion_quote (symbol, source_ts);
ALTER TABLE ingestion_trade DROP CONSTRAINT ingestion_trade_pkey;
ALTER TABLE ingestion_trade ADD CONSTRAINT ingestion_trade_pkey PRIMARY KEY (raw_stream, raw_seq, source_ts);
CREATE INDEX IF NOT EXISTS ingestion_trade_symbol_ts ON ingestion_trade (symbol, source_ts);
"""


def _key() -> models.CompositePrimaryKey:
    return models.CompositePrimaryKey(
        "symbol", "source_ts", "raw_seq", "raw_stream", blank=True, editable=False, primary_key=True, serialize=False
    )


class Migration(migrations.Migration):
    dependencies = [
        ("ingestion", "0003_rawstream_ingestedfile_wider_stream"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[migrations.RunSQL(FORWARD, reverse_sql=BACKWARD)],
            state_operations=[
                migrations.AlterField(model_name="quote", name="pk", field=_key()),
                migrations.AlterField(model_name="trade", name="pk", field=_key()),
            ],
        ),
    ]
