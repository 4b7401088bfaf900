"""kombu's Redis transport with one synchronous client per channel instead of one per operation.

kombu 5.7's Redis channel builds a new redis-py ``Redis`` object for nearly
every synchronous operation (``Channel.conn_or_acquire`` -> ``_create_client``):
each publish, and on a worker each message's ``QoS.append`` (the unacked
record written before the task runs) and ``QoS.ack``. The commands then
borrow a connection from the channel's pool, so the new object buys nothing,
yet building one copies redis-py's ~170 response callbacks into a fresh
case-insensitive dict (redis-py issue #3624): about 0.1-0.2 ms of CPU each,
three per task hop.

Here the channel builds that client once and hands the same one out. A
``redis.Redis`` without ``single_connection_client`` holds no connection and
no per-call state: every command and pipeline checks a connection out of the
pool and returns it, so one client is safe to share across calls and threads,
exactly as the per-call ones shared the pool. Nothing else changes: the same
commands reach Redis in the same order, so the delivery guarantees (ack
emulation: the unacked hash and index, restored after the visibility timeout
or at shutdown) are kombu's own.

Selected by ``CELERY_BROKER_TRANSPORT`` in ``trading.settings`` when the
broker URL is a Redis one; an explicit transport wins over the URL's scheme in
``kombu.Connection``.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import redis as kombu_redis


class Channel(kombu_redis.Channel):
    """A Redis channel whose synchronous client is built once, on first use."""

    _sync_client: Any = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:
            # The asynchronous client is already built once (``Channel.client``, cached).
            return super()._create_client(asynchronous=True)
        client = self._sync_client
        # Bound to the pool it was built on: a channel whose pools were
        # disconnected and rebuilt gets a client on the new pool.
        if client is None or client.connection_pool is not self.pool:
            client = self._sync_client = super()._create_client()
        return client


class Transport(kombu_redis.Transport):
    Channel = Channel
