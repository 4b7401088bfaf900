"""The self-assessment report: controls mapped to the twelve fatal mistakes and RTS 6, with evidence.

Audit is the base layer: it reads the other apps' records through the app
registry (``apps.get_model``), never by importing them, and each section
degrades to "not available" when an app or a table is missing.
"""

from __future__ import annotations

import datetime as dt
import io
from importlib import import_module
from typing import Any

from django.apps import apps
from django.conf import settings
from django.db.models import Count, Q
from django.template.loader import render_to_string
from django.utils import timezone

from audit.models import AuditEvent
from audit.verify import verify_audit

FATAL_MISTAKES = [
    (1, "Candles-only belief", "L1 bid/ask and trades ingested; liquidity monitor; L2 depth per symbol", ["quotes"]),
    (2, "No raw immutable data", "Append-only raw store: per-record SHA-256, hash chain, sealed days, verify_raw", ["raw_store"]),
    (3, "Clock mismatch", "source_ts and recv_ts kept; clock offset per source; alert past 100 ms", ["clocks"]),
    (4, "Ignoring slippage and latency", "One fill model; realized vs modelled slippage per automation; alert on a 50 % gap",
     ["slippage"]),
    (5, "Single monolith", "Separate supervised processes per role (feed, ingest, detect, execute, beat, web)", []),
    (6, "Detection can trade", "Only the execute worker holds broker credentials; signal id only on the execute queue", []),
    (7, "No human gating", "First N trades per automation need an OTP approval; approvals bound to an order hash",
     ["approvals"]),
    (8, "Unaudited config", "Reason-required versioned config; hash-chained append-only audit log; DB triggers; OTP admin",
     ["config_changes", "audit_chain"]),
    (9, "Poor tests", "Unit tests per module, end-to-end pipeline, replay harness", []),
    (10, "No circuit breakers", "Global and per-automation limits checked under row lock; auto-pause; kill switch",
     ["limits", "breakers", "kill_switch"]),
    (11, "No L2 snapshots", "Compressed order-book snapshot with each signal; alert when > 1 % lack one", ["snapshots"]),
    (12, "No regime filtering", "Every signal tagged with its regime; automations trade only allowed regimes", ["regimes"]),
]

RTS6_CONTROLS = [
    ("Art. 15 pre-trade controls: price collars", "RiskLimit.price_collar_bps checked before every order", "limits"),
    ("Art. 15: maximum order value", "RiskLimit.max_order_notional", "limits"),
    ("Art. 15: maximum order volume", "RiskLimit.max_order_qty", "limits"),
    ("Art. 15: maximum messages (order rate)", "RiskLimit.max_orders_per_minute, max_signals_per_hour", "limits"),
    ("Art. 12: kill functionality", "Global kill switch: halts automations, cancels open orders; every use audited",
     "kill_switch"),
    ("Art. 16: real-time monitoring and alerts", "Breaker trips auto-pause and alert; alerts delivered and retried",
     "breakers"),
    ("Art. 18: security and limits to access", "OTP admin, role groups, permission denials and sign-ins audited",
     "security"),
    ("Art. 9/28: records kept, tamper-evident", "Hash-chained audit log, sealed history rows, DB-level append-only",
     "audit_chain"),
]


def _model(label: str) -> Any:
    try:
        return apps.get_model(label)
    except LookupError:
        return None


def _period(qs: Any, field: str, start: dt.datetime, end: dt.datetime) -> Any:
    return qs.filter(**{f"{field}__gte": start, f"{field}__lt": end})


