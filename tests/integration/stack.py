"""Run the real process set (supervisord, web, feed, three workers, beat) for a test.

Each stack gets its own PostgreSQL database, Redis database number, ``var/``
directory and web port, so it never touches a developer's running stack.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg

BASE_DIR = Path(__file__).resolve().parents[2]
PYTHON = sys.executable


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))


def psycopg_conninfo(url: str) -> str:
    """psycopg wants a socket directory as ``host=``; Django URLs carry it percent-encoded."""
    parts = urlsplit(url)
    if parts.hostname and parts.hostname.startswith("%2f"):
        from urllib.parse import unquote

        user = parts.username or "postgres"
        return f"dbname={parts.path.lstrip('/')} user={user} host={unquote(parts.hostname)}"
    return url.replace("postgres://", "postgresql://", 1)


def wait_for(predicate: Callable[[], Any], *, timeout: float, interval: float = 0.5, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except Exception as exc:  # noqa: BLE001 - keep polling until the deadline
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}")


@dataclass
class Stack:
    var_dir: Path
    port: int
    database_url: str
    redis_url: str
    env: dict[str, str]
    process: subprocess.Popen | None = None
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.var_dir / "runtime.log"

    # --- lifecycle -------------------------------------------------------
    def start(self, *, seed: bool = True, health_timeout: float = 180) -> None:
        args = [PYTHON, "-m", "trading.runtime", "run", "--port", str(self.port)]
        if not seed:
            args.append("--no-seed")
        self.process = subprocess.Popen(  # noqa: S603
            args, cwd=BASE_DIR, env=self.env, stdout=self.log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
        )
        wait_for(lambda: self.health()[0] == 200, timeout=health_timeout, interval=1, what="/health to answer 200")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)

    # --- probes ------------------------------------------------------------
    def health(self) -> tuple[int, dict]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=5) as resp:  # noqa: S310
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"{}")
        except OSError as err:
            return 0, {"error": str(err)}

    def supervisorctl(self, *args: str) -> str:
        result = subprocess.run(  # noqa: S603
            [PYTHON, "-m", "supervisor.supervisorctl", "-c", str(self.var_dir / "supervisord.conf"), *args],
            capture_output=True, text=True, cwd=BASE_DIR, check=False,
        )
        return result.stdout.strip()

    def manage(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run a management command against this stack's database and Redis."""
        return subprocess.run(  # noqa: S603
            [PYTHON, str(BASE_DIR / "manage.py"), *args], cwd=BASE_DIR, env=self.env, capture_output=True, text=True,
            check=check, timeout=120,
        )

    def pid(self, name: str) -> int:
        return int(self.supervisorctl("pid", name))

    def sql(self, query: str, params: tuple = ()) -> list[tuple]:
        with psycopg.connect(psycopg_conninfo(self.database_url), autocommit=True) as conn:
            return conn.execute(query, params).fetchall()

    def scalar(self, query: str, params: tuple = ()) -> Any:
        return self.sql(query, params)[0][0]

    def proc_environ(self, pid: int) -> dict[str, str]:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
        return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def make_stack(tmp: Path, *, extra_env: dict[str, str] | None = None, embedded: bool = False) -> Stack:
    """A stack on a fresh database (or on embedded services under ``tmp`` when ``embedded``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "COV_", "DJANGO_SETTINGS_MODULE"))}
    env.update({
        "FP_VAR_DIR": str(tmp),
        "PYTHONUNBUFFERED": "1",
        "CELERY_VISIBILITY_TIMEOUT": "10",
        "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
    })
    if embedded:
        env.pop("DATABASE_URL", None)
        env.pop("REDIS_URL", None)
        database_url = redis_url = ""
    else:
        name = f"fp_it_{uuid.uuid4().hex[:10]}"
        admin_url = os.environ["DATABASE_URL"]
        with psycopg.connect(psycopg_conninfo(with_database(admin_url, "postgres")), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        database_url = with_database(admin_url, name)
        # Each stack takes a Redis database of its own, emptied first.
        redis_base = os.environ["REDIS_URL"]
        db_number = 10 + (os.getpid() % 5)
        redis_url = with_database(redis_base, str(db_number))
        import redis

        redis.Redis.from_url(redis_url).flushdb()
        env.update({"DATABASE_URL": database_url, "REDIS_URL": redis_url})
    if extra_env:
        env.update(extra_env)
    return Stack(var_dir=tmp, port=free_port(), database_url=database_url, redis_url=redis_url, env=env)


def drop_database(url: str) -> None:
    name = urlsplit(url).path.lstrip("/")
    with psycopg.connect(psycopg_conninfo(with_database(url, "postgres")), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
