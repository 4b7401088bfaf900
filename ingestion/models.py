from __future__ import annotations

from django.db import models


class Instrument(models.Model):
    """A tradable symbol the platform knows; ticks for unknown symbols are quarantined."""

    symbol = models.CharField(max_length=32, unique=True)
    venue = models.CharField(max_length=32, default="sim")
    tick_size = models.DecimalField(max_digits=24, decimal_places=12)
    lot_size = models.DecimalField(max_digits=24, decimal_places=12)
    active = models.BooleanField(default=True)

    def __str__(self) -> str:
        return self.symbol


class Quote(models.Model):
    """L1 quote. Partitioned by day on ``source_ts`` (created in the migration).

    Both clocks are kept side by side: ``source_ts`` (the venue's) and
    ``recv_ts`` (ours). The primary key is the raw-store reference, so
    ingesting the same raw record twice adds nothing.
    """

    pk = models.CompositePrimaryKey("raw_stream", "raw_seq", "source_ts")
    raw_stream = models.CharField(max_length=64)
    raw_seq = models.BigIntegerField()
    symbol = models.CharField(max_length=32)
    source_ts = models.DateTimeField()
    recv_ts = models.DateTimeField()
    bid = models.DecimalField(max_digits=30, decimal_places=12)
    bid_size = models.DecimalField(max_digits=30, decimal_places=12)
    ask = models.DecimalField(max_digits=30, decimal_places=12)
    ask_size = models.DecimalField(max_digits=30, decimal_places=12)

    class Meta:
        managed = False
        db_table = "ingestion_quote"


class Trade(models.Model):
    """A trade print (time and sales), partitioned like ``Quote``."""

    pk = models.CompositePrimaryKey("raw_stream", "raw_seq", "source_ts")
    raw_stream = models.CharField(max_length=64)
    raw_seq = models.BigIntegerField()
    symbol = models.CharField(max_length=32)
    source_ts = models.DateTimeField()
    recv_ts = models.DateTimeField()
    price = models.DecimalField(max_digits=30, decimal_places=12)
    size = models.DecimalField(max_digits=30, decimal_places=12)
    aggressor = models.CharField(max_length=4, blank=True)
    trade_id = models.CharField(max_length=64)

    class Meta:
        managed = False
        db_table = "ingestion_trade"


class QuarantinedMessage(models.Model):
    """A raw message, or a tick from it, that failed parsing or validation.

    The message stays in the raw store; this row says why it was not used and
    points back at it by stream and sequence number.
    """

    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    raw_stream = models.CharField(max_length=64)
    raw_seq = models.BigIntegerField()
    symbol = models.CharField(max_length=32, blank=True)
    code = models.CharField(max_length=48, db_index=True)
    reason = models.TextField()
    payload_excerpt = models.TextField(blank=True)

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(fields=["raw_stream", "raw_seq", "code"], name="quarantine_once_per_reason"),
        ]

    def __str__(self) -> str:
        return f"{self.raw_stream}#{self.raw_seq} {self.code}"


class ClockSource(models.Model):
    """The latest clock estimate of one source (venue clock against ours)."""

    source = models.CharField(max_length=64, unique=True)
    updated_at = models.DateTimeField()
    baseline_ms = models.FloatField()
    offset_ms = models.FloatField()
    jitter_ms = models.FloatField(default=0.0)
    samples = models.BigIntegerField(default=0)
    drift_alert = models.BooleanField(default=False)

    def __str__(self) -> str:
        return f"{self.source}: offset {self.offset_ms:.1f} ms"
