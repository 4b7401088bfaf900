"""Prometheus metrics, read from the records at scrape time.

The truth is in PostgreSQL and Redis, shared by every process, so the web
process computes the figures when Prometheus scrapes ``/metrics`` instead of
each worker keeping counters that die with it. Queries read by table name
(this module is part of the base layer and imports no app), are bounded to
recent windows, and run on indexed columns.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Iterator

from django.conf import settings
from django.db import connection
from django.http import HttpRequest, HttpResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from trading import heartbeat

logger = logging.getLogger(__name__)

# (metric name, help, SQL returning (label value, number) rows or one number, label name or None)
_SQL_GAUGES: list[tuple[str, str, str, str | None]] = [
    ("fp_quotes_last_5m", "Quotes stored with a venue time in the last 5 minutes, per symbol.",
     "SELECT symbol, count(*) FROM ingestion_quote WHERE source_ts > now() - interval '5 minutes' GROUP BY symbol", "symbol"),
    ("fp_quarantined_last_hour", "Messages quarantined in the last hour, per reason code.",
     "SELECT code, count(*) FROM ingestion_quarantinedmessage WHERE created_at > now() - interval '1 hour' GROUP BY code", "code"),
    ("fp_clock_offset_ms", "Estimated clock offset per source (venue clock against ours).",
     "SELECT source, offset_ms FROM ingestion_clocksource", "source"),
    ("fp_clock_drift_alert", "1 when a source's estimated clock offset is past 100 ms.",
     "SELECT source, drift_alert::int FROM ingestion_clocksource", "source"),
    ("fp_signals_last_hour", "Signals created in the last hour, per status.",
     "SELECT status, count(*) FROM automations_signal WHERE created_at > now() - interval '1 hour' GROUP BY status", "status"),
    ("fp_signals_per_hour_baseline", "Mean signals per hour over the previous 24 hours (the baseline for the surge alert).",
     "SELECT count(*) / 24.0 FROM automations_signal WHERE created_at > now() - interval '25 hours' AND created_at <= now() - interval '1 hour'", None),
    ("fp_signals_missing_snapshot_ratio", "Share of the last hour's unfiltered signals without an L2 snapshot.",
     "SELECT coalesce(avg((snapshot_id IS NULL)::int), 0) FROM automations_signal WHERE created_at > now() - interval '1 hour' AND status <> 'filtered'", None),
    ("fp_signals_pending_approval", "Signals waiting for a trader's approval.",
     "SELECT count(*) FROM automations_signal WHERE status = 'pending_approval'", None),
    ("fp_automations", "Automations per status.",
     "SELECT status, count(*) FROM automations_automation GROUP BY status", "status"),
    ("fp_trades_approved_total", "Trades placed after a human approval, all time.",
     "SELECT coalesce(sum(approved_trade_count), 0) FROM automations_automation", None),
    ("fp_trades_automatic_total", "Trades placed without approval (past the gate), all time.",
     "SELECT coalesce(sum(automatic_trade_count), 0) FROM automations_automation", None),
    ("fp_orders_open", "Orders not yet closed, per status.",
     "SELECT status, count(*) FROM execution_order WHERE status IN ('pending','submitting','submitted','partially_filled') GROUP BY status", "status"),
    ("fp_orders_last_hour", "Orders created in the last hour, per status.",
     "SELECT status, count(*) FROM execution_order WHERE created_at > now() - interval '1 hour' GROUP BY status", "status"),
    ("fp_slippage_gap_ratio", "Per automation over the last day: mean |realized - modelled| slippage / mean |modelled|.",
     "SELECT o.automation_id::text, coalesce(avg(abs(f.realized_slippage_bps - f.modelled_slippage_bps)) / nullif(avg(abs(f.modelled_slippage_bps)), 0), 0)"
     " FROM execution_fill f JOIN execution_order o ON o.id = f.order_id"
     " WHERE f.filled_at > now() - interval '1 day' AND f.modelled_slippage_bps IS NOT NULL GROUP BY o.automation_id", "automation"),
    ("fp_realized_pnl_today", "Realized PnL of the current trading day, per automation (risk state).",
     "SELECT coalesce(automation_id::text, 'global'), daily_realized_pnl FROM risk_riskstate", "automation"),
    ("fp_breaker_trips_last_day", "Breaker trips in the last day, per limit.",
     "SELECT \"limit\", count(*) FROM risk_breakertrip WHERE tripped_at > now() - interval '1 day' GROUP BY \"limit\"", "limit"),
    ("fp_breakers_tripped", "Breaker trips not yet reset.",
     "SELECT count(*) FROM risk_breakertrip WHERE reset_at IS NULL", None),
    ("fp_kill_switch_engaged", "1 while the global kill switch is engaged.",
     "SELECT coalesce(max(engaged::int), 0) FROM risk_killswitch", None),
    ("fp_alerts_last_hour", "Alerts raised in the last hour, per kind.",
     "SELECT kind, count(*) FROM risk_alert WHERE created_at > now() - interval '1 hour' GROUP BY kind", "kind"),
    ("fp_alerts_undelivered", "Alerts whose delivery failed.",
     "SELECT count(*) FROM risk_alert WHERE delivery_state = 'failed'", None),
    ("fp_audit_events_last_hour", "Audit events in the last hour, per kind.",
     "SELECT kind, count(*) FROM audit_auditevent WHERE at > now() - interval '1 hour' GROUP BY kind", "kind"),
    ("fp_unauthorized_changes_last_hour", "Refused configuration changes and permission denials in the last hour.",
     "SELECT count(*) FROM audit_auditevent WHERE at > now() - interval '1 hour' AND kind IN ('config_refused', 'permission_denied')", None),
]


class PlatformCollector(Collector):
    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield from self._heartbeats()
        for name, help_text, sql, label in _SQL_GAUGES:
            family = GaugeMetricFamily(name, help_text, labels=[label] if label else None)
            try:
                with connection.cursor() as cursor:
                    cursor.execute(sql)
                    rows = cursor.fetchall()
            except Exception:
                logger.exception("metrics: query for %s failed", name)
                connection.close()
                continue
            for row in rows:
                if label:
                    family.add_metric([str(row[0])], float(row[1] or 0))
                else:
                    family.add_metric([], float(row[0] or 0))
            yield family

    def _heartbeats(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("fp_heartbeat_age_seconds", "Seconds since each process's last heartbeat.", labels=["process"])
        up = GaugeMetricFamily("fp_redis_up", "1 when Redis answers.")
        try:
            beats = heartbeat.read_all()
            up.add_metric([], 1)
        except Exception:
            beats = {}
            up.add_metric([], 0)
        now = time.time()
        for name in heartbeat.EXPECTED_PROCESSES:
            beat = beats.get(name)
            # A process that never beat reports a very old heartbeat, so the
            # "heartbeat missing" alert fires for it too.
            family.add_metric([name], now - float(beat["ts"]) if beat else 1e9)
        yield family
        yield up


def build_registry() -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PlatformCollector())
    return registry


_registry: CollectorRegistry | None = None


def metrics_view(request: HttpRequest) -> HttpResponse:
    """``GET /metrics``; when ``METRICS_TOKEN`` is set, a matching bearer token is required."""
    global _registry
    token = settings.METRICS_TOKEN
    if token and not hmac.compare_digest(request.headers.get("Authorization", ""), f"Bearer {token}"):
        return HttpResponse("metrics token required\n", status=401, content_type="text/plain")
    if _registry is None:
        _registry = build_registry()
    return HttpResponse(generate_latest(_registry), content_type=CONTENT_TYPE_LATEST)
