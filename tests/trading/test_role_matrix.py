"""Every endpoint and page against every role (and anonymous), with and without OTP.

The URL patterns are enumerated from ``django.urls.get_resolver()`` (includes
followed), so a new endpoint fails ``test_it_has_an_expected_permission_row_for_every_endpoint``
until someone writes down who may use it. The admin is covered as a group:
the site pages, and for every registered model its changelist, add, change,
history, delete and export pages, plus the custom admin actions (kill switch,
pause/resume, breaker reset, role revoke).

For each principal the matrix makes every request twice: from a session that
passed OTP at sign-in, and from a password-only session. Writes carry a
syntactically valid body naming real objects created for that request, and a
valid TOTP code where the endpoint wants one, so the only thing that can refuse
is the role (or the missing OTP of the session). A success is a 2xx, or a 302
to a page other than a login page (HTML forms); admin actions must also show
their effect. The test fails on any success outside the allowed set AND on any
allowed principal that does not succeed.

Public by intent: ``/health`` and ``/metrics`` (infrastructure probes; metrics
is token-gated only when ``METRICS_TOKEN`` is set), the sign-in pages, logout,
and the vendored plotly bundle (a static third-party library with no data).
The API schema and docs are public too: drf-spectacular serves them with its
default ``SERVE_PERMISSIONS`` (AllowAny), the project does not override it, and
tests/trading/test_api_fuzz.py loads the schema without signing in. Everything
else needs a session that passed OTP.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from itertools import count
from typing import Any

import pytest
from django.urls import URLPattern, URLResolver, get_resolver, reverse

PASSWORD = "matrix-password-2026-correct"
SYMBOL = "MATRIX-BTC"
ROLES = ("viewer", "trader", "risk_officer", "compliance", "admin")
PRINCIPALS = ("anonymous", *ROLES)
# seed_demo makes these roles staff; viewers and traders never see the admin.
STAFF = frozenset({"admin", "compliance", "risk_officer"})
LOGIN_PATHS = ("/accounts/login/", "/admin/login/")

EVERYONE = frozenset(PRINCIPALS)
SIGNED_IN = frozenset(ROLES)
NOBODY: frozenset[str] = frozenset()
OPERATE = frozenset({"trader", "risk_officer", "admin"})
CONFIGURE = frozenset({"risk_officer", "admin"})
TRADER = frozenset({"trader"})
RISK_OFFICER = frozenset({"risk_officer"})
ADMIN = frozenset({"admin"})
VIEW3 = frozenset({"compliance", "risk_officer", "admin"})
VIEW_C = frozenset({"compliance", "admin"})
RISK_ADMIN = frozenset({"risk_officer", "admin"})


# ---------------------------------------------------------------------------
# The expected-permission tables (explicit: write a row for every new endpoint)
# ---------------------------------------------------------------------------

# Who may succeed from a session that passed OTP at sign-in.
EXPECTED: dict[tuple[str, str], frozenset[str]] = {
    ("GET", "health"): EVERYONE,
    ("GET", "metrics"): EVERYONE,
    ("GET", "schema"): EVERYONE,
    ("GET", "api-docs"): EVERYONE,
    ("GET", "trader"): SIGNED_IN,
    ("GET", "login"): EVERYONE,
    # Each role posts its own username, password and TOTP; anonymous has no valid credentials.
    ("POST", "login"): SIGNED_IN,
    ("POST", "logout"): EVERYONE,
    ("GET", "plotly-js"): EVERYONE,
    ("GET", "automation-list"): SIGNED_IN,
    ("POST", "automation-create"): CONFIGURE,
    ("GET", "automation-detail"): SIGNED_IN,
    ("POST", "automation-update"): CONFIGURE,
    ("POST", "automation-pause"): OPERATE,
    ("POST", "automation-resume"): OPERATE,
    ("GET", "signal-list"): SIGNED_IN,
    ("GET", "signal-detail"): SIGNED_IN,
    ("POST", "execution:signal-approve"): TRADER,
    ("POST", "execution:signal-reject"): TRADER,
    ("POST", "execution:automation-mode"): RISK_OFFICER,
    ("GET", "execution:order-list"): SIGNED_IN,
    ("GET", "execution:order-detail"): SIGNED_IN,
    ("GET", "risk:kill-switch"): SIGNED_IN,
    ("POST", "risk:kill-switch-engage"): frozenset({"trader", "risk_officer", "admin"}),
    ("POST", "risk:kill-switch-release"): RISK_OFFICER,
    ("GET", "risk:breakers"): SIGNED_IN,
    ("POST", "risk:breaker-reset"): RISK_OFFICER,
    ("GET", "risk:alerts"): SIGNED_IN,
    ("POST", "risk:limits"): RISK_OFFICER,
}

# Who may succeed WITHOUT having passed OTP (password-only session): public endpoints only.
PUBLIC: frozenset[tuple[str, str]] = frozenset({
    ("GET", "health"), ("GET", "metrics"), ("GET", "login"), ("POST", "login"), ("POST", "logout"),
    ("GET", "plotly-js"), ("GET", "schema"), ("GET", "api-docs"),
})

# Admin site pages (OTPAdminSite: staff AND a verified session).
ADMIN_SITE: dict[tuple[str, str], frozenset[str]] = {
    ("GET", "admin:index"): STAFF,
    ("GET", "admin:login"): EVERYONE,  # The form for others; a verified staff member is sent on to the index.
    ("POST", "admin:logout"): STAFF,  # Others are redirected to the admin sign-in.
    ("GET", "admin:password_change"): STAFF,
    ("GET", "admin:password_change_done"): STAFF,
    ("GET", "admin:jsi18n"): STAFF,
    # No model has get_absolute_url: "view on site" answers nobody with a 2xx.
    # The autocomplete answers whoever may view the target model (here auth.user).
    ("GET", "admin:autocomplete"): VIEW_C,
    ("GET", "admin:view_on_site"): NOBODY,
}

# App index pages: staff holding any permission in the app.
ADMIN_APPS: dict[str, frozenset[str]] = {
    "auth": VIEW_C, "otp_totp": ADMIN, "otp_static": ADMIN, "axes": ADMIN, "audit": VIEW_C,
    "ingestion": VIEW3, "automations": VIEW3, "risk": VIEW3, "execution": VIEW3,
}


@dataclass(frozen=True)
class ModelRow:
    view: frozenset[str]
    add: frozenset[str]
    change: frozenset[str]
    delete: frozenset[str]
    export: frozenset[str] = NOBODY


def _ro(view: frozenset[str], export: frozenset[str] = VIEW_C) -> ModelRow:
    """A read-only admin (no add, change or delete for anyone), exportable by compliance and admin."""
    return ModelRow(view, NOBODY, NOBODY, NOBODY, export)


ADMIN_MODELS: dict[str, ModelRow] = {
    "auth.group": ModelRow(VIEW_C, ADMIN, ADMIN, ADMIN),
    "auth.user": ModelRow(VIEW_C, ADMIN, ADMIN, ADMIN),
    "otp_totp.totpdevice": ModelRow(ADMIN, ADMIN, ADMIN, ADMIN),
    "otp_static.staticdevice": ModelRow(ADMIN, ADMIN, ADMIN, ADMIN),
    "axes.accessattempt": ModelRow(ADMIN, NOBODY, ADMIN, ADMIN),
    "axes.accesslog": ModelRow(ADMIN, NOBODY, ADMIN, ADMIN),
    "axes.accessfailurelog": ModelRow(ADMIN, NOBODY, ADMIN, ADMIN),
    "audit.auditevent": _ro(VIEW_C),
    "audit.roleassignment": ModelRow(VIEW_C, ADMIN, ADMIN, NOBODY),
    "audit.historicalroleassignment": _ro(VIEW_C),
    "ingestion.instrument": ModelRow(VIEW3, ADMIN, ADMIN, ADMIN),
    "ingestion.quarantinedmessage": _ro(VIEW_C),
    "ingestion.clocksource": _ro(VIEW_C, export=NOBODY),
    "automations.automation": ModelRow(VIEW3, RISK_ADMIN, RISK_ADMIN, NOBODY),
    "automations.signal": _ro(VIEW3),
    "automations.signaltransition": _ro(VIEW3),
    "automations.l2snapshot": _ro(VIEW3, export=NOBODY),
    "automations.historicalautomation": _ro(VIEW_C),
    "risk.risklimit": ModelRow(VIEW3, RISK_ADMIN, RISK_ADMIN, NOBODY),
    "risk.killswitch": ModelRow(VIEW3, NOBODY, RISK_ADMIN, NOBODY),
    "risk.breakertrip": _ro(VIEW3),
    "risk.alert": _ro(VIEW3),
    "risk.riskstate": _ro(VIEW3, export=NOBODY),
    "risk.historicalrisklimit": _ro(VIEW3),
    "risk.historicalkillswitch": _ro(VIEW3),
    "execution.order": _ro(VIEW3),
    "execution.fill": _ro(VIEW3),
    "execution.approval": _ro(VIEW3),
    "execution.brokeraccount": ModelRow(VIEW_C, ADMIN, ADMIN, NOBODY),
    "execution.historicalbrokeraccount": _ro(VIEW_C),
}

# Model-level admin URLs outside the standard set, by URL name.
ADMIN_EXTRA: dict[str, frozenset[str]] = {
    "admin:auth_user_password_change": ADMIN,
    "admin:otp_totp_totpdevice_config": ADMIN,
    "admin:otp_totp_totpdevice_qrcode": ADMIN,
}

# Custom admin actions (POST to the changelist). The kill switch release is a
# risk officer's decision (risk.services.kill_switch_release_by_user: "The
# UI/API/admin path: only a risk officer ..."); the breaker reset likewise.
ADMIN_ACTIONS: dict[tuple[str, str], frozenset[str]] = {
    ("audit.roleassignment", "revoke_selected"): ADMIN,
    ("automations.automation", "pause_selected"): RISK_ADMIN,
    ("automations.automation", "resume_selected"): RISK_ADMIN,
    ("risk.killswitch", "engage"): RISK_ADMIN,
    ("risk.killswitch", "release"): RISK_OFFICER,
    ("risk.breakertrip", "reset_selected"): RISK_OFFICER,
}

ADMIN_SUFFIXES = ("changelist", "add", "change", "history", "delete", "export")
# Unnamed patterns: the admin's "<id>/" redirect to the change page and its catch-all.
UNNAMED_ALLOWED = ("<path:object_id>/", "(?P<url>.*)$")


# ---------------------------------------------------------------------------
# URL enumeration
# ---------------------------------------------------------------------------


def _walk(patterns: list[Any], prefix: str = "", namespace: str = "") -> list[tuple[str, str, Any]]:
    found: list[tuple[str, str, Any]] = []
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            ns = pattern.namespace
            inner = f"{namespace}:{ns}" if namespace and ns else (ns or namespace)
            found += _walk(pattern.url_patterns, prefix + str(pattern.pattern), inner)
        elif isinstance(pattern, URLPattern):
            name = f"{namespace}:{pattern.name}" if namespace and pattern.name else (pattern.name or "")
            found.append((prefix + str(pattern.pattern), name, pattern.callback))
    return found


def _methods(callback: Any) -> set[str]:
    """The HTTP methods a view answers (GET/POST only matter here)."""
    view_class = getattr(callback, "view_class", None) or getattr(callback, "cls", None)
    if view_class is not None:
        return {m.upper() for m in ("get", "post") if hasattr(view_class, m)}
    return {"GET"}


def enumerated_endpoints() -> tuple[set[tuple[str, str]], set[tuple[str, str]], set[str], list[str]]:
    """(project endpoints, admin site/app/extra endpoints, admin model labels, unexplained patterns)."""
    from django.contrib import admin

    project: set[tuple[str, str]] = set()
    admin_keys: set[tuple[str, str]] = set()
    models: set[str] = set()
    unexplained: list[str] = []
    model_prefixes = {f"admin:{m._meta.app_label}_{m._meta.model_name}_": m._meta.label_lower for m in admin.site._registry}
    for route, name, callback in _walk(get_resolver().url_patterns):
        if not name:
            if not (route.startswith("admin/") and route.endswith(UNNAMED_ALLOWED)):
                unexplained.append(route)
            continue
        if not name.startswith("admin:"):
            for method in _methods(callback):
                project.add((method, name))
            continue
        if name == "admin:app_list" or name in ADMIN_EXTRA:
            admin_keys.add(("GET", name))
            continue
        if name in ("admin:logout",):
            admin_keys.add(("POST", name))
            continue
        label = next((lbl for prefix, lbl in model_prefixes.items() if name.startswith(prefix)), None)
        if label is not None and name[len(f"admin:{label.replace('.', '_')}_"):] in ADMIN_SUFFIXES:
            models.add(label)
            continue
        admin_keys.add(("GET", name))
    return project, admin_keys, models, unexplained


def enumerated_actions() -> set[tuple[str, str]]:
    from django.contrib import admin

    return {(m._meta.label_lower, a if isinstance(a, str) else a.__name__)
            for m, ma in admin.site._registry.items() for a in (ma.actions or [])}


def test_it_has_an_expected_permission_row_for_every_endpoint(db: None) -> None:
    project, admin_keys, models, unexplained = enumerated_endpoints()
    assert unexplained == []
    # logout is POST-only in Django 5 (LogoutView has a get() that is not routed); the table tests POST.
    assert project - {("GET", "logout")} == set(EXPECTED)
    assert PUBLIC <= set(EXPECTED)
    assert admin_keys == set(ADMIN_SITE) | {("GET", "admin:app_list")} | {("GET", n) for n in ADMIN_EXTRA}
    assert models == set(ADMIN_MODELS)
    assert enumerated_actions() == set(ADMIN_ACTIONS)


# ---------------------------------------------------------------------------
# The world: one user per role, real objects, a current quote
# ---------------------------------------------------------------------------


_seq = count(1)


def totp_now(device: Any) -> str:
    """The device's code for the current time step, computed with django_otp.oath.totp from the key."""
    from django_otp.oath import totp

    return f"{totp(device.bin_key, step=device.step, t0=device.t0, digits=device.digits):0{device.digits}d}"


