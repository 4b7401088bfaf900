from __future__ import annotations

import json

import pytest
from django.test import Client
from django_otp import DEVICE_ID_SESSION_KEY
from django_otp.oath import totp

from tests.automations.conftest import make_automation, make_user

pytestmark = [pytest.mark.django_db, pytest.mark.urls("tests.automations.urls")]


def test_it_sends_an_anonymous_visitor_to_the_otp_login():
    response = Client().get("/")
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")


def test_it_sends_a_signed_in_but_unverified_user_to_the_otp_login():
    client = Client()
    client.force_login(make_user("t1", "trader"))
    response = client.get("/")
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")


def test_it_signs_in_with_password_and_totp_and_shows_the_trader_page():
    user = make_user("t2", "trader")
    device = user.totpdevice_set.get()
    token = f"{totp(device.bin_key, step=device.step, t0=device.t0, digits=device.digits):0{device.digits}d}"
    make_automation(name="visible-automation")
    client = Client()

    # A wrong code keeps the user out (and throttles the device, so the right code comes from a fresh device).
    make_user("t3", "trader")
    wrong = client.post("/accounts/login/", {"username": "t3", "password": "correct horse battery staple", "otp_token": "000000"})
    assert wrong.status_code == 200 and client.session.get(DEVICE_ID_SESSION_KEY) is None
    assert "_auth_user_id" not in client.session

    response = client.post("/accounts/login/", {"username": "t2", "password": "correct horse battery staple", "otp_token": token})
    assert response.status_code == 302
    assert client.session[DEVICE_ID_SESSION_KEY] == device.persistent_id

    page = client.get("/")
    assert page.status_code == 200
    html = page.content.decode()
    for testid in ("signals-table", "automations-table", "killswitch-engage", "counter-approved", "counter-automatic"):
        assert f'data-testid="{testid}"' in html
    bootstrap = json.loads(html.split('id="trader-bootstrap" type="application/json">')[1].split("</script>")[0])
    assert [a["name"] for a in bootstrap["automations"]] == ["visible-automation"]
    assert bootstrap["can_operate"] is True and bootstrap["can_configure"] is False


def test_it_serves_plotly_from_the_installed_package_not_a_cdn():
    response = Client().get("/vendor/plotly.min.js")
    body = b"".join(response.streaming_content)
    assert response.status_code == 200 and response["Content-Type"] == "application/javascript"
    assert len(body) > 1_000_000 and b"plotly" in body[:2000].lower()
