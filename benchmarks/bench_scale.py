"""Scale: 10,000 points at 30 s intervals for 5 minutes — the agent's CPU and p99 read lateness.

The simulator and the agent run as separate processes; CPU is the agent's own utime+stime from /proc.
Lateness is measured by the agent (read start minus scheduled slot) and reported in its health message.
Targets: CPU < 25 % of one core, p99 lateness < 1 s.
    python -m benchmarks.bench_scale [--devices 10] [--points 1000] [--minutes 5] [--interval 30]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import psycopg

from bacpipes.contracts import health_topic
from bacpipes.db import migrate
from benchmarks.common import cpu_seconds, sim_process

BASE = "127.0.0.50"
ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--devices", type=int, default=10)
    parser.add_argument("--points", type=int, default=1000)
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--interval", type=float, default=30.0)
    args = parser.parse_args()

    db = f"bacpipes_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db}"')
    dsn = f"postgresql://postgres@127.0.0.1:5432/{db}"
    migrate(dsn)
    site = f"bench-{uuid.uuid4().hex[:6]}"
    work = Path(tempfile.mkdtemp(prefix="bacpipes-bench-"))
    config = work / "site.toml"
    config.write_text(
        f'[site]\nid = "{site}"\n[database]\ndsn = "{dsn}"\n'
        f'[mqtt]\nclient_id = "{site}"\nhealth_interval_s = 30\n'
        f'[discovery]\ntargets = ["{BASE}-127.0.0.{49 + args.devices}"]\ntimeout_s = 1.0\n'
        f"[polling]\ndefault_interval_s = {args.interval}\n"
        f'[spool]\npath = "{work / "spool.sqlite"}"\n'
    )
    health: list[dict] = []
    watcher = _watch(health_topic(site), health)
    try:
        with sim_process(args.devices, args.points, BASE, speed=1.0) as sim:
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            subprocess.run(
                [sys.executable, "-m", "bacpipes.cli", "edge", "discover", "--config", str(config)],
                check=True,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            agent = subprocess.Popen(
                [sys.executable, "-m", "bacpipes.cli", "edge", "run", "--config", str(config)],
                env=env,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(args.interval + 5)  # start-up and the first full cycle are not steady state
            cpu0, sim0, t0, n0 = cpu_seconds(agent.pid), cpu_seconds(sim.pid), time.time(), len(health)
            time.sleep(args.minutes * 60)
            cpu1, sim1, t1 = cpu_seconds(agent.pid), cpu_seconds(sim.pid), time.time()
            agent.send_signal(signal.SIGTERM)
            agent.wait(60)
        wall = t1 - t0
        last = health[-1] if health else {}
        steady = health[n0:] or health
        p99 = max((h.get("lateness_p99_s") or 0) for h in steady) if steady else None
        agent_cpu = 100 * (cpu1 - cpu0) / wall
        print(f"{args.devices * args.points} points every {args.interval:g} s for {wall / 60:.1f} min")
        print(
            f"agent CPU: {agent_cpu:.1f} % of one core (target < 25 %, ratio {agent_cpu / 25:.2f} of target);"
            f" simulator CPU: {100 * (sim1 - sim0) / wall:.1f} %"
        )
        print(
            f"p99 read lateness: {p99} s (target < 1 s); readings published: {last.get('readings')},"
            f" reads failed: {last.get('reads_failed')}, requests: {last.get('requests')}"
        )
    finally:
        watcher.loop_stop()
        with psycopg.connect(ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


def _watch(topic: str, sink: list[dict]) -> mqtt.Client:
    lock = threading.Lock()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)

    def on_message(_c, _u, message):
        with lock:
            sink.append(json.loads(message.payload))

    client.on_connect = lambda c, *_: c.subscribe(topic, 1)
    client.on_message = on_message
    client.connect("127.0.0.1", 1883)
    client.loop_start()
    return client


if __name__ == "__main__":
    main()
