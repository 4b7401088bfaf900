"""``make run``'s bootstrap on a machine with no DATABASE_URL / REDIS_URL."""

from __future__ import annotations

import pytest

from tests.integration.stack import make_stack, wait_for

pytestmark = pytest.mark.integration


def test_run_starts_embedded_postgres_and_redis_from_an_empty_var_dir_and_serves_health(tmp_path) -> None:
    var_dir = tmp_path / "var"
    var_dir.mkdir()
    assert list(var_dir.iterdir()) == []
    stack = make_stack(var_dir, embedded=True)
    try:
        stack.start(health_timeout=300)
        status, body = stack.health()
        assert status == 200
        assert body["database"]["ok"] and body["redis"]["ok"]
        assert (var_dir / "pgdata" / "PG_VERSION").exists()
        assert (var_dir / "redis" / "port").exists()
        assert (var_dir / "demo-credentials.json").exists()
        # The pipeline runs on the embedded engines too.
        assert wait_for(lambda: any((var_dir / "raw").rglob("sim.seg")), timeout=60, what="raw segments")
    finally:
        stack.stop()
    # Ctrl-C / make stop stopped the embedded servers too.
    assert not (var_dir / "pgdata" / "postmaster.pid").exists()
