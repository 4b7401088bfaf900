"""Schemathesis over the OpenAPI schema (drf-spectacular): no request, however
malformed, may make the API answer 5xx.

Requests go in process through the WSGI handler as an OTP-verified admin with a
valid CSRF pair, so generated bodies reach the serializers and services instead
of stopping at authentication.
"""

from __future__ import annotations

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from django.test import Client
from django_otp.plugins.otp_totp.models import TOTPDevice
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

CSRF = "a" * 32


# Fetching the schema touches no database, so it can load at collection time.
schema = schemathesis.openapi.from_wsgi("/api/schema/", get_wsgi_application())


@pytest.fixture
def keep_connection(db):
    # The test runs inside a transaction; the WSGI handler must not close the
    # connection between requests (the test client does the same).
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


@pytest.fixture
def admin_headers(db, django_user_model):
    user = django_user_model.objects.create_superuser("fuzz-admin", "fuzz@example.com", "fuzz-password-123")
    device = TOTPDevice.objects.create(user=user, name="default", confirmed=True)
    client = Client()
    client.force_login(user)
    session = client.session
    session["otp_device_id"] = device.persistent_id
    session.save()
    return {"Cookie": f"sessionid={session.session_key}; csrftoken={CSRF}", "X-CSRFToken": CSRF}


@schema.parametrize()
@settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_api_request_gets_a_server_error(case, admin_headers, keep_connection):
    case.call_and_validate(headers=admin_headers, checks=[not_a_server_error])
