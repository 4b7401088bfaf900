"""Instruments, quarantined messages and clock sources. Tick tables are too large for the admin."""

from __future__ import annotations

from django.contrib import admin

from audit.admin_tools import ExportMixin, FastChangelistMixin, ReadOnlyAdminMixin
from ingestion.models import ClockSource, Instrument, QuarantinedMessage


@admin.register(Instrument)
class InstrumentAdmin(FastChangelistMixin, admin.ModelAdmin):
    list_display = ("symbol", "venue", "tick_size", "lot_size", "active")
    list_filter = ("venue", "active")
    search_fields = ("symbol",)


@admin.register(QuarantinedMessage)
class QuarantinedMessageAdmin(FastChangelistMixin, ExportMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("id", "created_at", "raw_stream", "raw_seq", "symbol", "code", "reason")
    list_filter = ("code",)
    search_fields = ("=raw_stream", "symbol")
    ordering = ("-id",)


@admin.register(ClockSource)
class ClockSourceAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("source", "updated_at", "baseline_ms", "offset_ms", "jitter_ms", "samples", "drift_alert")
