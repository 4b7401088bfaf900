from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.test import Client, override_settings

from audit.models import AuditEvent


@pytest.mark.django_db
def test_it_records_sign_in_success_and_failure_without_the_password():
    get_user_model().objects.create_user("ann", "ann@example.com", "correct horse battery")
    client = Client()
    from django.contrib.auth import authenticate
    from django.test import RequestFactory

    request = RequestFactory().post("/admin/login/")
    assert authenticate(request, username="ann", password="wrong password!") is None
    failed = AuditEvent.objects.get(kind=AuditEvent.Kind.SIGN_IN_FAILED)
    assert failed.actor_label == "ann" and "wrong password!" not in str(failed.data)
    assert client.login(username="ann", password="correct horse battery", request=request)
    assert AuditEvent.objects.filter(kind=AuditEvent.Kind.SIGN_IN, actor__username="ann").count() == 1


@pytest.mark.django_db
@override_settings(AXES_FAILURE_LIMIT=2)
def test_it_records_a_lockout_and_raises_an_alert(alerts, django_capture_on_commit_callbacks):
    from django.contrib.auth import authenticate
    from django.test import RequestFactory

    get_user_model().objects.create_user("bob", "bob@example.com", "correct horse battery")
    with django_capture_on_commit_callbacks(execute=True):
        for _ in range(3):
            request = RequestFactory().post("/admin/login/", REMOTE_ADDR="10.0.0.9")
            authenticate(request, username="bob", password="nope nope nope")
    lockouts = list(AuditEvent.objects.filter(kind=AuditEvent.Kind.LOCKOUT))
    assert lockouts and {(e.actor_label, e.data["ip"]) for e in lockouts} == {("bob", "10.0.0.9")}
    assert any(kw["kind"] == "lockout" for _, kw in alerts)


@pytest.mark.django_db
def test_it_records_an_otp_failure_at_the_admin_login():
    from django_otp.plugins.otp_totp.models import TOTPDevice

    user = get_user_model().objects.create_user("cat", "cat@example.com", "correct horse battery", is_staff=True)
    device = TOTPDevice.objects.create(user=user, name="phone", confirmed=True)
    response = Client().post("/admin/login/", {"username": "cat", "password": "correct horse battery",
                                               "otp_device": device.persistent_id, "otp_token": "000000"})
    assert response.status_code == 200
    event = AuditEvent.objects.get(kind=AuditEvent.Kind.OTP_FAILED)
    assert event.actor_id == user.pk
