"""The process runtime: services, bootstrap, and the supervised process set.

``python -m trading.runtime run`` is what ``make run`` calls:

1. start embedded PostgreSQL and Redis under ``var/`` unless ``DATABASE_URL``
   / ``REDIS_URL`` point at real ones;
2. migrate, set up roles, seed the demo (idempotent: a second run reuses it);
3. write ``var/supervisord.conf`` and run supervisord in the foreground with
   web, feed, one Celery worker per queue, and beat; supervisord restarts any
   process that dies, and one dying never stops the others;
4. on Ctrl-C (or ``make stop``), stop every process, then the embedded services.

Broker credentials (``FP_BROKER_*`` variables) are removed from the
environment every other process inherits and given to the execute worker alone.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from trading.embedded import BASE_DIR, VAR_DIR, ensure_services, stop_services

PYTHON = sys.executable
BROKER_ENV_PREFIX = "FP_BROKER_"


def _celery_worker(queue: str) -> str:
    return (f"{PYTHON} -m celery -A trading worker -Q {queue} -n {queue}@%%h --pool solo "
            "--without-gossip --without-mingle --without-heartbeat -l INFO")


def process_commands(web_host: str, web_port: int) -> dict[str, str]:
    """The supervised process set: name -> command line."""
    return {
        "web": f"{PYTHON} -m uvicorn trading.asgi:application --host {web_host} --port {web_port} --no-access-log",
        "feed": f"{PYTHON} {BASE_DIR / 'manage.py'} run_feed",
        "worker-ingest": _celery_worker("ingest"),
        "worker-detect": _celery_worker("detect"),
        "worker-execute": _celery_worker("execute"),
        "beat": f"{PYTHON} -m celery -A trading beat -l INFO -s {VAR_DIR / 'celerybeat-schedule'}",
    }


def split_broker_env(environ: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """Split the environment into (everyone's, execute worker's credentials)."""
    shared = {k: v for k, v in environ.items() if not k.startswith(BROKER_ENV_PREFIX)}
    secret = {k: v for k, v in environ.items() if k.startswith(BROKER_ENV_PREFIX)}
    return shared, secret


def _env_line(values: dict[str, str]) -> str:
    # supervisord's environment= syntax: KEY="value",KEY2="value2"; % doubled.
    parts = []
    for key, value in values.items():
        escaped = value.replace("%", "%%").replace('"', '\\"')
        parts.append(f'{key}="{escaped}"')
    return ",".join(parts)


def write_supervisor_config(var_dir: Path, *, web_host: str, web_port: int, broker_env: dict[str, str],
                            only: list[str] | None = None) -> Path:
    log_dir = var_dir / "log"
    log_dir.mkdir(parents=True, exist_ok=True)
    lines = [
        "[supervisord]",
        f"logfile={log_dir / 'supervisord.log'}",
        f"pidfile={var_dir / 'supervisord.pid'}",
        "nodaemon=true",
        "loglevel=info",
        "",
        "[unix_http_server]",
        f"file={var_dir / 'supervisor.sock'}",
        "chmod=0700",
        "",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
        "",
        "[supervisorctl]",
        f"serverurl=unix://{var_dir / 'supervisor.sock'}",
        "",
    ]
    for name, command in process_commands(web_host, web_port).items():
        if only is not None and name not in only:
            continue
        env = {"FP_PROCESS_NAME": name}
        if name == "worker-execute":
            env.update(broker_env)
        lines += [
            f"[program:{name}]",
            f"command={command}",
            f"directory={BASE_DIR}",
            "autostart=true",
            "autorestart=true",
            "startsecs=2",
            "startretries=1000",
            "stopasgroup=true",
            "killasgroup=true",
            "stopwaitsecs=15",
            f"stdout_logfile={log_dir / f'{name}.log'}",
            "stdout_logfile_maxbytes=20MB",
            "redirect_stderr=true",
            f"environment={_env_line(env)}",
            "",
        ]
    path = var_dir / "supervisord.conf"
    path.write_text("\n".join(lines))
    # The execute worker's credentials are in this file: owner-only.
    path.chmod(0o600)
    return path


def _manage(*args: str) -> None:
    subprocess.run([PYTHON, str(BASE_DIR / "manage.py"), *args], check=True, cwd=BASE_DIR)  # noqa: S603


def bootstrap(var_dir: Path = VAR_DIR, *, seed: bool = True) -> None:
    """Services up, schema migrated, roles and demo data in place."""
    urls = ensure_services(var_dir)
    print(f"database: {urls.database_url}\nredis:    {urls.redis_url}", flush=True)
    _manage("migrate", "--noinput")
    _manage("collectstatic", "--noinput", "-v", "0")
    if seed:
        _manage("seed_demo")


def run(var_dir: Path = VAR_DIR, *, web_host: str, web_port: int, seed: bool = True) -> int:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "trading.settings")
    bootstrap(var_dir, seed=seed)
    shared, broker_env = split_broker_env(dict(os.environ))
    config = write_supervisor_config(var_dir, web_host=web_host, web_port=web_port, broker_env=broker_env)
    print(f"\nFirst Principle is starting: http://{web_host}:{web_port}/  (admin: /admin/, health: /health)\n"
          f"Logs: {var_dir / 'log'}   Stop: Ctrl-C or 'make stop'\n", flush=True)
    supervisord = subprocess.Popen(  # noqa: S603
        [PYTHON, "-m", "supervisor.supervisord", "-c", str(config)], env=shared, cwd=BASE_DIR,
    )

    def forward(signum: int, _frame: object) -> None:
        supervisord.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    code = supervisord.wait()
    if os.environ.get("FP_KEEP_SERVICES") != "1":
        stopped = stop_services(var_dir)
        if stopped:
            print(f"stopped embedded: {', '.join(stopped)}", flush=True)
    return code


def stop(var_dir: Path = VAR_DIR) -> int:
    config = var_dir / "supervisord.conf"
    pid_file = var_dir / "supervisord.pid"
    if pid_file.exists():
        try:
            pid = int(pid_file.read_text().strip())
            os.kill(pid, signal.SIGTERM)
            for _ in range(300):
                os.kill(pid, 0)
                time.sleep(0.1)
        except (ProcessLookupError, ValueError):
            pass
    elif config.exists():
        subprocess.run([PYTHON, "-m", "supervisor.supervisorctl", "-c", str(config), "shutdown"], check=False)  # noqa: S603
    stopped = stop_services(var_dir)
    print("stopped: supervisor" + (f", {', '.join(stopped)}" if stopped else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trading.runtime")
    sub = parser.add_subparsers(dest="command", required=True)
    run_p = sub.add_parser("run", help="bootstrap and run every process under supervision")
    run_p.add_argument("--host", default=os.environ.get("WEB_HOST", "127.0.0.1"))
    run_p.add_argument("--port", type=int, default=int(os.environ.get("WEB_PORT", "8000")))
    run_p.add_argument("--no-seed", action="store_true")
    sub.add_parser("bootstrap", help="start services, migrate and seed, then exit")
    sub.add_parser("stop", help="stop the supervised processes and the embedded services")
    sub.add_parser("services", help="start the services if needed and print their URLs as shell exports")
    args = parser.parse_args(argv)
    if args.command == "run":
        return run(web_host=args.host, web_port=args.port, seed=not args.no_seed)
    if args.command == "bootstrap":
        bootstrap()
        return 0
    if args.command == "services":
        urls = ensure_services()
        print(f"export DATABASE_URL={shlex.quote(urls.database_url)}\nexport REDIS_URL={shlex.quote(urls.redis_url)}")
        return 0
    return stop()


if __name__ == "__main__":
    raise SystemExit(main())
