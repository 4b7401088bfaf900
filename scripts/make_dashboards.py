"""Write the six Grafana dashboards (docker/grafana/dashboards/*.json) from one table.

Run after changing a panel: ``python scripts/make_dashboards.py``. Every
expression uses metrics from ``trading/metrics.py`` (a test checks it).
"""

from __future__ import annotations

import json
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "docker" / "grafana" / "dashboards"

DASHBOARDS: dict[str, list[tuple[str, str]]] = {
    "System health": [
        ("Heartbeat age per process (s)", "fp_heartbeat_age_seconds"),
        ("Redis up", "fp_redis_up"),
        ("Clock offset per source (ms)", "fp_clock_offset_ms"),
        ("Quarantined last hour, by reason", "fp_quarantined_last_hour"),
    ],
    "Signal flow": [
        ("Quotes stored, last 5 min, per symbol", "fp_quotes_last_5m"),
        ("Signals last hour, by status", "fp_signals_last_hour"),
        ("Signals per hour: now vs 24 h baseline", "sum(fp_signals_last_hour) / fp_signals_per_hour_baseline"),
        ("Pending approval", "fp_signals_pending_approval"),
        ("Approved vs automatic trades", "fp_trades_approved_total or fp_trades_automatic_total"),
    ],
    "Latency": [
        ("Heartbeat age per process (s)", "fp_heartbeat_age_seconds"),
        ("Clock offset per source (ms)", "fp_clock_offset_ms"),
        ("Open orders by status", "fp_orders_open"),
    ],
    "PnL and slippage": [
        ("Realized PnL today per automation", "fp_realized_pnl_today"),
        ("Slippage gap ratio (realized vs modelled)", "fp_slippage_gap_ratio"),
        ("Orders last hour by status", "fp_orders_last_hour"),
    ],
    "Audit": [
        ("Audit events last hour, by kind", "fp_audit_events_last_hour"),
        ("Refused changes and permission denials", "fp_unauthorized_changes_last_hour"),
        ("Signals missing an L2 snapshot (ratio)", "fp_signals_missing_snapshot_ratio"),
    ],
    "Safety": [
        ("Kill switch engaged", "fp_kill_switch_engaged"),
        ("Tripped breakers", "fp_breakers_tripped"),
        ("Breaker trips last day, by limit", "fp_breaker_trips_last_day"),
        ("Automations by status", "fp_automations"),
        ("Alerts last hour, by kind", "fp_alerts_last_hour"),
        ("Undelivered alerts", "fp_alerts_undelivered"),
    ],
}


def dashboard(title: str, panels: list[tuple[str, str]]) -> dict:
    return {
        "title": f"First Principle: {title}",
        "uid": "fp-" + title.lower().replace(" ", "-"),
        "schemaVersion": 39,
        "refresh": "15s",
        "time": {"from": "now-6h", "to": "now"},
        "panels": [
            {
                "id": i + 1,
                "type": "timeseries",
                "title": panel_title,
                "datasource": {"type": "prometheus", "uid": "prometheus"},
                "gridPos": {"h": 8, "w": 12, "x": (i % 2) * 12, "y": (i // 2) * 8},
                "targets": [{"expr": expr, "refId": "A"}],
            }
            for i, (panel_title, expr) in enumerate(panels)
        ],
    }


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for title, panels in DASHBOARDS.items():
        path = OUT / (title.lower().replace(" ", "-") + ".json")
        path.write_text(json.dumps(dashboard(title, panels), indent=2) + "\n")


if __name__ == "__main__":
    main()