def fresh_otp(world: World, role: str) -> str:
    """A code the device will accept: forget the last used step and the throttle first.

    django-otp accepts a time step once; the matrix uses one device for many
    requests inside one step, and replay is not what this test is about.
    """
    from django_otp.plugins.otp_totp.models import TOTPDevice

    TOTPDevice.objects.filter(user=world.users[role]).update(last_t=-1, drift=0, throttling_failure_count=0,
                                                             throttling_failure_timestamp=None)
    device = world.devices[role]
    return totp_now(device)


@dataclass
class World:
    root: Any
    users: dict[str, Any]
    devices: dict[str, Any]
    automation: Any
    signal: Any
    order: Any
    trip: Any
    objects: dict[str, Any] = field(default_factory=dict)


def _publish_quote() -> None:
    from trading import redis_keys
    from trading.redis_client import redis_client

    now_ns = time.time_ns()
    redis_client().set(redis_keys.quote(SYMBOL), json.dumps({
        "symbol": SYMBOL, "source_ts_ns": now_ns, "recv_ts_ns": now_ns,
        "bid": "100.00", "bid_size": "1.5", "ask": "100.10", "ask_size": "2.25",
    }))


def new_automation(world: World, *, status: str = "active", mode: str = "paper") -> Any:
    from audit.history import acting_as
    from automations.models import Automation

    with acting_as(world.root, "matrix setup"):
        return Automation.objects.create(
            name=f"matrix-{next(_seq)}", symbol=SYMBOL, strategy="microprice_reversion",
            parameters={"quantity": "0.01"}, status=status, mode=mode, approval_threshold=10,
            signal_expiry_seconds=600,
        )


