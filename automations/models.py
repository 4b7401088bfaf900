from __future__ import annotations

from django.conf import settings
from django.db import models
from simple_history.models import HistoricalRecords


class Automation(models.Model):
    """A strategy running on one symbol, with its gating and regime rules.

    Every change goes through ``automations.services`` with a reason, and is
    versioned by simple-history.
    """

    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        PAUSED = "paused", "Paused"
        HALTED = "halted", "Halted"

    class Mode(models.TextChoices):
        PAPER = "paper", "Paper"
        LIVE = "live", "Live"

    name = models.CharField(max_length=100, unique=True)
    symbol = models.CharField(max_length=32, db_index=True)
    strategy = models.CharField(max_length=64)
    parameters = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PAUSED, db_index=True)
    mode = models.CharField(max_length=8, choices=Mode.choices, default=Mode.PAPER)
    approval_threshold = models.PositiveIntegerField(
        default=10, help_text="The first N trades of this automation need a trader's OTP approval."
    )
    require_approval = models.BooleanField(default=False, help_text="Every trade needs approval, whatever the count.")
    approved_trade_count = models.PositiveIntegerField(default=0)
    automatic_trade_count = models.PositiveIntegerField(default=0)
    allowed_regimes = models.JSONField(
        default=dict,
        blank=True,
        help_text='Regimes this automation may trade in, e.g. {"volatility": ["low", "normal"]}; empty allows all.',
    )
    signal_expiry_seconds = models.PositiveIntegerField(default=120)
    four_eyes = models.BooleanField(
        default=False, help_text="The approver cannot be the last person who changed this automation."
    )
    snapshot_levels = models.PositiveSmallIntegerField(default=20)
    last_changed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    history = HistoricalRecords(excluded_fields=["approved_trade_count", "automatic_trade_count", "updated_at"])

    class Meta:
        constraints = [
            models.CheckConstraint(condition=models.Q(signal_expiry_seconds__gte=1), name="automation_expiry_positive"),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def gated_trades_remaining(self) -> int:
        return max(0, self.approval_threshold - self.approved_trade_count)


class L2Snapshot(models.Model):
    """The top levels of the book at signal time, compressed, with a SHA-256.

    ``storage`` says where the bytes are: hot rows keep ``data``; archived rows
    keep ``archive_ref`` and the hash, so the signal's reference keeps working.
    """

    class Storage(models.TextChoices):
        HOT = "hot", "Hot"
        ARCHIVE = "archive", "Archive"

    symbol = models.CharField(max_length=32)
    ts = models.DateTimeField(db_index=True)
    levels = models.PositiveSmallIntegerField()
    data = models.BinaryField(null=True, blank=True)
    sha256 = models.CharField(max_length=64)
    storage = models.CharField(max_length=8, choices=Storage.choices, default=Storage.HOT)
    archive_ref = models.CharField(max_length=255, blank=True)
    archived_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["storage", "ts"], name="l2snapshot_storage_ts")]

    def __str__(self) -> str:
        return f"{self.symbol} @ {self.ts:%Y-%m-%d %H:%M:%S}"


class Signal(models.Model):
    """A strategy's intent, with the market context it was born in."""

    class Status(models.TextChoices):
        NEW = "new", "New"
        FILTERED = "filtered", "Filtered"
        PENDING_APPROVAL = "pending_approval", "Pending approval"
        QUEUED = "queued", "Queued"
        APPROVED = "approved", "Approved"
        REJECTED = "rejected", "Rejected"
        EXPIRED = "expired", "Expired"
        ORDERED = "ordered", "Ordered"
        FILLED = "filled", "Filled"
        FAILED = "failed", "Failed"

    class Side(models.TextChoices):
        BUY = "buy", "Buy"
        SELL = "sell", "Sell"

    # No single-column indexes on automation or status: signal_automation_created and signal_status_expiry
    # lead with them and serve every filter on them; each index is a write per signal on the detect path.
    automation = models.ForeignKey(Automation, on_delete=models.PROTECT, related_name="signals", db_index=False)
    symbol = models.CharField(max_length=32)
    side = models.CharField(max_length=4, choices=Side.choices)
    quantity = models.DecimalField(max_digits=30, decimal_places=12)
    limit_price = models.DecimalField(max_digits=30, decimal_places=12)
    reason = models.TextField()
    features = models.JSONField(default=dict, blank=True)
    regime = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.NEW)
    status_reason = models.TextField(blank=True)
    needs_approval = models.BooleanField(default=False)
    bid = models.DecimalField(max_digits=30, decimal_places=12, null=True, blank=True)
    ask = models.DecimalField(max_digits=30, decimal_places=12, null=True, blank=True)
    mid = models.DecimalField(max_digits=30, decimal_places=12, null=True, blank=True)
    spread_bps = models.FloatField(null=True, blank=True)
    market_ts = models.DateTimeField(null=True, blank=True, help_text="Venue time of the data the signal was computed on.")
    market_ts_ns = models.BigIntegerField(
        null=True,
        blank=True,
        help_text="The same venue time in ns: with the automation and side it makes a signal unique.",
    )
    snapshot = models.ForeignKey(L2Snapshot, null=True, blank=True, on_delete=models.PROTECT, related_name="signals")
    created_at = models.DateTimeField(db_index=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    decided_at = models.DateTimeField(null=True, blank=True)
    sequence = models.BigIntegerField(default=0, help_text="Push sequence of the last change, for websocket clients.")

    class Meta:
        ordering = ["-id"]
        indexes = [
            models.Index(fields=["automation", "created_at"], name="signal_automation_created"),
            models.Index(fields=["status", "expires_at"], name="signal_status_expiry"),
            models.Index(fields=["sequence"], name="signal_sequence"),
        ]
        constraints = [
            models.CheckConstraint(condition=models.Q(quantity__gt=0), name="signal_quantity_positive"),
            models.CheckConstraint(condition=models.Q(limit_price__gt=0), name="signal_price_positive"),
            # Detection remembers the last data it evaluated per automation in
            # Redis; this is the backstop when that memory is lost (a crash
            # between commit and the Redis write, a flushed Redis): one quote
            # never yields two signals of the same side for one automation.
            models.UniqueConstraint(
                fields=["automation", "market_ts_ns", "side"],
                condition=models.Q(market_ts_ns__isnull=False),
                name="signal_once_per_market_data",
            ),
        ]

    def __str__(self) -> str:
        return f"Signal {self.pk} {self.side} {self.quantity} {self.symbol} @ {self.limit_price} ({self.status})"


class SignalTransition(models.Model):
    """Every state change of a signal, in order: its full story."""

    signal = models.ForeignKey(Signal, on_delete=models.PROTECT, related_name="transitions")
    at = models.DateTimeField()
    from_status = models.CharField(max_length=20, blank=True)
    to_status = models.CharField(max_length=20)
    actor_label = models.CharField(max_length=150)
    reason = models.TextField(blank=True)
    sequence = models.BigIntegerField(default=0, help_text="Push sequence number this change was broadcast with.")

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"signal {self.signal_id}: {self.from_status or '-'} -> {self.to_status}"
