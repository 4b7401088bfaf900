"""``GET /health``: every process's last heartbeat, the database and Redis."""

from __future__ import annotations

import time

from django.conf import settings
from django.db import connection
from django.http import HttpRequest, JsonResponse

from trading import heartbeat


def health_report() -> tuple[bool, dict]:
    report: dict = {"processes": {}, "database": {}, "redis": {}}
    ok = True
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        report["database"] = {"ok": True}
    except Exception as exc:
        report["database"] = {"ok": False, "error": str(exc)[:200]}
        ok = False
    try:
        beats = heartbeat.read_all()
        report["redis"] = {"ok": True}
    except Exception as exc:
        beats = {}
        report["redis"] = {"ok": False, "error": str(exc)[:200]}
        ok = False
    now = time.time()
    for name in heartbeat.EXPECTED_PROCESSES:
        beat = beats.get(name)
        if beat is None:
            report["processes"][name] = {"ok": False, "error": "no heartbeat"}
            ok = False
            continue
        age = now - float(beat["ts"])
        fresh = age <= settings.HEARTBEAT_STALE_S
        report["processes"][name] = {"ok": fresh, "age_s": round(age, 2), "pid": beat.get("pid")}
        ok = ok and fresh
    try:
        from ingestion.clock import host_clock_status

        report["host_clock"] = host_clock_status()
    except ImportError:
        report["host_clock"] = {"available": False}
    report["ok"] = ok
    return ok, report


def health_view(request: HttpRequest) -> JsonResponse:
    ok, report = health_report()
    return JsonResponse(report, status=200 if ok else 503)
