"""Building blocks every app's ``admin.py`` uses.

- ``EstimatedCountPaginator``: no full-table COUNT per page on million-row tables.
- ``ReasonRequiredAdminMixin``: the change form asks for a reason and saves
  under ``acting_as(request.user, reason)``.
- ``ReasonActionForm`` / ``action_reason``: admin actions take a reason too.
- ``ReadOnlyAdminMixin``: nobody changes these rows from the admin.
- ``ExportMixin``: export the filtered changelist as CSV or JSON, audited.
- ``HistoryAdmin``: a simple-history model's rows with field-by-field diffs,
  filters by user, object, date range and reason text.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
from collections.abc import Callable, Iterator
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ActionForm
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db import connections, models, router
from django.db.models import OuterRef, Subquery
from django.http import HttpRequest, HttpResponse, QueryDict, StreamingHttpResponse
from django.urls import path
from django.utils.functional import cached_property
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from audit.history import HISTORY_META_FIELDS, acting_as, canonical_value, diff_rows

EXACT_COUNT_CAP = 1_000
EXPORT_PERMISSION = "audit.export_records"


class EstimatedCountPaginator(Paginator):
    """A paginator that never counts a whole million-row table.

    Up to ``EXACT_COUNT_CAP`` matching rows the count is exact (a bounded
    ``COUNT`` over ``LIMIT cap+1``). Past that, an unfiltered table reports
    PostgreSQL's ``reltuples`` estimate and a filtered one the planner's row
    estimate; pages are still fetched with LIMIT/OFFSET on an index.
    """

    @cached_property
    def count(self) -> int:
        qs = self.object_list
        if not isinstance(qs, models.QuerySet):
            return len(qs)
        bounded = qs.order_by()[: EXACT_COUNT_CAP + 1]
        exact = bounded.count()
        if exact <= EXACT_COUNT_CAP:
            return exact
        return max(exact, self._estimate(qs))

    @staticmethod
    def _estimate(qs: models.QuerySet) -> int:
        connection = connections[qs.db or router.db_for_read(qs.model)]
        with connection.cursor() as cursor:
            if not qs.query.where:
                cursor.execute("SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass", [qs.model._meta.db_table])
                row = cursor.fetchone()
                if row and row[0] and row[0] > 0:
                    return int(row[0])
            sql, params = qs.order_by().query.sql_with_params()
            cursor.execute(f"EXPLAIN (FORMAT JSON) {sql}", params)
            plan = cursor.fetchone()[0]
            if isinstance(plan, str):
                plan = json.loads(plan)
            return int(plan[0]["Plan"]["Plan Rows"])


class StaffUserFilter(admin.RelatedFieldListFilter):
    """Filter by user, listing staff and role holders only.

    The admin's ``RelatedOnlyFieldListFilter`` finds its choices with a
    ``SELECT DISTINCT`` over the whole table: a full scan of a million rows
    on every page. The people who change configuration are staff, so list
    those from the (small) user table instead.
    """

    def field_choices(self, field: Any, request: HttpRequest, model_admin: Any) -> list[tuple[Any, str]]:
        ordering = self.field_admin_ordering(field, request, model_admin)
        return field.get_choices(include_blank=False, ordering=ordering,
                                 limit_choices_to=models.Q(is_staff=True) | models.Q(groups__isnull=False))


class FastChangelistMixin:
    """What a million-row changelist needs: estimated counts, no full count, no date hierarchy."""

    paginator = EstimatedCountPaginator
    show_full_result_count = False
    list_per_page = 50


class ReadOnlyAdminMixin:
    """Rows written only by the services; the admin shows them and changes nothing."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class ChangeReasonForm(forms.ModelForm):
    change_reason = forms.CharField(
        label="Reason for this change", required=True, widget=forms.Textarea(attrs={"rows": 2, "cols": 60}),
        help_text="Required. Recorded in the history and the audit log with your name.",
    )


