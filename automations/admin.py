"""Operator and compliance admin for automations and signals. Writes go through automations.services."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import ObjectDoesNotExist
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse

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
from audit.models import AuditEvent
from automations.models import Automation, L2Snapshot, Signal, SignalTransition

_EDITABLE = (
    "strategy",
    "parameters",
    "mode",
    "approval_threshold",
    "require_approval",
    "allowed_regimes",
    "signal_expiry_seconds",
    "four_eyes",
    "snapshot_levels",
    "symbol",
)


@admin.register(Automation)
class AutomationAdmin(ReasonRequiredAdminMixin, FastChangelistMixin, admin.ModelAdmin):
    list_display = (
        "name",
        "symbol",
        "strategy",
        "status",
        "mode",
        "approval_threshold",
        "approved_trade_count",
        "automatic_trade_count",
    )
    list_filter = ("status", "mode", "strategy")
    search_fields = ("name", "symbol")
    readonly_fields = ("status", "approved_trade_count", "automatic_trade_count", "last_changed_by", "created_at", "updated_at")
    actions = ["pause_selected", "resume_selected"]
    action_form = ReasonActionForm

    def save_model(self, request: HttpRequest, obj: Automation, form: Any, change: bool) -> None:
        reason = form.cleaned_data["change_reason"]
        if change:
            changes = {name: form.cleaned_data[name] for name in form.changed_data if name in _EDITABLE}
            if not changes:
                return
            original = Automation.objects.get(pk=obj.pk)
            result = call_service(
                self,
                request,
                "automations.services.automation_update",
                automation=original,
                actor=request.user,
                reason=reason,
                changes=changes,
            )
        else:
            options = {
                name: form.cleaned_data[name]
                for name in _EDITABLE
                if name in form.cleaned_data and name not in ("strategy", "parameters", "symbol")
            }
            result = call_service(
                self,
                request,
                "automations.services.automation_create",
                actor=request.user,
                reason=reason,
                name=form.cleaned_data["name"],
                symbol=form.cleaned_data["symbol"],
                strategy=form.cleaned_data["strategy"],
                parameters=form.cleaned_data["parameters"],
                **options,
            )
        if result is not None:
            obj.pk = result.pk
            obj._state.adding = False

    @admin.action(description="Pause the selected automations (reason required)", permissions=["change"])
    def pause_selected(self, request: HttpRequest, queryset: Any) -> None:
        self._status_action(request, queryset, "automations.services.automation_pause")

    @admin.action(description="Resume the selected automations (reason required)", permissions=["change"])
    def resume_selected(self, request: HttpRequest, queryset: Any) -> None:
        self._status_action(request, queryset, "automations.services.automation_resume")

    def _status_action(self, request: HttpRequest, queryset: Any, service: str) -> None:
        reason = action_reason(self, request)
        if reason is None:
            return
        done = 0
        for automation in queryset:
            if call_service(self, request, service, automation=automation, reason=reason, actor=request.user) is not None:
                done += 1
        self.message_user(request, f"{done} automation(s) updated.", messages.SUCCESS)


class TransitionInline(admin.TabularInline):
    model = SignalTransition
    extra = 0
    can_delete = False
    fields = ("at", "from_status", "to_status", "actor_label", "reason")
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


_CREATED_FROM, _CREATED_TO = date_range_filter("created_at")


@admin.register(Signal)
class SignalAdmin(FastChangelistMixin, ExportMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    """Signals; opening one shows its full story (context, snapshot, regime, approval, order, fills, audit)."""

    list_display = ("id", "created_at", "automation", "symbol", "side", "quantity", "limit_price", "status", "needs_approval")
    list_filter = ("status", "side", "needs_approval", "automation", _CREATED_FROM, _CREATED_TO)
    list_select_related = ("automation",)
    search_fields = ("=id", "symbol")
    ordering = ("-id",)

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        signal = self.get_object(request, object_id)
        if signal is None or not self.has_view_permission(request, signal):
            return super().change_view(request, object_id, form_url, extra_context)
        return TemplateResponse(
            request,
            "audit/signal_story.html",
            {
                **self.admin_site.each_context(request),
                "opts": self.model._meta,
                "title": f"Signal {signal.pk}: full story",
                **signal_story(signal),
            },
        )


def _related(obj: Any, name: str) -> Any:
    try:
        return getattr(obj, name)
    except ObjectDoesNotExist:
        return None


def signal_story(signal: Signal) -> dict[str, Any]:
    """Everything that happened to one signal, in order (reverse relations only: no import of execution)."""
    order = _related(signal, "order")
    approval = _related(signal, "approval")
    subjects = [("automations.signal", str(signal.pk))]
    if order is not None:
        subjects.append(("execution.order", str(order.pk)))
    if approval is not None:
        subjects.append(("execution.approval", str(approval.pk)))
    events = AuditEvent.objects.none()
    for subject_type, subject_id in subjects:
        events = events | AuditEvent.objects.filter(subject_type=subject_type, subject_id=subject_id)
    snapshot = signal.snapshot
    levels = None
    if snapshot is not None:
        try:
            from automations.snapshots import snapshot_load

            levels = snapshot_load(snapshot)
        except Exception:
            levels = None
    return {
        "signal": signal,
        "automation": signal.automation,
        "transitions": list(signal.transitions.order_by("id")),
        "snapshot": snapshot,
        "snapshot_levels": levels,
        "approval": approval,
        "order": order,
        "fills": list(order.fills.order_by("id")) if order is not None else [],
        "events": list(events.select_related("actor").order_by("id")[:500]),
    }


@admin.register(SignalTransition)
class SignalTransitionAdmin(FastChangelistMixin, ExportMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("id", "signal_id", "at", "from_status", "to_status", "actor_label", "reason")
    list_filter = ("to_status",)
    search_fields = ("=signal__id", "reason")
    ordering = ("-id",)


@admin.register(L2Snapshot)
class L2SnapshotAdmin(FastChangelistMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("id", "symbol", "ts", "levels", "storage", "sha256")
    list_filter = ("storage", "symbol")
    exclude = ("data",)
    ordering = ("-id",)


register_history(admin.site, Automation)
