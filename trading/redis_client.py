from __future__ import annotations

import threading

import redis
from django.conf import settings

_local = threading.local()


def redis_client() -> redis.Redis:
    """One client (and connection pool) per thread, built from ``REDIS_URL``."""
    client = getattr(_local, "client", None)
    if client is None or getattr(_local, "url", None) != settings.REDIS_URL:
        client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=5, socket_connect_timeout=5)
        _local.client = client
        _local.url = settings.REDIS_URL
    return client
