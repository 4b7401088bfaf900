"""Compliance admin at scale: 1,000,000 history rows and 1,000,000 audit events.

Builds a dedicated database (``fp_audit_bench`` on the server of
``DATABASE_URL``), migrates it, loads the rows fast (history rows with one
``INSERT ... SELECT generate_series``, audit events with their hash chain
computed in Python and streamed with ``COPY``), then times admin pages with
the Django test client signed in with a verified OTP device: median and p99
over repeated loads. Prints one JSON object.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres REDIS_URL=redis://127.0.0.1:6379/3 \
        .venv/bin/python benchmarks/audit_admin.py [--rows 1000000] [--loads 40] [--keep]

Options: ``--keep`` reuses a loaded database instead of rebuilding it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import time
from pathlib import Path
from urllib.parse import urlparse, urlunparse

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

BENCH_DB = "fp_audit_bench"
KINDS = ["approval", "rejection", "sign_in", "sign_in_failed", "order", "signal_state", "breaker_trip", "limit_change",
         "export", "permission_denied"]
REASONS = ["tighten limits after review", "approved by desk head", "routine rotation", "incident 4711 follow-up",
           "quarterly recertification", "volatility regime change", "fat-finger guard", "venue outage"]


def _admin_url(url: str) -> str:
    parts = urlparse(url)
    return urlunparse(parts._replace(path="/postgres"))


def _bench_url(url: str) -> str:
    parts = urlparse(url)
    return urlunparse(parts._replace(path=f"/{BENCH_DB}"))


def database_recreate(base_url: str) -> None:
    import psycopg

    with psycopg.connect(_admin_url(base_url), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {BENCH_DB} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {BENCH_DB}")


def load(rows: int) -> dict[str, float]:
    from django.core.management import call_command
    from django.db import connection, transaction
    from django.utils import timezone

    from audit.history import acting_as
    from audit.models import AuditEvent
    from audit.roles import roles_setup
    from audit.services import GENESIS_HASH, audit_event_hash, role_assign
    from automations.models import Automation

    timings: dict[str, float] = {}
    t = time.perf_counter()
    call_command("migrate", verbosity=0)
    timings["migrate_s"] = time.perf_counter() - t

    from django.contrib.auth import get_user_model

    User = get_user_model()
    roles_setup()
    root = User.objects.create_superuser("root", "root@example.com", "bench-password-123")
    users = [root]
    for i in range(20):
        user = User.objects.create_user(f"officer{i}", f"o{i}@example.com", "bench-password-123", is_staff=True)
        role_assign(user=user, role="risk_officer", reason="bench setup", actor=root)
        users.append(user)
    compliance = User.objects.create_user("compliance", "c@example.com", "bench-password-123", is_staff=True)
    role_assign(user=compliance, role="compliance", reason="bench setup", actor=root)
    with acting_as(root, "bench setup"):
        automations = [Automation.objects.create(name=f"bench-{i}", symbol="SIM-BTCUSD", strategy="momentum")
                       for i in range(1000)]
    first_automation = automations[0].pk
    user_ids = [u.pk for u in users]

    # Trigram (GIN) indexes are built once after the load: maintaining them
    # row by row is what makes a bulk load slow.
    gin = _gin_indexes_drop()

    # 1. History rows: one INSERT ... SELECT, spread over 1000 automations, 21 users, 365 days.
    t = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO automations_historicalautomation
              (id, name, symbol, strategy, parameters, status, mode, approval_threshold, require_approval,
               allowed_regimes, signal_expiry_seconds, four_eyes, snapshot_levels, created_at,
               history_date, history_change_reason, history_type, history_user_id)
            SELECT %(first)s + (g %% 1000), 'bench-' || (g %% 1000), 'SIM-BTCUSD', 'momentum',
                   jsonb_build_object('window', 10 + g %% 50), (ARRAY['active','paused'])[1 + g %% 2], 'paper',
                   g %% 20, false, '{}'::jsonb, 120, false, 20, now() - interval '400 days',
                   now() - (g * interval '31 seconds'), (%(reasons)s::text[])[1 + g %% 8] || ' #' || g, '~',
                   (%(users)s::bigint[])[1 + g %% 21]
            FROM generate_series(1, %(rows)s) AS g
            """,
            {"first": first_automation, "rows": rows, "reasons": REASONS, "users": user_ids},
        )
    timings["history_insert_s"] = time.perf_counter() - t

    # 2. Audit events: the hash chain computed here, streamed with COPY.
    t = time.perf_counter()
    start = timezone.now() - dt.timedelta(days=365)
    prev = AuditEvent.objects.order_by("-id").values_list("hash", flat=True).first() or GENESIS_HASH
    columns = "at, actor_id, actor_label, kind, subject_type, subject_id, reason, data, prev_hash, hash"
    with transaction.atomic(), connection.cursor() as cursor, cursor.cursor.copy(f"COPY audit_auditevent ({columns}) FROM STDIN") as copy:
        for i in range(rows):
            at = start + dt.timedelta(seconds=31 * i)
            user_id = user_ids[i % len(user_ids)]
            label = "root" if user_id == root.pk else f"officer{user_ids.index(user_id) - 1}"
            kind = KINDS[i % len(KINDS)]
            subject_type, subject_id = "automations.signal", str(i)
            reason = f"{REASONS[i % len(REASONS)]} #{i}"
            data = {"i": i, "automation": i % 1000}
            digest = audit_event_hash(prev_hash=prev, at_iso=at.isoformat(), actor_id=user_id, actor_label=label,
                                      kind=kind, subject_type=subject_type, subject_id=subject_id, reason=reason,
                                      data=data)
            copy.write_row((at, user_id, label, kind, subject_type, subject_id, reason, json.dumps(data), prev, digest))
            prev = digest
    timings["audit_copy_s"] = time.perf_counter() - t
    t = time.perf_counter()
    with connection.cursor() as cursor:
        for definition in gin:
            cursor.execute(definition)
    timings["gin_rebuild_s"] = time.perf_counter() - t
    t = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    timings["analyze_s"] = time.perf_counter() - t
    return timings