def new_signal(world: World, automation: Any | None = None) -> Any:
    from automations.services import signal_create, signal_transition

    signal = signal_create(automation=automation or world.automation, side="buy", quantity=Decimal("0.5"),
                           limit_price=Decimal("100.10"), reason="matrix", mid=Decimal("100.05"),
                           needs_approval=True)
    return signal_transition(signal=signal, to_status="pending_approval", actor_label="matrix")


def new_trip(world: World) -> Any:
    from django.utils import timezone

    from risk.models import BreakerTrip

    return BreakerTrip.objects.create(automation=world.automation, limit="max_open_orders", value="6", threshold="5",
                                      message="matrix trip", tripped_at=timezone.now(), reset_by="", reset_reason="")


def kill_switch_set(world: World, engaged: bool) -> None:
    from risk import services
    from risk.selectors import kill_switch_state

    if kill_switch_state().engaged == engaged:
        return
    if engaged:
        services.kill_switch_engage(actor=world.root, reason="matrix setup")
    else:
        services.kill_switch_release(actor=world.root, reason="matrix setup")


def build_world() -> World:
    from django.contrib.auth import get_user_model
    from django.utils import timezone
    from django_otp.plugins.otp_static.models import StaticDevice
    from django_otp.plugins.otp_totp.models import TOTPDevice

    from audit.history import acting_as
    from audit.roles import roles_setup
    from audit.services import role_assign
    from automations.models import L2Snapshot
    from execution.models import Approval, BrokerAccount, Fill, Order
    from ingestion.models import ClockSource, Instrument, QuarantinedMessage
    from risk.models import Alert, RiskLimit, RiskState

    roles_setup()
    user_model = get_user_model()
    root = user_model.objects.create_superuser("matrix-root", "root@example.com", PASSWORD)
    users: dict[str, Any] = {}
    devices: dict[str, Any] = {}
    for role in ROLES:
        user = user_model.objects.create_user(f"matrix-{role}", f"{role}@example.com", PASSWORD,
                                              is_staff=role in STAFF, is_superuser=role == "admin")
        role_assign(user=user, role=role, reason=f"matrix: {role}", actor=root)
        users[role] = user_model.objects.get(pk=user.pk)
        devices[role] = TOTPDevice.objects.create(user=user, name="phone", confirmed=True)
    _publish_quote()
    world = World(root=root, users=users, devices=devices, automation=None, signal=None, order=None, trip=None)
    world.automation = new_automation(world)
    world.signal = new_signal(world)
    now = timezone.now()
    world.order = Order.objects.create(
        signal=world.signal, automation=world.automation, client_order_id=f"fp-{world.signal.pk}", broker="paper",
        broker_order_id="b-1", symbol=SYMBOL, side="buy", quantity=Decimal("0.5"), limit_price=Decimal("100.10"),
        status_reason="", created_at=now,
    )
    Fill.objects.create(order=world.order, price=Decimal("100.10"), quantity=Decimal("0.5"), filled_at=now,
                        broker_fill_id="f-1")
    Approval.objects.create(signal=world.signal, user=users["trader"], device_id="x", decision="approve", reason="",
                            order_hash="0" * 64, decided_at=now)
    world.trip = new_trip(world)
    Alert.objects.create(kind="matrix", severity="warning", subject="matrix", message="m", created_at=now,
                         last_error="", dedup_key="")
    if not RiskState.objects.exists():
        RiskState.objects.create(trading_day=date.today())
    L2Snapshot.objects.create(symbol=SYMBOL, ts=now, levels=1, sha256="0" * 64, archive_ref="")
    Instrument.objects.get_or_create(symbol=SYMBOL, defaults={"tick_size": Decimal("0.01"), "lot_size": Decimal("0.01")})
    QuarantinedMessage.objects.create(raw_stream="matrix", raw_seq=1, symbol=SYMBOL, code="x", reason="r",
                                      payload_excerpt="")
    ClockSource.objects.create(source="matrix", updated_at=now, baseline_ms=0.0, offset_ms=0.0)
    StaticDevice.objects.create(user=root, name="backup")
    with acting_as(root, "matrix setup"):
        RiskLimit.objects.create(automation=world.automation, max_open_orders=5)
        BrokerAccount.objects.create(name="matrix-paper", exchange_id="paper", api_base_url="")
    kill_switch_set(world, True)
    kill_switch_set(world, False)
    from axes.models import AccessAttempt, AccessFailureLog, AccessLog

    for model in (AccessLog, AccessFailureLog):
        model.objects.create(user_agent="ua", http_accept="*/*", path_info="/accounts/login/", username="x",
                             ip_address="10.0.0.1")
    AccessAttempt.objects.create(user_agent="ua", http_accept="*/*", path_info="/accounts/login/", get_data="",
                                 post_data="", failures_since_start=1, username="x", ip_address="10.0.0.1")
    return world


