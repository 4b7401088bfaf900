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
    ``recv_ts`` (ours). The primary key (symbol, venue time, raw-store
    reference) makes ingesting the same raw record twice add nothing, and is
    the order window reads use (migration 0004).
    """

    pk = models.CompositePrimaryKey("symbol", "source_ts", "raw_seq", "raw_stream")
    raw_stream = models.CharField(max_length=128)
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

    def __str__(self) -> str:
        return f"{self.symbol} {self.bid}/{self.ask} @ {self.source_ts.isoformat()}"


class Trade(models.Model):
    """A trade print (time and sales), partitioned like ``Quote``."""

    pk = models.CompositePrimaryKey("symbol", "source_ts", "raw_seq", "raw_stream")
    raw_stream = models.CharField(max_length=128)
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

    def __str__(self) -> str:
        return f"{self.symbol} {self.size} @ {self.price} {self.source_ts.isoformat()}"


class QuarantinedMessage(models.Model):
    """A raw message, or a tick from it, that failed parsing or validation.

    The message stays in the raw store; this row says why it was not used and
    points back at it by stream and sequence number.
    """

    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    raw_stream = models.CharField(max_length=128)
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

    source = models.CharField(max_length=128, unique=True)
    updated_at = models.DateTimeField()
    baseline_ms = models.FloatField()
    offset_ms = models.FloatField()
    jitter_ms = models.FloatField(default=0.0)
    samples = models.BigIntegerField(default=0)
    drift_alert = models.BooleanField(default=False)

    def __str__(self) -> str:
        return f"{self.source}: offset {self.offset_ms:.1f} ms"


class RawStream(models.Model):
    """What a raw-store stream holds, so ``replay_raw`` can parse it without being told.

    Written the first time a stream is used (by the feed, ``ingest_file`` or
    the live connector) and never changed afterwards: the raw bytes of a
    stream are only meaningful in the format they were recorded in.
    ``symbol`` is the parser's symbol argument for formats that need it (a
    Binance REST depth snapshot names no symbol). ``check_symbols`` says
    whether ticks for symbols outside the active ``Instrument`` set are
    quarantined: on for live and simulated streams, off for a recorded file
    an operator chose to load (``--symbol`` still pins the file's symbol).
    """

    name = models.CharField(max_length=128, unique=True)
    fmt = models.CharField(max_length=32)
    symbol = models.CharField(max_length=32, blank=True)
    check_symbols = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.name} ({self.fmt})"


class IngestedFile(models.Model):
    """One recorded file loaded by ``ingest_file`` into one raw stream.

    The file's SHA-256 is unique per stream, so loading the same bytes twice
    is refused instead of appending them to the raw store a second time
    (which would give every tick a second raw reference and so a second
    row). ``status`` lets a crashed load resume: ``appending`` means the raw
    store holds a prefix of the file from ``first_seq`` on; ``stored`` means
    all of it is in the raw store; ``ingested``/``queued`` mean the ticks
    were stored inline or handed to the ingest queue.
    """

    class Status(models.TextChoices):
        APPENDING = "appending"
        STORED = "stored"
        QUEUED = "queued"
        INGESTED = "ingested"

    stream = models.CharField(max_length=128)
    sha256 = models.CharField(max_length=64)
    fmt = models.CharField(max_length=32)
    path = models.TextField()
    size_bytes = models.BigIntegerField()
    first_seq = models.BigIntegerField()
    last_seq = models.BigIntegerField(null=True, blank=True)
    records = models.BigIntegerField(default=0)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.APPENDING)
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["stream", "sha256"], name="ingested_file_once_per_stream"),
        ]

    def __str__(self) -> str:
        return f"{self.path} -> {self.stream} ({self.status})"
