"""The Redis transport with one client per channel (trading.kombu_redis): reuse, delivery, redelivery.

The process tests start real solo workers on this app's configuration, each
under a key prefix of its own. A worker killed with SIGKILL in the middle of
a task never acknowledges it: kombu's ack emulation left the message in the
unacked hash, and a second worker brings it back after the visibility timeout
(1 s here) and runs it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import redis
from celery import Celery
from django.conf import settings
from kombu import Connection

from trading.celery import app
from trading.kombu_redis import Channel, Transport
from trading.redis_client import redis_client

ROOT = Path(__file__).resolve().parents[2]
RECORD_TASK = "tests.trading.hop_tasks.record_task"
HOLD_TASK = "tests.trading.hop_tasks.hold_task"


def _wait(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def prefix():
    prefix = f"hop-test-{uuid.uuid4().hex[:8]}:"
    yield prefix
    client = redis_client()
    for key in client.scan_iter(f"{prefix}*"):
        client.delete(key)


@pytest.fixture
def sender(prefix):
    # Not the current app: the rest of the session keeps sending through trading's app.
    sender = Celery("sender", broker=settings.CELERY_BROKER_URL, set_as_current=False)
    sender.conf.broker_transport = settings.CELERY_BROKER_TRANSPORT
    sender.conf.broker_transport_options = {"global_keyprefix": prefix, "visibility_timeout": 1}
    yield sender
    sender.close()


@pytest.fixture
def start_worker(prefix, tmp_path):
    started: list[subprocess.Popen] = []

    def start() -> subprocess.Popen:
        env = {**os.environ, "REDIS_URL": settings.REDIS_URL, "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
               "CELERY_KEY_PREFIX": prefix, "CELERY_VISIBILITY_TIMEOUT": "1"}
        env.pop("CELERY_BROKER_TRANSPORT", None)
        log = tmp_path / f"worker-{len(started)}.log"
        proc = subprocess.Popen(  # noqa: S603
            [sys.executable, "-m", "celery", "-A", "trading", "worker", "-Q", "hop", "--include", "tests.trading.hop_tasks",
             "--pool", "solo", "-n", f"hop-{uuid.uuid4().hex[:6]}@%h", "--without-gossip", "--without-mingle",
             "--without-heartbeat", "-l", "INFO"],
            cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
        )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


def test_the_app_uses_the_shared_client_transport_for_a_redis_broker():
    with app.connection_for_write() as conn:
        assert isinstance(conn.transport, Transport)
        assert isinstance(conn.default_channel, Channel)


def test_a_channel_builds_its_synchronous_client_once_per_pool():
    with Connection(settings.CELERY_BROKER_URL, transport="trading.kombu_redis:Transport") as conn:
        channel = conn.default_channel
        client = channel._create_client()
        assert channel._create_client() is client
        with channel.conn_or_acquire() as acquired:
            assert acquired is client
        assert channel._create_client(asynchronous=True) is not client
        channel._disconnect_pools()
        rebuilt = channel._create_client()
        assert rebuilt is not client
        assert rebuilt.connection_pool is channel.pool
        assert rebuilt.ping()


class _Message:
    def __init__(self, body: str) -> None:
        self._raw = {"body": body, "headers": {}, "properties": {"delivery_tag": "t"}}
        self.delivery_info = {"exchange": "", "routing_key": "hop"}


def _keys(prefix: str) -> tuple[dict, list]:
    client = redis_client()
    return client.hgetall(f"{prefix}unacked"), client.zrange(f"{prefix}unacked_index", 0, -1)


def test_its_unacked_record_and_ack_leave_the_same_keys_as_kombus_own_qos(prefix):
    ours, theirs = f"{prefix}ours:", f"{prefix}kombu:"
    with Connection(settings.CELERY_BROKER_URL, transport="trading.kombu_redis:Transport",
                    transport_options={"global_keyprefix": ours}) as conn, \
            Connection(settings.CELERY_BROKER_URL, transport="redis",
                       transport_options={"global_keyprefix": theirs}) as stock:
        qos, stock_qos = conn.default_channel.qos, stock.default_channel.qos
        assert type(stock_qos) is not type(qos)
        for tag in ("tag-1", "tag-2"):
            qos.append(_Message(tag), tag)
            stock_qos.append(_Message(tag), tag)
        assert _keys(ours) == _keys(theirs)
        assert _keys(ours)[1] == [b"tag-1", b"tag-2"]
        client = redis_client()
        score = client.zscore(f"{ours}unacked_index", "tag-1")
        assert abs(score - client.zscore(f"{theirs}unacked_index", "tag-1")) < 5
        assert set(qos._delivered) == {"tag-1", "tag-2"}

        qos.ack("tag-1")
        stock_qos.ack("tag-1")
        assert _keys(ours) == _keys(theirs)
        assert _keys(ours)[1] == [b"tag-2"]
        # Nothing was written without the prefix.
        assert not client.exists("unacked", "unacked_index")


def test_a_worker_on_it_runs_every_task_once_and_acknowledges_each(prefix, sender, start_worker):
    worker = start_worker()
    key = f"{prefix}ran"
    for i in range(20):
        sender.send_task(RECORD_TASK, args=[key, i], queue="hop")
    client = redis_client()
    assert _wait(lambda: client.llen(key) >= 20, 60), "the worker did not run the tasks"
    time.sleep(0.2)
    ran = [int(row.split()[0]) for row in client.lrange(key, 0, -1)]
    assert sorted(ran) == list(range(20))
    assert {int(row.split()[1]) for row in client.lrange(key, 0, -1)} == {worker.pid}
    # Every ack removed the message's unacked record, and nothing is left queued.
    assert _wait(lambda: client.hlen(f"{prefix}unacked") == 0, 5)
    assert client.zcard(f"{prefix}unacked_index") == 0
    assert client.llen(f"{prefix}hop") == 0


def test_a_task_of_a_worker_killed_mid_task_is_redelivered_to_the_next_worker(prefix, sender, start_worker):
    first = start_worker()
    key = f"{prefix}hold"
    client = redis_client()
    sender.send_task(HOLD_TASK, args=[key], queue="hop")
    assert _wait(lambda: client.llen(f"{key}:started") == 1, 60), "the first worker did not start the task"
    os.kill(first.pid, signal.SIGKILL)
    first.wait(timeout=10)
    # Taken but never acknowledged: the message waits in the unacked hash and index, not in the queue.
    assert client.hlen(f"{prefix}unacked") == 1
    assert client.zcard(f"{prefix}unacked_index") == 1
    assert client.zscore(f"{prefix}unacked_index", client.hkeys(f"{prefix}unacked")[0]) <= time.time()
    assert client.llen(f"{prefix}hop") == 0
    assert client.llen(f"{key}:done") == 0

    client.set(f"{key}:release", 1)
    second = start_worker()
    assert _wait(lambda: client.llen(f"{key}:done") == 1, 60), "the task was not redelivered"
    started = [int(pid) for pid in client.lrange(f"{key}:started", 0, -1)]
    assert started == [first.pid, second.pid]
    assert [int(pid) for pid in client.lrange(f"{key}:done", 0, -1)] == [second.pid]
    assert _wait(lambda: client.hlen(f"{prefix}unacked") == 0, 5)
    assert client.zcard(f"{prefix}unacked_index") == 0


def test_the_record_goes_out_before_the_task_and_its_error_is_raised_by_the_ack(prefix):
    with Connection(settings.CELERY_BROKER_URL, transport="trading.kombu_redis:Transport",
                    transport_options={"global_keyprefix": prefix}) as conn:
        qos = conn.default_channel.qos
        qos.append(_Message("m1"), "tag-1")
        assert qos._pending is not None  # Sent, its reply not read: the task would start now.
        # The record is in Redis all the same (read on another connection).
        assert _wait(lambda: _keys(prefix)[1] == [b"tag-1"], 2)
        qos.ack("tag-1")
        assert qos._pending is None and _keys(prefix) == ({}, [])

        # A record Redis refuses (the unacked hash is not a hash): the error comes out at the ack, not lost.
        redis_client().set(f"{prefix}unacked", "not a hash")
        qos.append(_Message("m2"), "tag-2")
        with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
            qos.ack("tag-2")
        assert qos._pending is None
        # The channel's pool is still usable afterwards.
        redis_client().delete(f"{prefix}unacked")
        qos.append(_Message("m3"), "tag-3")
        qos.ack("tag-3")
        assert _keys(prefix) == ({}, [b"tag-2"])  # tag-2's index entry was written before the HSET failed.