# ---------------------------------------------------------------------------
# Requests
# ---------------------------------------------------------------------------


@dataclass
class Call:
    method: str
    path: str
    data: dict[str, Any] | None = None
    as_json: bool = True
    # Extra success condition beyond the status (admin actions show their effect).
    effect: Callable[[], bool] | None = None
    fresh_client: bool = False  # Logout and sign-in use their own client so the matrix's session survives.
    ok_statuses: tuple[int, ...] = ()  # Non-2xx statuses that still mean "served" (the health probe's 503).
    # "any": 2xx or a redirect away from the login pages; "redirect": only the latter (a sign-in form
    # re-rendered with errors is a 200 refusal); "2xx": only a page (the admin logout page).
    expect: str = "any"


def _login_path(location: str) -> bool:
    return any(location.split("?")[0].endswith(p) for p in LOGIN_PATHS)


def succeeded(response: Any, call: Call) -> bool:
    if call.expect == "logout":
        return response.status_code == 302 and _login_path(response.headers.get("Location", "")) and \
            "_auth_user_id" not in response.wsgi_request.session
    if call.expect == "redirect":
        ok = response.status_code == 302 and not _login_path(response.headers.get("Location", ""))
    elif call.expect == "2xx":
        ok = 200 <= response.status_code < 300
    elif 200 <= response.status_code < 300 or response.status_code in call.ok_statuses:
        ok = True
    elif response.status_code == 302:
        ok = not _login_path(response.headers.get("Location", ""))
    else:
        ok = False
    if ok and call.effect is not None:
        ok = call.effect()
    return ok


