from __future__ import annotations

import pytest

from trading.redis_client import redis_client


@pytest.fixture
def redis_clean():
    """A Redis database emptied before and after the test (tests use their own DB number)."""
    client = redis_client()
    client.flushdb()
    yield client
    client.flushdb()