class ReasonRequiredAdminMixin:
    """Changes from the admin carry a reason and are attributed to the signed-in user."""

    form = ChangeReasonForm

    def get_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        fields = list(super().get_fields(request, obj))  # type: ignore[misc]
        if "change_reason" not in fields and self.has_change_permission(request, obj):  # type: ignore[attr-defined]
            fields.append("change_reason")
        if not self.has_change_permission(request, obj) and "change_reason" in fields:  # type: ignore[attr-defined]
            fields.remove("change_reason")
        return fields

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        reason = form.cleaned_data.get("change_reason", "")
        obj._change_reason = reason
        with acting_as(request.user, reason):
            super().save_model(request, obj, form, change)  # type: ignore[misc]

    def delete_model(self, request: HttpRequest, obj: Any) -> None:
        raise PermissionDenied("Versioned configuration is never deleted from the admin; deactivate it with a reason.")

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class ReasonActionForm(ActionForm):
    reason = forms.CharField(required=False, label="Reason", widget=forms.TextInput(attrs={"size": 40}))


def action_reason(modeladmin: admin.ModelAdmin, request: HttpRequest) -> str | None:
    """The reason typed next to the action menu, or None (with a message) when it is missing."""
    reason = (request.POST.get("reason") or "").strip()
    if not reason:
        modeladmin.message_user(request, "This action needs a reason: type it next to the action menu.", messages.ERROR)
        return None
    return reason


def call_service(modeladmin: admin.ModelAdmin, request: HttpRequest, dotted: str, **kwargs: Any) -> Any:
    """Call an app's service by dotted path; admin actions never write rows themselves."""
    from importlib import import_module

    module_name, func_name = dotted.rsplit(".", 1)
    try:
        func = getattr(import_module(module_name), func_name)
    except (ImportError, AttributeError):
        modeladmin.message_user(request, f"{dotted} is not available in this build; nothing was changed.", messages.ERROR)
        return None
    from audit.history import MissingReason, UnauthorizedChange
    from trading.api import DomainError

    try:
        return func(**kwargs)
    except (DomainError, UnauthorizedChange, MissingReason) as exc:
        # A refusal by the service is shown, not raised as a server error.
        modeladmin.message_user(request, f"Refused: {exc}", messages.ERROR)
        return None


# Filters with free input (object id, date range): the admin's choice filters
# would list every distinct value of a million-row column.

class InputFilter(admin.SimpleListFilter):
    template = "admin/audit/input_filter.html"

    def lookups(self, request: HttpRequest, model_admin: Any) -> tuple[tuple[str, str], ...]:
        # A non-empty lookups() is what makes the admin render the filter.
        return (("", ""),)

    def choices(self, changelist: Any) -> Iterator[dict[str, Any]]:
        query = changelist.get_filters_params()
        query.pop(self.parameter_name, None)
        yield {
            "parameter_name": self.parameter_name,
            "value": self.value() or "",
            "hidden": [(k, v[-1] if isinstance(v, list) else v) for k, v in query.items()],
        }


def object_id_filter(field: str, title: str = "object id") -> type[InputFilter]:
    class ObjectIdFilter(InputFilter):
        parameter_name = "object_id"

        def queryset(self, request: HttpRequest, queryset: models.QuerySet) -> models.QuerySet:
            value = (self.value() or "").strip()
            return queryset.filter(**{field: value}) if value else queryset

    ObjectIdFilter.title = title
    return ObjectIdFilter


def _parse_date(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    try:
        day = dt.date.fromisoformat(value.strip()[:10])
    except ValueError:
        return None
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)


