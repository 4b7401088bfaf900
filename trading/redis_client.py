from __future__ import annotations

import threading

import redis
from django.conf import settings

_guard = threading.Lock()
_client: redis.Redis | None = None
_url: str | None = None


def redis_client() -> redis.Redis:
    """One client (one thread-safe connection pool) per process, built from ``REDIS_URL``.

    Not one per thread: the ASGI web process runs each request's sync code in a
    thread of its own, so a per-thread client opened a new Redis connection on
    every request. redis-py's pool is thread-safe and, after a fork, the child
    drops the parent's connections and opens its own.
    """
    global _client, _url
    client, url = _client, _url
    if client is None or url != settings.REDIS_URL:
        with _guard:
            if _client is None or _url != settings.REDIS_URL:
                _client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=5, socket_connect_timeout=5)
                _url = settings.REDIS_URL
            client = _client
    return client