def project_call(key: tuple[str, str], world: World, principal: str) -> Call:
    """The request for one project endpoint, with fresh objects for writes."""
    from django.urls import reverse as r

    method, name = key
    role = principal if principal != "anonymous" else None
    otp = (lambda: fresh_otp(world, role)) if role else (lambda: "123456")
    a_id = world.automation.pk
    if name == "health":
        # 503 is the health report saying a worker is down (none runs in a test): the probe was served.
        return Call("GET", r(name), ok_statuses=(503,))
    if name == "login" and method == "POST":
        username = world.users[role].username if role else "matrix-nobody"
        return Call("POST", r(name), {"username": username, "password": PASSWORD, "otp_token": otp()}, as_json=False,
                    fresh_client=True, expect="redirect")
    if name == "logout":
        # Signing out ends at the sign-in page by design: success is the 302 there (checked in _send).
        return Call("POST", r(name), {}, as_json=False, fresh_client=True, expect="logout")
    if method == "GET":
        kwargs = {"automation-detail": {"automation_id": a_id}, "signal-detail": {"signal_id": world.signal.pk},
                  "execution:order-detail": {"order_id": world.order.pk}}.get(name, {})
        return Call("GET", r(name, kwargs=kwargs))
    if name == "automation-create":
        return Call("POST", r(name), {"name": f"created-{next(_seq)}", "symbol": SYMBOL,
                                      "strategy": "microprice_reversion", "parameters": {"quantity": "0.01"},
                                      "reason": "matrix create"})
    if name == "automation-update":
        return Call("POST", r(name, kwargs={"automation_id": a_id}),
                    {"signal_expiry_seconds": 300 + next(_seq), "reason": "matrix update"})
    if name == "automation-pause":
        target = new_automation(world, status="active")
        return Call("POST", r(name, kwargs={"automation_id": target.pk}), {"reason": "matrix pause"})
    if name == "automation-resume":
        target = new_automation(world, status="paused")
        return Call("POST", r(name, kwargs={"automation_id": target.pk}), {"reason": "matrix resume"})
    if name in ("execution:signal-approve", "execution:signal-reject"):
        _publish_quote()
        target = new_signal(world)
        body = {"otp": otp()} if name.endswith("approve") else {"reason": "matrix reject"}
        return Call("POST", r(name, kwargs={"signal_id": target.pk}), body)
    if name == "execution:automation-mode":
        from execution.models import BrokerAccount

        # A live automation switched back to paper needs no live broker account.
        target = new_automation(world, mode="live")
        assert BrokerAccount.objects.exists()
        return Call("POST", r(name, kwargs={"automation_id": target.pk}),
                    {"mode": "paper", "otp": otp(), "reason": "matrix mode"})
    if name == "risk:kill-switch-engage":
        kill_switch_set(world, False)
        return Call("POST", r(name), {"reason": "matrix engage"})
    if name == "risk:kill-switch-release":
        kill_switch_set(world, True)
        return Call("POST", r(name), {"reason": "matrix release", "otp_token": otp()})
    if name == "risk:breaker-reset":
        trip = new_trip(world)
        return Call("POST", r(name, kwargs={"trip_id": trip.pk}), {"reason": "matrix reset", "otp_token": otp()})
    if name == "risk:limits":
        return Call("POST", r(name), {"automation": a_id, "reason": "matrix limits", "otp_token": otp(),
                                      "limits": {"max_open_orders": str(5 + next(_seq) % 7)}})
    raise AssertionError(f"no request written for {key}: add one to project_call")