def report_context(*, start: dt.date, end: dt.date, verify: bool = True) -> dict[str, Any]:
    """Gather the evidence for the period [start, end] (inclusive days, UTC)."""
    t0 = dt.datetime(start.year, start.month, start.day, tzinfo=dt.UTC)
    t1 = dt.datetime(end.year, end.month, end.day, tzinfo=dt.UTC) + dt.timedelta(days=1)
    evidence: dict[str, Any] = {}

    RiskLimit = _model("risk.RiskLimit")
    if RiskLimit is not None:
        evidence["limits"] = {
            "in_force": list(RiskLimit.objects.select_related("automation").order_by("automation_id")),
            "changes": list(_period(RiskLimit.history.select_related("history_user"), "history_date", t0, t1)
                            .order_by("history_date")[:500]),
        }
    BreakerTrip = _model("risk.BreakerTrip")
    if BreakerTrip is not None:
        trips = _period(BreakerTrip.objects.select_related("automation"), "tripped_at", t0, t1)
        evidence["breakers"] = {"trips": list(trips.order_by("tripped_at")[:500]),
                                "by_limit": list(trips.values("limit").annotate(n=Count("id")).order_by("-n")),
                                "open": BreakerTrip.objects.filter(reset_at__isnull=True).count()}
    KillSwitch = _model("risk.KillSwitch")
    if KillSwitch is not None:
        evidence["kill_switch"] = {
            "current": KillSwitch.objects.filter(pk=1).first(),
            "uses": list(_period(KillSwitch.history.select_related("history_user"), "history_date", t0, t1)
                         .order_by("history_date")),
            "drills": _period(AuditEvent.objects.filter(kind=AuditEvent.Kind.KILL_SWITCH, reason__icontains="drill"),
                              "at", t0, t1).count(),
        }
    Signal, Automation = _model("automations.Signal"), _model("automations.Automation")
    Approval = _model("execution.Approval")
    if Signal is not None and Automation is not None:
        signals = _period(Signal.objects.all(), "created_at", t0, t1)
        rows = []
        for automation in Automation.objects.order_by("name"):
            mine = signals.filter(automation=automation)
            approved = (_period(Approval.objects.filter(signal__automation=automation), "decided_at", t0, t1)
                        .values("decision").annotate(n=Count("id")) if Approval is not None else [])
            decisions = {row["decision"]: row["n"] for row in approved}
            rows.append({"automation": automation, "threshold": automation.approval_threshold,
                         "approved_total": automation.approved_trade_count, "automatic_total": automation.automatic_trade_count,
                         "signals": mine.count(), "gated": mine.filter(needs_approval=True).count(),
                         "approved": decisions.get("approve", 0), "rejected": decisions.get("reject", 0),
                         # A trade placed automatically while the approved count was below the
                         # threshold would be a gating failure; the counters make it visible.
                         "within_threshold": automation.automatic_trade_count == 0
                         or automation.approved_trade_count >= automation.approval_threshold})
        evidence["approvals"] = rows
        total = signals.count()
        missing = signals.filter(snapshot__isnull=True).count()
        evidence["snapshots"] = {"signals": total, "missing": missing,
                                 "ratio": (missing / total) if total else 0.0}
        evidence["regimes"] = {"signals": total, "untagged": signals.filter(Q(regime={}) | Q(regime__isnull=True)).count()}
    evidence["config_changes"] = list(
        _period(AuditEvent.objects.filter(kind=AuditEvent.Kind.HISTORY), "at", t0, t1).order_by("id")[:1000])
    evidence["security"] = list(
        _period(AuditEvent.objects.filter(kind__in=[AuditEvent.Kind.SIGN_IN_FAILED, AuditEvent.Kind.OTP_FAILED,
                                                    AuditEvent.Kind.LOCKOUT, AuditEvent.Kind.PERMISSION_DENIED,
                                                    AuditEvent.Kind.CONFIG_REFUSED, AuditEvent.Kind.EXPORT]),
                "at", t0, t1).values("kind").annotate(n=Count("id")).order_by("kind"))
    evidence["audit_chain"] = verify_audit().as_dict() if verify else None
    evidence["raw_store"] = _raw_store_verification()
    return {"start": start, "end": end, "generated_at": timezone.now(), "evidence": evidence,
            "mistakes": FATAL_MISTAKES, "rts6": RTS6_CONTROLS}


def _raw_store_verification() -> dict[str, Any]:
    try:
        rawstore = import_module("ingestion.rawstore")
    except ImportError:
        return {"available": False, "output": "ingestion.rawstore is not installed"}
    root = getattr(settings, "RAW_STORE_DIR", None)
    if root is None or not hasattr(rawstore, "verify_raw_main"):
        return {"available": False, "output": "no raw store configured"}
    out = io.StringIO()
    try:
        code = rawstore.verify_raw_main(root, None, True, out=out)
    except Exception as exc:
        return {"available": True, "ok": False, "output": f"verification raised {exc!r}"}
    return {"available": True, "ok": code == 0, "output": out.getvalue()[-4000:]}


def compliance_report_html(*, start: dt.date, end: dt.date, verify: bool = True) -> str:
    return render_to_string("audit/compliance_report.html", report_context(start=start, end=end, verify=verify))
