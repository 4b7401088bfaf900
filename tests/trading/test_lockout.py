"""Sign-in lockout (django-axes), keyed on the username AND the client IP together.

After ``AXES_FAILURE_LIMIT`` (5) failed sign-ins of one user from one IP, the
next attempt from that IP is refused even with the correct password and a
valid TOTP code; the same user from another IP still signs in; the lockout is
an audit event (audit.security.on_user_locked_out). Both sign-in forms are
covered: the trader page's /accounts/login/ and the admin's /admin/login/.
"""

from __future__ import annotations

from typing import Any

import pytest

PASSWORD = "lockout-password-2026-correct"
LOCKED_IP = "203.0.113.7"
OTHER_IP = "198.51.100.9"
LIMIT = 5


def _totp_now(device: Any) -> str:
    """The device's current code from its key (django_otp.oath.totp), after forgetting the last used step."""
    from django_otp.oath import totp
    from django_otp.plugins.otp_totp.models import TOTPDevice

    TOTPDevice.objects.filter(pk=device.pk).update(last_t=-1, drift=0, throttling_failure_count=0,
                                                   throttling_failure_timestamp=None)
    return f"{totp(device.bin_key, step=device.step, t0=device.t0, digits=device.digits):0{device.digits}d}"


@pytest.fixture
def staff_user(db: None, settings: Any, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Any]:
    from celery import current_app
    from django.contrib.auth import get_user_model
    from django_otp.plugins.otp_totp.models import TOTPDevice

    # The lockout alert goes to Celery by name on commit; never reach a broker from a test.
    monkeypatch.setattr(current_app, "send_task", lambda *a, **k: None)
    settings.AXES_FAILURE_LIMIT = LIMIT
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    user = get_user_model().objects.create_user("locky", "locky@example.com", PASSWORD, is_staff=True)
    device = TOTPDevice.objects.create(user=user, name="phone", confirmed=True)
    return user, device


def _form(path: str, username: str, password: str, otp: str, device: Any) -> dict[str, str]:
    data = {"username": username, "password": password, "otp_token": otp}
    if path.startswith("/admin/"):
        # The admin's OTP form asks which device; the trader form picks the user's authenticator itself.
        data["otp_device"] = device.persistent_id
    return data


def _signed_in(response: Any, path: str) -> bool:
    """A sign-in succeeded: redirected away from the sign-in page with an authenticated session."""
    location = response.headers.get("Location", "") if response.status_code == 302 else ""
    return bool(location) and not location.split("?")[0].endswith(path) and \
        "_auth_user_id" in response.wsgi_request.session


def _attempt(path: str, ip: str, data: dict[str, str]) -> Any:
    from django.test import Client

    return Client(REMOTE_ADDR=ip).post(path, data)


@pytest.mark.parametrize("path", ["/accounts/login/", "/admin/login/"])
def test_it_locks_the_user_and_ip_pair_after_the_failure_limit(staff_user: tuple[Any, Any], path: str) -> None:
    from audit.models import AuditEvent

    user, device = staff_user
    for attempt in range(LIMIT):
        response = _attempt(path, LOCKED_IP, _form(path, user.username, f"wrong-{attempt}", "000000", device))
        assert not _signed_in(response, path)
    lockouts = AuditEvent.objects.filter(kind=AuditEvent.Kind.LOCKOUT)
    assert lockouts.count() == 1
    event = lockouts.get()
    assert (event.actor_id, event.actor_label, event.data["ip"]) == (user.pk, "locky", LOCKED_IP)

    # The 6th attempt is right in every way and still refused from the locked IP.
    correct = _form(path, user.username, PASSWORD, _totp_now(device), device)
    refused = _attempt(path, LOCKED_IP, correct)
    assert not _signed_in(refused, path)
    assert refused.status_code == 429  # django-axes' lockout answer.

    # The same user from another IP is not locked: the lock is on the pair.
    elsewhere = _attempt(path, OTHER_IP, _form(path, user.username, PASSWORD, _totp_now(device), device))
    assert _signed_in(elsewhere, path)


@pytest.mark.parametrize("path", ["/accounts/login/", "/admin/login/"])
def test_it_does_not_lock_before_the_limit(staff_user: tuple[Any, Any], path: str) -> None:
    from audit.models import AuditEvent

    user, device = staff_user
    for attempt in range(LIMIT - 1):
        _attempt(path, LOCKED_IP, _form(path, user.username, f"wrong-{attempt}", "000000", device))
    response = _attempt(path, LOCKED_IP, _form(path, user.username, PASSWORD, _totp_now(device), device))
    assert _signed_in(response, path)
    assert not AuditEvent.objects.filter(kind=AuditEvent.Kind.LOCKOUT).exists()


def test_it_does_not_lock_another_user_from_the_locked_ip(staff_user: tuple[Any, Any]) -> None:
    from django.contrib.auth import get_user_model
    from django_otp.plugins.otp_totp.models import TOTPDevice

    user, device = staff_user
    path = "/accounts/login/"
    for attempt in range(LIMIT):
        _attempt(path, LOCKED_IP, _form(path, user.username, f"wrong-{attempt}", "000000", device))
    other = get_user_model().objects.create_user("neighbour", "n@example.com", PASSWORD)
    other_device = TOTPDevice.objects.create(user=other, name="phone", confirmed=True)
    response = _attempt(path, LOCKED_IP, _form(path, "neighbour", PASSWORD, _totp_now(other_device), other_device))
    assert _signed_in(response, path)