def date_range_filter(field: str, title: str = "date range (UTC)") -> tuple[type[InputFilter], type[InputFilter]]:
    class DateFromFilter(InputFilter):
        parameter_name = "date_from"

        def queryset(self, request: HttpRequest, queryset: models.QuerySet) -> models.QuerySet:
            start = _parse_date(self.value())
            return queryset.filter(**{f"{field}__gte": start}) if start else queryset

    class DateToFilter(InputFilter):
        parameter_name = "date_to"

        def queryset(self, request: HttpRequest, queryset: models.QuerySet) -> models.QuerySet:
            end = _parse_date(self.value())
            return queryset.filter(**{f"{field}__lt": end + dt.timedelta(days=1)}) if end else queryset

    DateFromFilter.title = f"{title}: from (YYYY-MM-DD)"
    DateToFilter.title = f"{title}: to (YYYY-MM-DD)"
    return DateFromFilter, DateToFilter


class ExportMixin:
    """``export/?format=csv|json&<the changelist's filters>`` streams the filtered set; the export is audited."""

    change_list_template = "admin/audit/change_list_export.html"
    export_fields: tuple[str, ...] = ()

    def get_urls(self) -> list[Any]:
        info = self.model._meta.app_label, self.model._meta.model_name  # type: ignore[attr-defined]
        urls = [path("export/", self.admin_site.admin_view(self.export_view), name="{}_{}_export".format(*info))]  # type: ignore[attr-defined]
        return urls + super().get_urls()  # type: ignore[misc]

    def get_export_fields(self) -> list[str]:
        return list(self.export_fields) or [f.attname for f in self.model._meta.concrete_fields]  # type: ignore[attr-defined]

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        extra_context = {**(extra_context or {}), "can_export": request.user.has_perm(EXPORT_PERMISSION)}
        return super().changelist_view(request, extra_context)  # type: ignore[misc]

    def export_view(self, request: HttpRequest) -> HttpResponse:
        from audit.models import AuditEvent
        from audit.services import audit_event_record

        if not (request.user.has_perm(EXPORT_PERMISSION) and self.has_view_permission(request)):  # type: ignore[attr-defined]
            raise PermissionDenied("Exports need audit.export_records and view permission on the model.")
        fmt = request.GET.get("format", "csv")
        if fmt not in ("csv", "json"):
            fmt = "csv"
        # Rebuild the changelist from the same filters, minus our own parameter.
        params = request.GET.copy()
        params.pop("format", None)
        filtered = QueryDict(mutable=True)
        filtered.update(params)
        request.GET = filtered
        changelist = self.get_changelist_instance(request)  # type: ignore[attr-defined]
        queryset = changelist.get_queryset(request)
        fields = self.get_export_fields()
        rows = queryset.count()
        label = self.model._meta.label_lower  # type: ignore[attr-defined]
        audit_event_record(kind=AuditEvent.Kind.EXPORT, actor=request.user, subject_type=label,
                           reason=f"export of {rows} {label} rows as {fmt}",
                           data={"model": label, "format": fmt, "rows": rows, "filters": params.urlencode(),
                                 "fields": fields})
        values = queryset.values_list(*fields).iterator(chunk_size=2000)
        name = f"{label.replace('.', '_')}-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}.{fmt}"
        if fmt == "csv":
            content: Iterator[str] = _csv_lines(fields, values)
            content_type = "text/csv"
        else:
            content = _json_lines(fields, values)
            content_type = "application/json"
        response = StreamingHttpResponse(content, content_type=content_type)
        response["Content-Disposition"] = f'attachment; filename="{name}"'
        return response


class _Echo:
    def write(self, value: str) -> str:
        return value


def _csv_lines(fields: list[str], values: Iterator[tuple[Any, ...]]) -> Iterator[str]:
    writer = csv.writer(_Echo())
    yield writer.writerow(fields)
    for row in values:
        yield writer.writerow([json.dumps(canonical_value(v)) if isinstance(v, dict | list) else canonical_value(v)
                               for v in row])


def _json_lines(fields: list[str], values: Iterator[tuple[Any, ...]]) -> Iterator[str]:
    yield "["
    first = True
    for row in values:
        item = json.dumps({k: canonical_value(v) for k, v in zip(fields, row, strict=True)}, default=str)
        yield item if first else "," + item
        first = False
    yield "]\n"


