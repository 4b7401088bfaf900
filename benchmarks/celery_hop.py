"""Celery's own cost per task hop: send -> task start latency, worker CPU per task, ``send_task`` CPU.

One solo worker on this app's configuration (``-A trading``, the flags
``trading.runtime`` starts workers with, ``-l INFO`` unless ``BENCH_LOGLEVEL``
says otherwise) consumes a queue of its own under a key prefix of its own on
``REDIS_URL``. The task is trivial: it pushes the time it started and its
index to a Redis list, so everything measured is Celery's (and kombu's, and
redis-py's) and not the task's, apart from that one RPUSH.

This process sends ``BENCH_TASKS`` tasks (default 200) through
``trading.celery.app.send_task``, ``BENCH_SPACING_S`` apart (default 0.02 s, so
the worker is idle when each arrives, as on the live path), after
``BENCH_WARMUP`` (default 10) left out of every figure.

Figures (JSON): median and p99 of send -> task-start latency (same host
clock), the worker's CPU per task from /proc (user + system, including its
idle polling over the run, which ``worker_idle_cpu_ms_per_s`` measures on its
own), and this process's CPU per ``send_task`` (``time.process_time``).

Run: ``DATABASE_URL=... REDIS_URL=... .venv/bin/python benchmarks/celery_hop.py``.
Any other environment (``CELERY_*``) passes through to the worker.
``BENCH_PROFILE=path`` runs the worker under cProfile (CPU time) and writes its profile there.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "trading.settings")

import django  # noqa: E402

django.setup()

from benchmarks import _common  # noqa: E402
from trading.celery import app  # noqa: E402
from trading.redis_client import redis_client  # noqa: E402

HOP_TASK = "benchmarks.celery_hop.hop_task"
# ``celery`` under cProfile counting CPU time, not wall time (a worker mostly waits), from worker_ready on.
PROFILED_CELERY = """
import cProfile, sys, time
from celery.__main__ import main
from celery.signals import worker_ready
out, sys.argv = sys.argv[1], ["celery", *sys.argv[2:]]
profile = cProfile.Profile(time.process_time)
worker_ready.connect(lambda **_: profile.enable(), weak=False)
try:
    main()
finally:
    profile.disable()
    profile.dump_stats(out)
"""


@app.task(name=HOP_TASK)
def hop_task(key: str, index: int) -> None:
    started = time.time()
    redis_client().rpush(key, f"{index} {started!r}")


def _wait_for(key: str, count: int, timeout: float) -> list[bytes]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if redis_client().llen(key) >= count:
            break
        time.sleep(0.01)
    return redis_client().lrange(key, 0, -1)


def main() -> None:
    tasks = int(os.environ.get("BENCH_TASKS", "200"))
    warmup = int(os.environ.get("BENCH_WARMUP", "10"))
    spacing = float(os.environ.get("BENCH_SPACING_S", "0.02"))
    loglevel = os.environ.get("BENCH_LOGLEVEL", "INFO")
    run = uuid.uuid4().hex[:8]
    prefix = f"bench-hop-{run}:"
    queue = "hop"
    key = f"bench:hop:{run}"
    # This process sends under the same prefix as the worker consumes.
    app.conf.broker_transport_options = {**app.conf.broker_transport_options, "global_keyprefix": prefix}
    env = {**os.environ, "CELERY_KEY_PREFIX": prefix}
    profile = os.environ.get("BENCH_PROFILE")
    worker = subprocess.Popen(
        [sys.executable, *(["-c", PROFILED_CELERY, profile] if profile else ["-m", "celery"]), "-A", "trading", "worker", "-Q", queue, "--include", "benchmarks.celery_hop",
         "--pool", "solo", "-n", f"hop-{run}@%h", "--without-gossip", "--without-mingle", "--without-heartbeat",
         "-l", loglevel],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        app.send_task(HOP_TASK, args=[key, -1], queue=queue)
        if not _wait_for(key, 1, 60):
            raise SystemExit("the worker never ran a task")
        for i in range(warmup):
            app.send_task(HOP_TASK, args=[key, -2 - i], queue=queue)
            time.sleep(spacing)
        _wait_for(key, 1 + warmup, 10)
        idle0, wall0 = _common.cpu_ms(worker.pid), time.monotonic()
        time.sleep(2)
        idle_per_s = (_common.cpu_ms(worker.pid) - idle0) / (time.monotonic() - wall0)
        redis_client().delete(key)

        sent: list[float] = []
        send_cpu = 0.0
        cpu0 = _common.cpu_ms(worker.pid)
        for i in range(tasks):
            c0 = time.process_time()
            sent.append(time.time())
            app.send_task(HOP_TASK, args=[key, i], queue=queue)
            send_cpu += time.process_time() - c0
            time.sleep(spacing)
        rows = _wait_for(key, tasks, 30)
        cpu1 = _common.cpu_ms(worker.pid)
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        redis_client().delete(key)
        for leftover in redis_client().scan_iter(f"{prefix}*"):
            redis_client().delete(leftover)
    started = {int(i): float(t) for i, t in (row.decode().split() for row in rows)}
    if len(started) < tasks:
        raise SystemExit(f"only {len(started)} of {tasks} tasks ran")
    latencies = [(started[i] - sent[i]) * 1e3 for i in range(tasks)]
    print(json.dumps({
        "tasks": tasks,
        "spacing_s": spacing,
        "worker_loglevel": loglevel,
        "send_to_start_median_ms": round(statistics.median(latencies), 2),
        "send_to_start_p99_ms": round(_common.percentile(latencies, 0.99), 2),
        "worker_cpu_ms_per_task": round((cpu1 - cpu0) / tasks, 3),
        "worker_idle_cpu_ms_per_s": round(idle_per_s, 3),
        "send_task_cpu_ms": round(send_cpu * 1e3 / tasks, 3),
        "loadavg": os.getloadavg(),
    }))


if __name__ == "__main__":
    main()
