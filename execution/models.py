from __future__ import annotations

from django.conf import settings
from django.db import models
from simple_history.models import HistoricalRecords

from automations.models import Automation, Signal


class Order(models.Model):
    """One order per signal; ``client_order_id`` derives from the signal, so a
    redelivered or duplicated execute task can never place a second order."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        SUBMITTING = "submitting", "Submitting"
        SUBMITTED = "submitted", "Submitted"
        PARTIALLY_FILLED = "partially_filled", "Partially filled"
        FILLED = "filled", "Filled"
        CANCELLED = "cancelled", "Cancelled"
        REJECTED = "rejected", "Rejected"
        FAILED = "failed", "Failed"

    OPEN_STATUSES = (Status.PENDING, Status.SUBMITTING, Status.SUBMITTED, Status.PARTIALLY_FILLED)

    signal = models.OneToOneField(Signal, on_delete=models.PROTECT, related_name="order")
    automation = models.ForeignKey(Automation, on_delete=models.PROTECT, related_name="orders")
    client_order_id = models.CharField(max_length=64, unique=True)
    broker = models.CharField(max_length=32)
    broker_order_id = models.CharField(max_length=128, blank=True)
    symbol = models.CharField(max_length=32)
    side = models.CharField(max_length=4)
    quantity = models.DecimalField(max_digits=30, decimal_places=12)
    limit_price = models.DecimalField(max_digits=30, decimal_places=12)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PENDING, db_index=True)
    status_reason = models.TextField(blank=True)
    filled_qty = models.DecimalField(max_digits=30, decimal_places=12, default=0)
    avg_fill_price = models.DecimalField(max_digits=30, decimal_places=12, null=True, blank=True)
    arrival_mid = models.DecimalField(max_digits=30, decimal_places=12, null=True, blank=True)
    modelled_slippage_bps = models.FloatField(null=True, blank=True)
    gated = models.BooleanField(default=False, help_text="Placed after a human approval.")
    created_at = models.DateTimeField(db_index=True)
    submitted_at = models.DateTimeField(null=True, blank=True)
    closed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.CheckConstraint(condition=models.Q(quantity__gt=0), name="order_quantity_positive"),
        ]

    def __str__(self) -> str:
        return f"{self.client_order_id} {self.side} {self.quantity} {self.symbol} ({self.status})"


class Fill(models.Model):
    order = models.ForeignKey(Order, on_delete=models.PROTECT, related_name="fills")
    # The order's automation, copied so the automation's latest fills (its position, its slippage window) are
    # an index range (``fill_automation_latest``) instead of a join over every order it ever had. Set by
    # ``save`` from the order; the execute worker's own insert sets it too. Null only on rows older than it.
    automation = models.ForeignKey(Automation, on_delete=models.PROTECT, related_name="+", null=True, blank=True,
                                   db_index=False)
    price = models.DecimalField(max_digits=30, decimal_places=12)
    quantity = models.DecimalField(max_digits=30, decimal_places=12)
    fee = models.DecimalField(max_digits=30, decimal_places=12, default=0)
    filled_at = models.DateTimeField()
    broker_fill_id = models.CharField(max_length=128)
    modelled_slippage_bps = models.FloatField(null=True, blank=True)
    realized_slippage_bps = models.FloatField(null=True, blank=True)
    realized_pnl = models.DecimalField(max_digits=30, decimal_places=12, default=0)
    # The automation's position once this fill was booked (fills are booked in id order, one automation at a
    # time): the next fill starts from here instead of replaying every fill. Null on fills booked before.
    position_after = models.DecimalField(max_digits=30, decimal_places=12, null=True, blank=True)
    avg_price_after = models.DecimalField(max_digits=30, decimal_places=12, null=True, blank=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["order", "broker_fill_id"], name="fill_once_per_broker_fill"),
            models.CheckConstraint(condition=models.Q(quantity__gt=0), name="fill_quantity_positive"),
        ]
        indexes = [models.Index(fields=["automation", "-id"], name="fill_automation_latest")]

    def __str__(self) -> str:
        return f"fill {self.broker_fill_id}: {self.quantity} @ {self.price}"

    def save(self, *args: object, **kwargs: object) -> None:
        if self.automation_id is None and self.order_id is not None:
            self.automation_id = self.order.automation_id
        super().save(*args, **kwargs)


class Approval(models.Model):
    """A trader's OTP-verified approval of one signal's order.

    ``order_hash`` binds the approval to the exact order (symbol, side,
    quantity, limit price, signal id), so it cannot be reused for another.
    """

    signal = models.OneToOneField(Signal, on_delete=models.PROTECT, related_name="approval")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="approvals")
    device_id = models.CharField(max_length=64)
    decision = models.CharField(max_length=8, choices=[("approve", "Approve"), ("reject", "Reject")])
    reason = models.TextField(blank=True)
    order_hash = models.CharField(max_length=64, unique=True)
    decided_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"{self.decision} signal {self.signal_id} by {self.user}"


class BrokerAccount(models.Model):
    """Broker settings (never secrets: credentials live only in the execute worker's environment)."""

    class Kind(models.TextChoices):
        PAPER = "paper", "Paper"
        CCXT = "ccxt", "ccxt venue"

    name = models.CharField(max_length=64, unique=True)
    kind = models.CharField(max_length=8, choices=Kind.choices, default=Kind.PAPER)
    exchange_id = models.CharField(max_length=32, blank=True)
    sandbox = models.BooleanField(default=True)
    api_base_url = models.URLField(blank=True)
    active = models.BooleanField(default=True)

    history = HistoricalRecords()

    def __str__(self) -> str:
        return self.name