class HistoryChangeList(ChangeList):
    """Attaches each row's previous version (two queries per page) so diffs need no query per row."""

    def get_results(self, request: HttpRequest) -> None:
        super().get_results(request)
        model = self.model
        object_field = model.instance_type._meta.pk.attname
        ids = [r.pk for r in self.result_list]
        if not ids:
            return
        previous = model._default_manager.filter(**{object_field: OuterRef(object_field), "history_id__lt": OuterRef("history_id")})
        pairs = dict(model._default_manager.filter(history_id__in=ids)
                     .annotate(prev_id=Subquery(previous.order_by("-history_id").values("history_id")[:1]))
                     .values_list("history_id", "prev_id"))
        prev_rows = model._default_manager.in_bulk([p for p in pairs.values() if p is not None])
        for row in self.result_list:
            prev_pk = pairs.get(row.pk)
            row._fp_previous = prev_rows.get(prev_pk) if prev_pk else None
            row._fp_previous_loaded = True


def _row_values(obj: models.Model, fields: list[str]) -> dict[str, Any]:
    return {name: getattr(obj, name) for name in fields}


def render_changes(changes: dict[str, list[Any]]) -> SafeString:
    if not changes:
        return format_html("<em>{}</em>", "no field changed")
    return format_html("<ul style='margin:0;padding-left:1em'>{}</ul>", format_html_join(
        "", "<li><b>{}</b>: {} &rarr; {}</li>",
        ((name, "" if old is None else str(old)[:200], "" if new is None else str(new)[:200])
         for name, (old, new) in changes.items()),
    ))


class HistoryAdmin(FastChangelistMixin, ExportMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    """The rows of one simple-history table: who, when, why and what changed, field by field."""

    list_display = ("history_id", "history_date", "history_type", "object_link", "history_user", "history_change_reason",
                    "changes")
    list_select_related = ("history_user",)
    search_fields = ("history_change_reason",)
    search_help_text = "Search the reason text."
    ordering = ("-history_date", "-history_id")

    def get_list_filter(self, request: HttpRequest) -> list[Any]:
        object_field = self.model.instance_type._meta.pk.attname
        date_from, date_to = date_range_filter("history_date")
        return ["history_type", ("history_user", StaffUserFilter), object_id_filter(object_field),
                date_from, date_to]

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return HistoryChangeList

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return [*[f.name for f in self.model._meta.concrete_fields], "changes"]

    def tracked_fields(self) -> list[str]:
        return [f.attname for f in self.model._meta.concrete_fields if f.attname not in HISTORY_META_FIELDS]

    @admin.display(description="object")
    def object_link(self, obj: Any) -> str:
        return f"{self.model.instance_type._meta.verbose_name} {getattr(obj, self.model.instance_type._meta.pk.attname)}"

    @admin.display(description="changes (field: before → after)")
    def changes(self, obj: Any) -> SafeString:
        fields = self.tracked_fields()
        if getattr(obj, "_fp_previous_loaded", False):
            previous = obj._fp_previous
        else:
            object_field = self.model.instance_type._meta.pk.attname
            previous = (self.model._default_manager.filter(**{object_field: getattr(obj, object_field),
                                                              "history_id__lt": obj.history_id})
                        .order_by("-history_id").first())
        before = _row_values(previous, fields) if previous is not None else None
        return render_changes(diff_rows(before, _row_values(obj, fields), fields))


def register_history(site: admin.AdminSite, model: type[models.Model], admin_class: type[admin.ModelAdmin] = HistoryAdmin) -> None:
    """Register the history model of a versioned model (``Model.history.model``)."""
    history_model = model.history.model  # type: ignore[attr-defined]
    if not site.is_registered(history_model):
        site.register(history_model, admin_class)


AdminCallable = Callable[[admin.ModelAdmin, HttpRequest, models.QuerySet], Any]
