from __future__ import annotations

import uuid

from django.contrib.postgres.fields import ArrayField
from django.db import models
from simple_history.models import HistoricalRecords

from automations.models import Automation

_MONEY = {"max_digits": 30, "decimal_places": 12, "null": True, "blank": True}


class RiskLimit(models.Model):
    """Limits for one automation, or the global ones (``automation`` is null).

    A null field means "no limit". Changed only through ``risk.services`` with
    a reason; versioned by simple-history.
    """

    automation = models.OneToOneField(Automation, null=True, blank=True, on_delete=models.CASCADE, related_name="risk_limit")
    max_signals_per_hour = models.PositiveIntegerField(null=True, blank=True)
    max_daily_loss = models.DecimalField(**_MONEY)
    max_drawdown = models.DecimalField(**_MONEY)
    max_open_orders = models.PositiveIntegerField(null=True, blank=True)
    max_order_qty = models.DecimalField(**_MONEY)
    max_order_notional = models.DecimalField(**_MONEY)
    price_collar_bps = models.DecimalField(max_digits=12, decimal_places=4, null=True, blank=True)
    max_orders_per_minute = models.PositiveIntegerField(null=True, blank=True)
    max_consecutive_losses = models.PositiveIntegerField(null=True, blank=True)
    max_slippage_breaches_per_day = models.PositiveIntegerField(null=True, blank=True)
    slippage_breach_bps = models.DecimalField(max_digits=12, decimal_places=4, default=50,
                                              help_text="A fill whose realized slippage exceeds the model by this many bps counts as a breach.")
    updated_at = models.DateTimeField(auto_now=True)

    history = HistoricalRecords(excluded_fields=["updated_at"])

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["automation"], name="risk_limit_one_per_scope", nulls_distinct=False),
        ]

    def __str__(self) -> str:
        return f"limits: {self.automation or 'global'}"


class RiskState(models.Model):
    """The counters the limits are checked against, one row per scope.

    Every pre-trade check locks this row (``SELECT ... FOR UPDATE``), checks
    and updates the counters in one transaction, so parallel workers cannot
    overshoot a limit. ``automation`` null is the global row.
    """

    automation = models.OneToOneField(Automation, null=True, blank=True, on_delete=models.CASCADE, related_name="risk_state")
    trading_day = models.DateField()
    open_orders = models.IntegerField(default=0)
    daily_realized_pnl = models.DecimalField(max_digits=30, decimal_places=12, default=0)
    daily_peak_pnl = models.DecimalField(max_digits=30, decimal_places=12, default=0)
    consecutive_losses = models.IntegerField(default=0)
    slippage_breaches_today = models.IntegerField(default=0)
    signal_times = ArrayField(models.FloatField(), default=list, blank=True, help_text="Epoch seconds of signals in the last hour.")
    order_times = ArrayField(models.FloatField(), default=list, blank=True, help_text="Epoch seconds of orders in the last minute.")
    tripped = models.BooleanField(default=False)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["automation"], name="risk_state_one_per_scope", nulls_distinct=False),
        ]

    def __str__(self) -> str:
        return f"risk state: {self.automation or 'global'}"


class GlobalSlot(models.Model):
    """One share of a global count limit, claimed by pre-trade checks without waiting for each other.

    A global open-order or orders-per-minute limit of M is split into up to
    ``risk.services.GLOBAL_SLOT_STRIPES`` rows whose ``capacity`` adds up to
    M. A check claims a row with room (``FOR UPDATE SKIP LOCKED``), a release
    frees a unit of any row; the rows' ``used`` (open orders) or the entries
    of ``times`` within the last minute (orders per minute) add up to the
    global count. Row ``n = 0`` of the open orders (capacity 0) holds what
    exceeds a limit set below the count of the moment. Written only through
    ``risk.services`` and the SQL functions of ``risk/0010``; rebuilt when
    the limit changes. See ``risk.services.pretrade_check``.
    """

    class Kind(models.TextChoices):
        OPEN_ORDERS = "open_orders", "Open orders"
        ORDER_RATE = "order_rate", "Orders per minute"

    kind = models.CharField(max_length=16, choices=Kind.choices)
    n = models.PositiveIntegerField()
    capacity = models.PositiveIntegerField()
    used = models.IntegerField(default=0)
    times = ArrayField(models.FloatField(), default=list, blank=True, help_text="Epoch seconds of orders in the last minute.")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["kind", "n"], name="risk_global_slot_one_per_kind_n"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} slot {self.n}: {self.used}/{self.capacity}"


class BreakerTrip(models.Model):
    """One breach that stopped an automation (or everything, ``automation`` null).

    ``trip_key`` is chosen before the row is written, so the same trip can be
    written twice (in the caller's transaction and by the durable backup task)
    and the unique constraint keeps exactly one.
    """

    trip_key = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    automation = models.ForeignKey(Automation, null=True, blank=True, on_delete=models.PROTECT, related_name="breaker_trips")
    limit = models.CharField(max_length=48)
    value = models.CharField(max_length=64)
    threshold = models.CharField(max_length=64)
    message = models.TextField()
    tripped_at = models.DateTimeField(db_index=True)
    reset_at = models.DateTimeField(null=True, blank=True)
    reset_by = models.CharField(max_length=150, blank=True)
    reset_reason = models.TextField(blank=True)

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["automation", "reset_at"], name="breaker_trip_open_idx")]

    def __str__(self) -> str:
        return f"{self.limit} tripped on {self.automation or 'global'}"

    @property
    def is_open(self) -> bool:
        return self.reset_at is None


class KillSwitch(models.Model):
    """The one global halt. A single row (pk=1), versioned."""

    engaged = models.BooleanField(default=False)
    reason = models.TextField(blank=True)
    changed_at = models.DateTimeField(null=True, blank=True)
    changed_by = models.CharField(max_length=150, blank=True)

    history = HistoricalRecords()

    class Meta:
        constraints = [models.CheckConstraint(condition=models.Q(id=1), name="kill_switch_singleton")]

    def __str__(self) -> str:
        return "ENGAGED" if self.engaged else "off"


class Alert(models.Model):
    class Severity(models.TextChoices):
        INFO = "info", "Info"
        WARNING = "warning", "Warning"
        CRITICAL = "critical", "Critical"

    class Delivery(models.TextChoices):
        PENDING = "pending", "Pending"
        DELIVERED = "delivered", "Delivered"
        FAILED = "failed", "Failed"
        NOT_CONFIGURED = "not_configured", "No channel configured"

    kind = models.CharField(max_length=48, db_index=True)
    severity = models.CharField(max_length=8, choices=Severity.choices)
    subject = models.CharField(max_length=200)
    message = models.TextField()
    created_at = models.DateTimeField(db_index=True)
    delivery_state = models.CharField(max_length=16, choices=Delivery.choices, default=Delivery.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0)
    last_error = models.TextField(blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    dedup_key = models.CharField(max_length=200, blank=True, db_index=True)
    delivered_channels = models.JSONField(
        default=list, blank=True, help_text="Channels (webhook, email) already delivered, so a retry never repeats them."
    )

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"[{self.severity}] {self.subject}"