def admin_calls(world: World) -> list[tuple[str, Call, frozenset[str]]]:
    """(row label, call, allowed roles) for every admin page and action."""
    from django.contrib import admin

    calls: list[tuple[str, Call, frozenset[str]]] = []
    for (method, name), allowed in ADMIN_SITE.items():
        if name == "admin:autocomplete":
            path = reverse(name) + "?app_label=automations&model_name=automation&field_name=last_changed_by&term=a"
        elif name == "admin:view_on_site":
            from django.contrib.contenttypes.models import ContentType

            ct = ContentType.objects.get_for_model(type(world.automation))
            path = reverse(name, kwargs={"content_type_id": ct.pk, "object_id": world.automation.pk})
        else:
            path = reverse(name)
        data = {} if method == "POST" else None
        logout = name == "admin:logout"
        calls.append((f"{method} {name}", Call(method, path, data, as_json=False, fresh_client=logout,
                                               expect="2xx" if logout else "any"), allowed))
    for app_label, allowed in ADMIN_APPS.items():
        calls.append((f"GET admin:app_list[{app_label}]",
                      Call("GET", reverse("admin:app_list", kwargs={"app_label": app_label})), allowed))
    user_pk = world.users["viewer"].pk
    device_pk = world.devices["viewer"].pk
    extra_paths = {"admin:auth_user_password_change": reverse("admin:auth_user_password_change", args=[user_pk]),
                   "admin:otp_totp_totpdevice_config": reverse("admin:otp_totp_totpdevice_config", args=[device_pk]),
                   "admin:otp_totp_totpdevice_qrcode": reverse("admin:otp_totp_totpdevice_qrcode", args=[device_pk])}
    for name, allowed in ADMIN_EXTRA.items():
        calls.append((f"GET {name}", Call("GET", extra_paths[name]), allowed))
    for model, model_admin in admin.site._registry.items():
        label = model._meta.label_lower
        row = ADMIN_MODELS[label]
        info = f"admin:{model._meta.app_label}_{model._meta.model_name}"
        obj = model._default_manager.order_by("pk").first()
        assert obj is not None, f"build_world() must create a {label} so its change page can be tried"
        calls.append((f"GET {info}_changelist", Call("GET", reverse(f"{info}_changelist")), row.view))
        calls.append((f"GET {info}_add", Call("GET", reverse(f"{info}_add")), row.add))
        calls.append((f"GET {info}_change", Call("GET", reverse(f"{info}_change", args=[obj.pk])), row.view))
        calls.append((f"GET {info}_history", Call("GET", reverse(f"{info}_history", args=[obj.pk])), row.view))
        calls.append((f"GET {info}_delete", Call("GET", reverse(f"{info}_delete", args=[obj.pk])), row.delete))
        if hasattr(model_admin, "export_view"):
            calls.append((f"GET {info}_export", Call("GET", reverse(f"{info}_export") + "?format=json"), row.export))
        elif row.export:
            raise AssertionError(f"{label} is expected to be exportable but has no export view")
    return calls


