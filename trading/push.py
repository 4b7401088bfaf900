"""Fire-and-forget group sends over the channel layer, from synchronous code.

A live push is a courtesy to connected screens, never part of a decision:
clients number every message and re-sync over HTTP when they see a gap. So
the process that made the decision must not wait for it. Each
``async_to_sync(layer.group_send)`` call cost several milliseconds (a fresh
event loop hand-off and Redis round trips) on the approval and execution
paths, between a commit and the next step of the order.

Here one daemon thread per process runs an event loop with one sender
coroutine that drains a queue in order, so pushes leave in the order they
were made (a client would otherwise see a false gap). ``push`` only
enqueues. A full queue (the layer is down or far behind) drops the message
with a log line; so does a crash of the process before the queue drained:
both show up at the client as a gap and a re-sync. ``flush`` waits for the
queue to drain (tests, and ``atexit`` so short commands do not lose their
last pushes).
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import threading
import time
from typing import Any

logger = logging.getLogger(__name__)

MAX_QUEUED = 10_000
_FLUSH_AT_EXIT_S = 2.0


class _Pusher:
    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._pid = -1
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[tuple[str, dict[str, Any]]] | None = None
        self._task: asyncio.Task[None] | None = None
        self._pending = 0  # Enqueued and not yet sent (or dropped); read without the loop.
        self._count_guard = threading.Lock()

    def _start(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            self._queue = asyncio.Queue()
            self._task = loop.create_task(self._sender())
            loop.call_soon(ready.set)
            loop.run_forever()

        threading.Thread(target=run, name="channel-push", daemon=True).start()
        ready.wait()
        return loop

    def _ensure(self) -> asyncio.AbstractEventLoop:
        # A forked child (Celery prefork, supervisord) inherits no running thread: start its own.
        if self._loop is None or self._pid != os.getpid():
            with self._guard:
                if self._loop is None or self._pid != os.getpid():
                    self._pending = 0
                    self._loop = self._start()
                    self._pid = os.getpid()
        return self._loop

    async def _sender(self) -> None:
        from channels.layers import get_channel_layer

        assert self._queue is not None
        while True:
            group, message = await self._queue.get()
            try:
                layer = get_channel_layer()
                if layer is not None:
                    await layer.group_send(group, message)
            except Exception:  # A dead channel layer must not stop later pushes.
                logger.exception("push to %s failed (seq %s)", group, message.get("seq"))
            finally:
                self._done()

    def _done(self) -> None:
        with self._count_guard:
            self._pending -= 1

    def push(self, group: str, message: dict[str, Any]) -> bool:
        """Queue ``message`` for ``group``; False when it was dropped because the queue is full."""
        loop = self._ensure()
        with self._count_guard:
            if self._pending >= MAX_QUEUED:
                logger.error("push queue full (%s): dropped seq %s for %s", self._pending, message.get("seq"), group)
                return False
            self._pending += 1

        def put() -> None:
            assert self._queue is not None
            self._queue.put_nowait((group, message))

        loop.call_soon_threadsafe(put)
        return True

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every queued push was sent (or failed); False on timeout."""
        deadline = time.monotonic() + timeout
        while self._pending > 0 and self._pid == os.getpid():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.001)
        return True

    @property
    def pending(self) -> int:
        return self._pending if self._pid == os.getpid() else 0


_pusher = _Pusher()


def push(group: str, message: dict[str, Any]) -> bool:
    """Send ``message`` to channel-layer ``group`` soon, without waiting. Never raises."""
    try:
        return _pusher.push(group, message)
    except Exception:
        logger.exception("could not queue a push to %s", group)
        return False


def flush(timeout: float = 5.0) -> bool:
    return _pusher.flush(timeout)


def pending() -> int:
    return _pusher.pending


atexit.register(lambda: _pusher.flush(_FLUSH_AT_EXIT_S))
