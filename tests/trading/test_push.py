"""trading.push: queued group sends arrive, in order, over the real Redis channel layer."""

from __future__ import annotations

import uuid

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from trading import push as push_module
from trading.push import flush, pending, push


@pytest.fixture
def group_channel():
    layer = get_channel_layer()
    group = f"test-push-{uuid.uuid4().hex[:8]}"
    channel = f"test-push-reader-{uuid.uuid4().hex[:8]}"
    async_to_sync(layer.group_add)(group, channel)
    yield layer, group, channel
    async_to_sync(layer.group_discard)(group, channel)


def _receive_many(layer, channel, n):  # type: ignore[no-untyped-def]
    async def receive():  # type: ignore[no-untyped-def]
        return [await layer.receive(channel) for _ in range(n)]

    # All in one event loop: channels_redis re-delivers a message whose receiving loop went away.
    return async_to_sync(receive)()


def _receive(layer, channel):  # type: ignore[no-untyped-def]
    return _receive_many(layer, channel, 1)[0]


def test_pushes_arrive_in_the_order_they_were_made(group_channel) -> None:
    layer, group, channel = group_channel
    for seq in range(1, 51):
        assert push(group, {"type": "signal.message", "seq": seq})
    assert flush(timeout=10)
    assert pending() == 0
    received = [m["seq"] for m in _receive_many(layer, channel, 50)]
    assert received == list(range(1, 51))


def test_push_returns_before_the_message_is_sent(group_channel, monkeypatch) -> None:
    layer, group, channel = group_channel
    # Hold the sender: the message stays queued, push has still returned.
    import threading

    gate = threading.Event()
    original = type(layer).group_send

    async def slow_send(self, group_name, message):  # type: ignore[no-untyped-def]
        import asyncio

        while not gate.is_set():
            await asyncio.sleep(0.005)
        return await original(self, group_name, message)

    monkeypatch.setattr(type(layer), "group_send", slow_send)
    assert push(group, {"type": "signal.message", "seq": 7})
    assert pending() == 1
    assert not flush(timeout=0.05)
    gate.set()
    assert flush(timeout=10)
    assert _receive(layer, channel)["seq"] == 7


def test_a_full_queue_drops_with_false_and_keeps_going(group_channel, monkeypatch) -> None:
    layer, group, channel = group_channel
    monkeypatch.setattr(push_module, "MAX_QUEUED", 0)
    assert push(group, {"type": "signal.message", "seq": 1}) is False
    monkeypatch.setattr(push_module, "MAX_QUEUED", 10)
    assert push(group, {"type": "signal.message", "seq": 2}) is True
    assert flush(timeout=10)
    assert _receive(layer, channel)["seq"] == 2


def test_a_failing_layer_does_not_stop_later_pushes(group_channel, monkeypatch) -> None:
    layer, group, channel = group_channel
    original = type(layer).group_send
    calls = {"n": 0}

    async def flaky(self, group_name, message):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if message["seq"] == 1:
            raise ConnectionError("redis went away")
        return await original(self, group_name, message)

    monkeypatch.setattr(type(layer), "group_send", flaky)
    push(group, {"type": "signal.message", "seq": 1})
    push(group, {"type": "signal.message", "seq": 2})
    assert flush(timeout=10)
    assert calls["n"] == 2
    assert _receive(layer, channel)["seq"] == 2