def admin_action_call(world: World, label: str, action: str, role: str | None) -> Call:
    """A POST of one admin action on a fresh target, with its effect check."""
    from audit.models import RoleAssignment
    from automations.models import Automation
    from risk.models import BreakerTrip
    from risk.selectors import kill_switch_state

    app_label, model_name = label.split(".")
    path = reverse(f"admin:{app_label}_{model_name}_changelist")
    data: dict[str, Any] = {"action": action, "index": 0, "reason": "matrix admin action"}
    effect: Callable[[], bool]
    if label == "automations.automation":
        target = new_automation(world, status="active" if action == "pause_selected" else "paused")
        data["_selected_action"] = [target.pk]
        want = "paused" if action == "pause_selected" else "active"
        effect = lambda: Automation.objects.get(pk=target.pk).status == want  # noqa: E731
    elif label == "risk.killswitch":
        kill_switch_set(world, action == "release")
        data["_selected_action"] = [1]
        if action == "release":
            data["otp_token"] = fresh_otp(world, role) if role else "123456"
        want_engaged = action == "engage"
        effect = lambda: kill_switch_state().engaged == want_engaged  # noqa: E731
    elif label == "risk.breakertrip":
        trip = new_trip(world)
        data["_selected_action"] = [trip.pk]
        data["otp_token"] = fresh_otp(world, role) if role else "123456"
        effect = lambda: BreakerTrip.objects.get(pk=trip.pk).reset_at is not None  # noqa: E731
    elif label == "audit.roleassignment":
        from django.contrib.auth import get_user_model

        from audit.services import role_assign

        victim = get_user_model().objects.create_user(f"matrix-victim-{next(_seq)}", "v@example.com", PASSWORD)
        assignment = role_assign(user=victim, role="viewer", reason="matrix victim", actor=world.root)
        data["_selected_action"] = [assignment.pk]
        effect = lambda: not RoleAssignment.objects.get(pk=assignment.pk).active  # noqa: E731
    elif label == "axes.accessattempt":
        from axes.models import AccessAttempt

        data["_selected_action"] = [AccessAttempt.objects.order_by("pk").first().pk]
        effect = lambda: True  # noqa: E731 - judged by the "action ran" message below.
    else:
        raise AssertionError(f"no request written for the admin action {label}.{action}")
    return Call("POST", path, data, as_json=False, effect=effect)


def admin_action_ran(response: Any) -> bool:
    """The action was accepted: Django says 'No action selected.' when the user may not run it."""
    request = getattr(response, "wsgi_request", None)
    storage = getattr(request, "_messages", None)
    texts = [str(m) for m in storage] if storage is not None else []
    return not any("No action selected" in t or "Items must be selected" in t for t in texts)


# ---------------------------------------------------------------------------
# The matrix
# ---------------------------------------------------------------------------


def _client(world: World, principal: str, verified: bool) -> Any:
    from django.test import Client

    client = Client(raise_request_exception=False)
    if principal != "anonymous":
        client.force_login(world.users[principal])
        if verified:
            session = client.session
            session["otp_device_id"] = world.devices[principal].persistent_id
            session.save()
    return client


def _send(client: Any, call: Call) -> Any:
    if call.method == "GET":
        return client.get(call.path)
    if call.as_json:
        return client.post(call.path, data=json.dumps(call.data or {}), content_type="application/json")
    return client.post(call.path, data=call.data or {})


