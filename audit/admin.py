from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.http import HttpRequest
from django.utils.html import format_html

from audit.admin_tools import (
    ExportMixin,
    FastChangelistMixin,
    ReadOnlyAdminMixin,
    ReasonActionForm,
    StaffUserFilter,
    action_reason,
    date_range_filter,
    register_history,
    render_changes,
)
from audit.models import AuditEvent, RoleAssignment
from audit.services import role_assign, role_revoke


class SubjectFilter(admin.SimpleListFilter):
    """Object filter: ``subject_type`` and ``subject_id`` typed as ``app.model:id``."""

    title = "object (app.model:id)"
    parameter_name = "subject"
    template = "admin/audit/input_filter.html"

    def lookups(self, request: HttpRequest, model_admin: Any) -> tuple[tuple[str, str], ...]:
        return (("", ""),)

    def choices(self, changelist: Any) -> Any:
        query = changelist.get_filters_params()
        query.pop(self.parameter_name, None)
        yield {"parameter_name": self.parameter_name, "value": self.value() or "",
               "hidden": [(k, v[-1] if isinstance(v, list) else v) for k, v in query.items()]}

    def queryset(self, request: HttpRequest, queryset: Any) -> Any:
        value = (self.value() or "").strip()
        if not value:
            return queryset
        subject_type, _, subject_id = value.partition(":")
        queryset = queryset.filter(subject_type=subject_type.strip().lower())
        return queryset.filter(subject_id=subject_id.strip()) if subject_id.strip() else queryset


_AT_FROM, _AT_TO = date_range_filter("at")


@admin.register(AuditEvent)
class AuditEventAdmin(FastChangelistMixin, ExportMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("id", "at", "kind", "actor_label", "subject_display", "short_reason", "changes")
    list_select_related = ("actor",)
    list_filter = ("kind", ("actor", StaffUserFilter), SubjectFilter, _AT_FROM, _AT_TO)
    search_fields = ("reason",)
    search_help_text = "Search the reason text."
    readonly_fields = ("id", "at", "kind", "actor", "actor_label", "subject_type", "subject_id", "reason", "data_pretty",
                       "prev_hash", "hash")
    fields = readonly_fields
    ordering = ("-id",)

    @admin.display(description="object")
    def subject_display(self, obj: AuditEvent) -> str:
        return f"{obj.subject_type}:{obj.subject_id}" if obj.subject_type else ""

    @admin.display(description="reason")
    def short_reason(self, obj: AuditEvent) -> str:
        return obj.reason[:120]

    @admin.display(description="changes")
    def changes(self, obj: AuditEvent) -> Any:
        changes = (obj.data or {}).get("changes")
        return render_changes(changes) if isinstance(changes, dict) else ""

    @admin.display(description="data")
    def data_pretty(self, obj: AuditEvent) -> Any:
        import json

        return format_html("<pre style='white-space:pre-wrap'>{}</pre>", json.dumps(obj.data, indent=2, sort_keys=True))


@admin.register(RoleAssignment)
class RoleAssignmentAdmin(FastChangelistMixin, admin.ModelAdmin):
    """Grant and revoke roles with a reason; both go through the role services."""

    list_display = ("user", "role", "active", "changed_at")
    list_filter = ("role", "active")
    search_fields = ("user__username",)
    actions = ["revoke_selected"]
    action_form = ReasonActionForm

    def get_form(self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any) -> Any:
        from django import forms

        class RoleForm(forms.ModelForm):
            change_reason = forms.CharField(label="Reason", required=True, widget=forms.Textarea(attrs={"rows": 2}))

            class Meta:
                model = RoleAssignment
                fields = ("user", "role", "active")

        return RoleForm

    def get_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return ["user", "role", "active", "change_reason"]

    def save_model(self, request: HttpRequest, obj: RoleAssignment, form: Any, change: bool) -> None:
        reason = form.cleaned_data["change_reason"]
        service = role_assign if form.cleaned_data.get("active", True) else role_revoke
        result = service(user=form.cleaned_data["user"], role=form.cleaned_data["role"].name, reason=reason,
                         actor=request.user)
        if result is not None:
            obj.pk = result.pk
            obj._state.adding = False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.action(description="Revoke the selected roles (reason required)", permissions=["change"])
    def revoke_selected(self, request: HttpRequest, queryset: Any) -> None:
        reason = action_reason(self, request)
        if reason is None:
            return
        for assignment in queryset.select_related("user", "role"):
            role_revoke(user=assignment.user, role=assignment.role.name, reason=reason, actor=request.user)
        self.message_user(request, f"Revoked {queryset.count()} role(s).", messages.SUCCESS)


register_history(admin.site, RoleAssignment)


# django-axes 8.3.1's "clean up expired attempts" action fails on a plain admin
# request (it expects the attempt time axes sets during login); expiry is
# handled by AXES_COOLOFF_TIME, so the action is withdrawn.
from axes.admin import AccessAttemptAdmin  # noqa: E402

AccessAttemptAdmin.actions = []
