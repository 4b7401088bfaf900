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
exactly as the per-call ones shared the pool.

The ack emulation keeps kombu's keys, values and restore path (the unacked
hash and index, restored after the visibility timeout or at shutdown); only
its two per-task writes, the record before the task runs and its removal on
ack, are each one atomic script call instead of a MULTI/EXEC pipeline, and the
record's reply is read only when the ack comes (see ``QoS``). A worker killed
mid-task therefore leaves exactly what kombu's own leaves, and the task comes
back the same way. Redis must allow EVAL/EVALSHA (scripting).

Selected by ``CELERY_BROKER_TRANSPORT`` in ``trading.settings`` when the
broker URL is a Redis one; an explicit transport wins over the URL's scheme in
``kombu.Connection``.
"""

from __future__ import annotations

from time import time
from typing import Any

import redis
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.json import dumps

# kombu's ack emulation, each step one atomic script call rather than a
# MULTI/EXEC pipeline (four commands packed, four replies parsed). The same
# keys end up holding the same values. KEYS: the unacked index (sorted set,
# scored by delivery time), the unacked hash; ARGV: delivery tag, time, message.
UNACKED_ADD = "redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1]) redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])"
UNACKED_REMOVE = "redis.call('ZREM', KEYS[1], ARGV[1]) redis.call('HDEL', KEYS[2], ARGV[1])"


class QoS(kombu_redis.QoS):
    """kombu's Redis QoS; the record written before a task runs and removed by its ack cost one call each.

    The record before the task is sent without waiting for Redis's reply: the
    task starts one round trip sooner, and the reply is read (and an error
    raised) before anything else touches the record: the ack, a reject, a
    restore. Sent means in the kernel's socket buffer, which the kernel still
    delivers if this process is killed right after, so a worker killed during
    the task leaves the record exactly as before, and the task comes back.
    """

    _pending: Any = None  # The connection an append went out on, its reply not read yet.

    def append(self, message: Any, delivery_tag: str) -> None:
        self._settle_pending()
        delivery = message.delivery_info
        payload = dumps([message._raw, delivery["exchange"], delivery["routing_key"]])
        self._pending = self.channel.unacked_send(UNACKED_ADD, delivery_tag, time(), payload)
        virtual.QoS.append(self, message, delivery_tag)

    def _settle_pending(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            self.channel.unacked_settle(pending)

    def ack(self, delivery_tag: str) -> None:
        self._settle_pending()
        self.channel.unacked_script(UNACKED_REMOVE, delivery_tag)
        virtual.QoS.ack(self, delivery_tag)

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        self._settle_pending()
        super().reject(delivery_tag, requeue=requeue)

    def restore_by_tag(self, tag: str, client: Any = None, leftmost: bool = False) -> None:
        self._settle_pending()
        super().restore_by_tag(tag, client=client, leftmost=leftmost)

    def restore_unacked(self, client: Any = None) -> None:
        self._settle_pending()
        super().restore_unacked(client=client)


class Channel(kombu_redis.Channel):
    """A Redis channel whose synchronous client is built once, on first use."""

    QoS = QoS

    _sync_client: Any = None
    _script_client: Any = None
    _scripts: dict[str, Any] | None = None

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

    def unacked_send(self, source: str, *args: object) -> Any:
        """Send one unacked-record script (EVAL: no NOSCRIPT to recover from later) without reading its reply.

        Returns the connection it went out on, checked out of the channel's pool
        until ``unacked_settle`` reads the reply and returns it.
        """
        prefix = self.global_keyprefix or ""
        connection = self.pool.get_connection()
        try:
            connection.send_command("EVAL", source, 2, prefix + self.unacked_index_key, prefix + self.unacked_key, *args)
        except BaseException:
            self.pool.release(connection)
            raise
        return connection

    def unacked_settle(self, connection: Any) -> None:
        """Read the reply of ``unacked_send`` (redis-py raises an error reply, as a waited-for call would) and
        return the connection."""
        try:
            connection.read_response()
        except redis.ResponseError:
            raise  # A well-formed error reply: the connection is in step and goes back as it is.
        except BaseException:
            connection.disconnect()  # Its reply may still be in flight: never hand it out again as is.
            raise
        finally:
            self.pool.release(connection)

    def unacked_script(self, source: str, *args: object) -> Any:
        """Run one of the unacked-record scripts on the unacked index and hash.

        Through a plain client on the channel's pool, with the global key
        prefix applied here to both keys: kombu's prefixing client prefixes
        only the first key of an EVALSHA.
        """
        client = self._script_client
        if client is None or client.connection_pool is not self.pool:
            kwargs: dict[str, Any] = {"connection_pool": self.pool}
            credential_provider = self.pool.connection_kwargs.get("credential_provider")
            if credential_provider is not None:
                kwargs["credential_provider"] = credential_provider
            client = self._script_client = redis.Redis(**kwargs)
            self._scripts = {}
        scripts = self._scripts
        script = scripts.get(source)
        if script is None:
            script = scripts[source] = client.register_script(source)
        prefix = self.global_keyprefix or ""
        # A script the server does not have (after a restart) is loaded again by redis-py's Script.
        return script(keys=[prefix + self.unacked_index_key, prefix + self.unacked_key], args=args, client=client)


class Transport(kombu_redis.Transport):
    Channel = Channel
