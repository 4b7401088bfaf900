"""Orders, fills and approvals are read-only records; broker settings change with a reason."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from audit.admin_tools import (
    ExportMixin,
    FastChangelistMixin,
    ReadOnlyAdminMixin,
    ReasonRequiredAdminMixin,
    StaffUserFilter,
    date_range_filter,
    register_history,
)
from execution.models import Approval, BrokerAccount, Fill, Order


class FillInline(admin.TabularInline):
    model = Fill
    extra = 0
    can_delete = False
    readonly_fields = ("filled_at", "price", "quantity", "fee", "broker_fill_id", "modelled_slippage_bps",
                       "realized_slippage_bps", "realized_pnl")
    fields = readonly_fields

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


_ORDER_FROM, _ORDER_TO = date_range_filter("created_at")


@admin.register(Order)
class OrderAdmin(FastChangelistMixin, ExportMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("id", "created_at", "client_order_id", "automation", "symbol", "side", "quantity", "limit_price",
                    "status", "filled_qty", "avg_fill_price", "gated")
    list_filter = ("status", "gated", "broker", "automation", _ORDER_FROM, _ORDER_TO)
    list_select_related = ("automation",)
    search_fields = ("=client_order_id", "=broker_order_id", "=signal__id")
    inlines = [FillInline]
    ordering = ("-id",)


@admin.register(Fill)
class FillAdmin(FastChangelistMixin, ExportMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("id", "filled_at", "order", "price", "quantity", "fee", "modelled_slippage_bps",
                    "realized_slippage_bps", "realized_pnl")
    search_fields = ("=order__client_order_id", "=broker_fill_id")
    ordering = ("-id",)


_DECIDED_FROM, _DECIDED_TO = date_range_filter("decided_at")


@admin.register(Approval)
class ApprovalAdmin(FastChangelistMixin, ExportMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("id", "decided_at", "signal", "decision", "user", "device_id", "order_hash", "reason")
    list_filter = ("decision", ("user", StaffUserFilter), _DECIDED_FROM, _DECIDED_TO)
    list_select_related = ("user", "signal")
    search_fields = ("=order_hash", "=signal__id", "reason")
    ordering = ("-id",)


@admin.register(BrokerAccount)
class BrokerAccountAdmin(ReasonRequiredAdminMixin, admin.ModelAdmin):
    """Broker settings only; credentials never live in the database."""

    list_display = ("name", "kind", "exchange_id", "sandbox", "active")
    list_filter = ("kind", "sandbox", "active")


register_history(admin.site, BrokerAccount)
