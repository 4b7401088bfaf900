from __future__ import annotations

import functools
from decimal import Decimal

import pytest
from asgiref.sync import async_to_sync
from channels.auth import AuthMiddlewareStack
from channels.db import database_sync_to_async
from channels.routing import URLRouter
from channels.security.websocket import AllowedHostsOriginValidator
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.test import Client
from django_otp import DEVICE_ID_SESSION_KEY

from automations.consumers import CLOSE_NOT_VERIFIED, CLOSE_UNAUTHENTICATED
from automations.models import Signal
from automations.routing import websocket_urlpatterns
from automations.services import signal_create, signal_transition
from tests.automations.conftest import make_automation, make_user

pytestmark = pytest.mark.django_db(transaction=True)

# The same stack as trading.asgi: origin check, then session and user from the cookie.
application = AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns)))


def run_async(fn):
    """Run an async test body from a plain pytest test (no asyncio plugin is installed)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return async_to_sync(fn)(*args, **kwargs)

    return wrapper


@pytest.fixture(autouse=True)
def fresh_layer():
    # The real Redis channel layer from settings; a fresh instance per test so
    # no connection outlives the event loop that opened it.
    from channels.layers import channel_layers

    channel_layers.backends.clear()
    yield
    channel_layers.backends.clear()


def session_cookie(*, verified: bool) -> bytes:
    user = make_user(f"trader-{verified}", "trader")
    client = Client()
    client.force_login(user)
    if verified:
        session = client.session
        session[DEVICE_ID_SESSION_KEY] = user.totpdevice_set.get().persistent_id
        session.save()
    return f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}".encode()


def communicator(cookie: bytes | None, origin: bytes = b"http://testserver") -> WebsocketCommunicator:
    headers = [(b"origin", origin)]
    if cookie:
        headers.append((b"cookie", cookie))
    return WebsocketCommunicator(application, "/ws/signals/", headers=headers)


@database_sync_to_async
def make_signal_and_queue() -> Signal:
    from automations.models import Automation

    automation = Automation.objects.filter(name="auto-1").first() or make_automation()
    signal = signal_create(automation=automation, side="buy", quantity=Decimal("1"), limit_price=Decimal("100.1"), reason="t")
    signal_transition(signal=signal, to_status=Signal.Status.QUEUED, actor_label="test")
    return signal


@run_async
async def test_it_pushes_each_signal_change_with_a_growing_sequence_to_a_verified_trader():
    cookie = await database_sync_to_async(session_cookie)(verified=True)
    ws = communicator(cookie)
    connected, _ = await ws.connect()
    assert connected

    signal = await make_signal_and_queue()
    born = await ws.receive_json_from(timeout=5)
    queued = await ws.receive_json_from(timeout=5)

    assert born["type"] == "signal" and born["signal"]["id"] == signal.pk and born["signal"]["status"] == "new"
    assert queued["signal"]["status"] == "queued"
    assert queued["seq"] == born["seq"] + 1 == signal.sequence
    await ws.disconnect()


@run_async
async def test_it_refuses_an_anonymous_connection():
    ws = communicator(None)
    connected, code = await ws.connect()
    assert not connected and code == CLOSE_UNAUTHENTICATED


@run_async
async def test_it_refuses_a_session_that_did_not_pass_otp():
    cookie = await database_sync_to_async(session_cookie)(verified=False)
    ws = communicator(cookie)
    connected, code = await ws.connect()
    assert not connected and code == CLOSE_NOT_VERIFIED


@run_async
async def test_it_refuses_a_foreign_origin_even_with_a_verified_session():
    cookie = await database_sync_to_async(session_cookie)(verified=True)
    ws = communicator(cookie, origin=b"http://evil.example")
    connected, _ = await ws.connect()
    assert not connected


@run_async
async def test_it_ignores_what_a_client_sends():
    cookie = await database_sync_to_async(session_cookie)(verified=True)
    ws = communicator(cookie)
    await ws.connect()
    await ws.send_json_to({"type": "approve", "signal_id": 1})
    assert await ws.receive_nothing(timeout=0.3)
    assert await database_sync_to_async(Signal.objects.count)() == 0
    await ws.disconnect()


@pytest.mark.urls("tests.automations.urls")
@run_async
async def test_a_client_that_misses_pushes_sees_the_gap_and_recovers_everything_over_http():
    cookie = await database_sync_to_async(session_cookie)(verified=True)
    ws = communicator(cookie)
    await ws.connect()
    first = await make_signal_and_queue()
    last_applied = (await ws.receive_json_from(timeout=5))["seq"]  # The client processed only the first message...
    await ws.receive_json_from(timeout=5)  # ...and this one was lost on the way.
    second = await make_signal_and_queue()
    arrived = await ws.receive_json_from(timeout=5)
    await ws.receive_json_from(timeout=5)

    # The trader page's rule: a message whose seq is beyond last_applied + 1 means a gap.
    assert arrived["seq"] > last_applied + 1

    def resync():
        client = Client()
        client.cookies[settings.SESSION_COOKIE_NAME] = cookie.decode().split("=", 1)[1]
        return client.get(f"/api/signals/?since_seq={last_applied}").json()

    body = await database_sync_to_async(resync)()
    latest = {s["id"]: s["status"] for s in body["results"]}
    assert latest == {first.pk: "queued", second.pk: "queued"}
    assert body["last_seq"] == second.sequence
    await ws.disconnect()