def _gin_indexes_drop() -> list[str]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' AND indexdef LIKE '%%gin_trgm_ops%%' "
                       "AND tablename IN ('audit_auditevent', 'automations_historicalautomation')")
        found = cursor.fetchall()
        for name, _ in found:
            cursor.execute(f'DROP INDEX "{name}"')
    return [definition for _, definition in found]


def measure(loads: int) -> dict[str, dict[str, float]]:
    from django.contrib.auth import get_user_model
    from django.test import Client
    from django_otp.plugins.otp_totp.models import TOTPDevice

    User = get_user_model()
    compliance = User.objects.get(username="compliance")
    officer = User.objects.get(username="officer3")
    device = TOTPDevice.objects.filter(user=compliance).first() or TOTPDevice.objects.create(
        user=compliance, name="bench", confirmed=True)
    client = Client()
    client.force_login(compliance)
    session = client.session
    session["otp_device_id"] = device.persistent_id
    session.save()
    month_ago = (dt.datetime.now(dt.UTC) - dt.timedelta(days=60)).date().isoformat()
    pages = {
        "audit_changelist": ("/admin/audit/auditevent/", {}),
        "audit_changelist_page_200": ("/admin/audit/auditevent/", {"p": "200"}),
        "audit_filtered_kind_user_dates": ("/admin/audit/auditevent/", {
            "kind__exact": "approval", "actor__id__exact": str(officer.pk), "date_from": month_ago}),
        "audit_reason_search": ("/admin/audit/auditevent/", {"q": "incident 4711"}),
        "history_changelist": ("/admin/automations/historicalautomation/", {}),
        "history_filtered_user_object_dates": ("/admin/automations/historicalautomation/", {
            "history_user__id__exact": str(officer.pk), "object_id": str(_first_automation_id() + 3), "date_from": month_ago}),
        "history_filtered_user_dates_reason": ("/admin/automations/historicalautomation/", {
            "history_user__id__exact": str(officer.pk), "date_from": month_ago, "q": "recertification"}),
    }
    results: dict[str, dict[str, float]] = {}
    for name, (url, params) in pages.items():
        response = client.get(url, params)
        if response.status_code != 200:
            raise SystemExit(f"{name}: HTTP {response.status_code}")
        samples = []
        for _ in range(loads):
            t = time.perf_counter()
            response = client.get(url, params)
            samples.append((time.perf_counter() - t) * 1000)
            assert response.status_code == 200
        samples.sort()
        results[name] = {"median_ms": round(statistics.median(samples), 1),
                         "p99_ms": round(samples[min(len(samples) - 1, round(0.99 * (len(samples) - 1)))], 1),
                         "min_ms": round(samples[0], 1), "loads": loads}
    return results


def _first_automation_id() -> int:
    from automations.models import Automation

    return Automation.objects.order_by("pk").values_list("pk", flat=True).first()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--loads", type=int, default=40)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    base = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
    os.environ["DATABASE_URL"] = _bench_url(base)
    os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/3")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "trading.settings")
    os.environ.setdefault("CACHE_KEY_PREFIX", "fp-bench")
    os.environ["DATABASE_CONN_MAX_AGE"] = "600"
    timings: dict[str, float] = {}
    if not args.keep:
        database_recreate(base)
    import django

    django.setup()
    from celery import current_app

    # Alerts would go to a broker; the benchmark measures pages, not delivery.
    current_app.send_task = lambda *a, **k: None  # type: ignore[method-assign]
    if not args.keep:
        timings = load(args.rows)
    from audit.models import AuditEvent

    out = {
        "database": BENCH_DB,
        "history_rows": _count("automations_historicalautomation"),
        "audit_events": AuditEvent.objects.count(),
        "load": {k: round(v, 1) for k, v in timings.items()},
        "pages": measure(args.loads),
        "target_median_ms": 200,
    }
    out["all_medians_under_target"] = all(p["median_ms"] < 200 for p in out["pages"].values())
    print(json.dumps(out, indent=2))


def _count(table: str) -> int:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(f"SELECT count(*) FROM {table}")
        return cursor.fetchone()[0]


if __name__ == "__main__":
    main()
