"""Risk admin: limits (with a reason), kill switch and breaker resets through risk.services."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.http import HttpRequest

from audit.admin_tools import (
    ExportMixin,
    FastChangelistMixin,
    ReadOnlyAdminMixin,
    ReasonActionForm,
    ReasonRequiredAdminMixin,
    action_reason,
    call_service,
    date_range_filter,
    register_history,
)
from risk.models import Alert, BreakerTrip, KillSwitch, RiskLimit, RiskState
from risk.selectors import global_open_orders, user_is_risk_officer

_LIMIT_FIELDS = ("max_signals_per_hour", "max_daily_loss", "max_drawdown", "max_open_orders", "max_order_qty",
                 "max_order_notional", "price_collar_bps", "max_orders_per_minute", "max_consecutive_losses",
                 "max_slippage_breaches_per_day", "slippage_breach_bps")


@admin.register(RiskLimit)
class RiskLimitAdmin(ReasonRequiredAdminMixin, FastChangelistMixin, admin.ModelAdmin):
    list_display = ("__str__", "max_signals_per_hour", "max_daily_loss", "max_drawdown", "max_open_orders",
                    "max_order_qty", "max_order_notional", "price_collar_bps", "updated_at")
    readonly_fields = ("updated_at",)

    def save_model(self, request: HttpRequest, obj: RiskLimit, form: Any, change: bool) -> None:
        values = {name: form.cleaned_data.get(name) for name in _LIMIT_FIELDS
                  if name in form.changed_data or not change}
        result = call_service(self, request, "risk.services.risk_limit_set", automation=form.cleaned_data.get("automation"),
                              actor=request.user, reason=form.cleaned_data["change_reason"], **values)
        if result is not None:
            obj.pk = result.pk
            obj._state.adding = False


class KillSwitchActionForm(ReasonActionForm):
    # Releasing needs a fresh OTP from a risk officer, as in the API.
    otp_token = forms.CharField(required=False, label="OTP (to release)", widget=forms.TextInput(attrs={"size": 8}))


@admin.register(KillSwitch)
class KillSwitchAdmin(FastChangelistMixin, admin.ModelAdmin):
    """The global halt: engaged and released only by the actions, which call risk.services."""

    list_display = ("__str__", "engaged", "changed_at", "changed_by", "reason")
    readonly_fields = ("engaged", "reason", "changed_at", "changed_by")
    actions = ["engage", "release"]
    action_form = KillSwitchActionForm

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        # The kill switch actions work on the singleton whatever is selected; list them even with no rows.
        return super().get_actions(request)

    @admin.action(description="ENGAGE the kill switch (reason required)", permissions=["change"])
    def engage(self, request: HttpRequest, queryset: Any) -> None:
        reason = action_reason(self, request)
        if reason is not None and call_service(self, request, "risk.services.kill_switch_engage_by_user",
                                               user=request.user, reason=reason) is not None:
            self.message_user(request, "Kill switch ENGAGED: all automations halted, open orders being cancelled.",
                              messages.WARNING)

    @admin.action(description="Release the kill switch (reason required)", permissions=["change"])
    def release(self, request: HttpRequest, queryset: Any) -> None:
        # The same rule as the API: a risk officer with a fresh OTP, whatever
        # the admin session already proved.
        reason = action_reason(self, request)
        if reason is not None and call_service(self, request, "risk.services.kill_switch_release_by_user",
                                               user=request.user, reason=reason,
                                               otp_token=request.POST.get("otp_token", "")) is not None:
            self.message_user(request, "Kill switch released. Automations stay halted until resumed one by one.",
                              messages.SUCCESS)


class BreakerResetForm(ReasonActionForm):
    otp_token = forms.CharField(required=False, label="OTP", widget=forms.TextInput(attrs={"size": 8}))


_TRIPPED_FROM, _TRIPPED_TO = date_range_filter("tripped_at")


@admin.register(BreakerTrip)
class BreakerTripAdmin(FastChangelistMixin, ExportMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("id", "tripped_at", "automation", "limit", "value", "threshold", "reset_at", "reset_by", "reset_reason")
    list_filter = ("limit", "automation", _TRIPPED_FROM, _TRIPPED_TO)
    list_select_related = ("automation",)
    search_fields = ("message", "reset_reason")
    ordering = ("-id",)
    actions = ["reset_selected"]
    action_form = BreakerResetForm

    def has_reset_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("risk.change_breakertrip") and user_is_risk_officer(request.user)

    @admin.action(description="Reset the selected breakers (reason and OTP required)", permissions=["reset"])
    def reset_selected(self, request: HttpRequest, queryset: Any) -> None:
        reason = action_reason(self, request)
        if reason is None:
            return
        token = (request.POST.get("otp_token") or "").strip()
        done = 0
        for trip in queryset.filter(reset_at__isnull=True):
            if call_service(self, request, "risk.services.breaker_reset", trip=trip, user=request.user,
                            otp_token=token, reason=reason) is not None:
                done += 1
        self.message_user(request, f"{done} breaker(s) reset.", messages.SUCCESS)


_ALERT_FROM, _ALERT_TO = date_range_filter("created_at")


@admin.register(Alert)
class AlertAdmin(FastChangelistMixin, ExportMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("id", "created_at", "severity", "kind", "subject", "delivery_state", "attempts")
    list_filter = ("severity", "kind", "delivery_state", _ALERT_FROM, _ALERT_TO)
    search_fields = ("subject", "message")
    ordering = ("-id",)


@admin.register(RiskState)
class RiskStateAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("__str__", "trading_day", "open_orders_now", "daily_realized_pnl", "consecutive_losses", "tripped")

    @admin.display(description="open orders")
    def open_orders_now(self, obj: RiskState) -> int:
        # The global row does not keep the global count (the global slots do): the automations' sum is the truth.
        return global_open_orders() if obj.automation_id is None else obj.open_orders


register_history(admin.site, RiskLimit)
register_history(admin.site, KillSwitch)