def _exception_summary(response: Any) -> str:
    """The exception behind a 500 and the project line that raised it (the test client keeps exc_info)."""
    import traceback

    exc_info = getattr(response, "exc_info", None)
    if not exc_info:
        return ""
    frames = [f for f in traceback.extract_tb(exc_info[2]) if "/site-packages/" not in f.filename]
    where = f" at {frames[-1].filename.split('/work/main/')[-1]}:{frames[-1].lineno}" if frames else ""
    return f"{exc_info[0].__name__}: {exc_info[1]}{where}"


@dataclass
class Tally:
    requests: int = 0
    unauthorized: list[str] = field(default_factory=list)
    refused_but_allowed: list[str] = field(default_factory=list)
    server_errors: list[str] = field(default_factory=list)

    def record(self, label: str, principal: str, mode: str, response: Any, ok: bool, allowed: bool) -> None:
        self.requests += 1
        where = f"{label} as {principal} ({mode}): {response.status_code}"
        if response.status_code >= 500 and not (label == "GET health" and response.status_code == 503):
            self.server_errors.append(f"{where} {_exception_summary(response)}")
        if ok and not allowed:
            self.unauthorized.append(where)
        if allowed and not ok:
            detail = response.content[:160].decode(errors="replace") if response.status_code != 302 else \
                response.headers.get("Location", "")
            self.refused_but_allowed.append(f"{where} {detail}")


@pytest.fixture
def world(db: None, settings: Any, monkeypatch: pytest.MonkeyPatch) -> World:
    from celery import current_app

    # Tasks go by name on commit (never, inside the test transaction); alerts neither reach a broker.
    monkeypatch.setattr(current_app, "send_task", lambda *a, **k: None)
    settings.METRICS_TOKEN = ""
    # Hashing speed is not under test; the sign-in requests still check the password.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.ALERT_WEBHOOK_URL = ""
    settings.ALERT_EMAILS = []
    return build_world()


REQUESTS_MADE: dict[str, int] = {}


@pytest.mark.parametrize("principal", PRINCIPALS)
def test_it_lets_only_the_allowed_roles_succeed_on_every_endpoint(world: World, principal: str) -> None:
    role = None if principal == "anonymous" else principal
    tally = Tally()
    modes = [("otp", True)] if role is None else [("otp", True), ("password-only", False)]
    for mode, verified in modes:
        client = _client(world, principal, verified)
        # Project endpoints.
        for key, allowed_roles in EXPECTED.items():
            call = project_call(key, world, principal)
            allowed = principal in allowed_roles and (verified or key in PUBLIC)
            response = _send(_client(world, principal, verified) if call.fresh_client else client, call)
            tally.record(f"{key[0]} {key[1]}", principal, mode, response, succeeded(response, call), allowed)
        # Admin pages.
        for label, call, allowed_roles in admin_calls(world):
            allowed = principal in allowed_roles and (verified or allowed_roles == EVERYONE)
            response = _send(_client(world, principal, verified) if call.fresh_client else client, call)
            ok = succeeded(response, call) and (call.method == "GET" or response.status_code in (200, 302))
            tally.record(label, principal, mode, response, ok, allowed)
        # Admin actions.
        for (label, action), allowed_roles in ADMIN_ACTIONS.items():
            call = admin_action_call(world, label, action, role)
            response = _send(client, call)
            ok = response.status_code == 302 and admin_action_ran(response) and succeeded(response, call)
            tally.record(f"POST admin action {label}.{action}", principal, mode, response, ok,
                         principal in allowed_roles and verified)
    REQUESTS_MADE[principal] = tally.requests
    print(f"\nrole matrix: {principal}: {tally.requests} requests")
    report = "\n".join(
        [f"UNAUTHORIZED SUCCESS: {line}" for line in tally.unauthorized]
        + [f"ALLOWED BUT REFUSED: {line}" for line in tally.refused_but_allowed]
        + [f"SERVER ERROR: {line}" for line in tally.server_errors]
    )
    assert report == "", f"{principal}: {tally.requests} requests\n{report}"


def test_it_counts_a_redirect_to_the_login_page_as_a_refusal() -> None:
    # The success rule itself, checked on hand-made responses (no database needed).
    class R:
        def __init__(self, status: int, location: str = "") -> None:
            self.status_code = status
            self.headers = {"Location": location}

    plain = Call("GET", "/")
    assert succeeded(R(200), plain) is True
    assert succeeded(R(302, "/accounts/login/?next=/"), plain) is False
    assert succeeded(R(302, "/admin/login/?next=/admin/"), plain) is False
    assert succeeded(R(302, "/"), plain) is True
    assert succeeded(R(403), plain) is False
    assert succeeded(R(200), Call("GET", "/", effect=lambda: False)) is False

