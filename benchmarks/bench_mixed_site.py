"""A mixed site: 3 healthy virtual controllers beside 5 misbehaving devices of another stack (bac-py).

The whole agent (discovery, polling, MQTT, ingest into PostgreSQL) runs for --minutes against:
  127.0.0.160-162  the virtual building (bacpypes3), frozen (speed 0): every reading must equal what it serves
  127.0.0.165      no ReadPropertyMultiple, replays its cached answer to an invoke id seen within 30 s
  127.0.0.166      answers every 20th request 2 s late, and is restarted (down 20 s) half way through
  127.0.0.167      every 5th answer is garbage
  127.0.0.168      null priority arrays, present values of the wrong datatype, a vendor's own object type
  127.0.0.169      1,200 objects, 206-byte APDUs, no segmentation
Reported: agent uptime (it must never exit), readings stored per healthy point against the clock-aligned
slots of the run (target 100 %), and readings stored under the wrong point (target 0), for the virtual
devices (value != what the device serves) and the peers (value != the peer's identity rule).

    python -m benchmarks.bench_mixed_site [--minutes 30] [--interval 5]
"""

from __future__ import annotations

import argparse
import math
import tempfile
import threading
import time
from pathlib import Path

import psycopg

from edge.polling import plain_value
from sim.server import ThreadedBuilding
from tests.bacpy_peer import BacpyPeer, misattributed
from tests.brokers import MosquittoBroker
from tests.conftest import fresh_database, make_settings
from tests.edge_harness import AgentThread

HEALTHY = "127.0.0.160"
PORT = 47809  # not 47808: the suite's broadcast Who-Is tests may run beside this benchmark
TARGETS = [f"{HEALTHY}-127.0.0.162:{PORT}", f"127.0.0.165-127.0.0.169:{PORT}"]
PEERS = {
    "127.0.0.165": (7165, {"no_rpm": True, "replay_window_s": 30, "analog_inputs": 20}),
    "127.0.0.166": (7166, {"late_every": 20, "late_s": 2.0}),
    "127.0.0.167": (7167, {"garbage_every": 5}),
    "127.0.0.168": (7168, {"null_priority_array": True, "odd_present_value": True, "proprietary_objects": 2}),
    "127.0.0.169": (7169, {"object_count": 1200, "segmentation": "none", "max_apdu": 206}),
}


def run(minutes: float, interval: float) -> None:
    with tempfile.TemporaryDirectory() as tmp, fresh_database() as dsn:
        broker = MosquittoBroker(Path(tmp) / "broker")
        broker.start()
        peers = [BacpyPeer(a, d, port=PORT, **cfg).start() for a, (d, cfg) in PEERS.items()]
        try:
            with ThreadedBuilding(devices=3, address_base=HEALTHY, seed=5, speed=0, port=PORT) as building:
                settings = make_settings(
                    dsn, broker.url, Path(tmp),
                    bacnet={"address": "127.0.0.100/8:47930", "apdu_timeout_ms": 1000, "apdu_retries": 1},
                    discovery={"timeout_s": 2.0, "targets": TARGETS},
                    polling={"default_interval_s": interval, "max_backoff_s": 30},
                )  # fmt: skip
                agent = AgentThread(settings, discover_first=True).start()
                started = _wait_polling(dsn, agent)
                print(f"discovery and first readings in {started - agent.agent.started_at:.0f} s; "
                      f"running {minutes:g} min")
                half = threading.Timer(minutes * 30, _restart, (peers[1],))
                half.start()
                alive = _watch(agent, minutes * 60)
                half.join()
                health = agent.agent.health()
                agent.stop()
                ended = time.time()
                served = building.snapshot()
            _report(dsn, started, ended, interval, alive, health, served)
        finally:
            for p in peers:
                p.close()
            broker.stop()


def _wait_polling(dsn: str, agent: AgentThread) -> float:
    while True:
        assert agent._thread.is_alive(), f"agent exited: {agent.error!r}"
        with psycopg.connect(dsn) as conn:
            if conn.execute("SELECT count(*) FROM sensor_readings").fetchone()[0]:
                return time.time()
        time.sleep(1)


def _restart(peer: BacpyPeer) -> None:
    peer.stop()
    time.sleep(20)
    peer.start()


def _watch(agent: AgentThread, seconds: float) -> float:
    """Seconds the agent stayed up (it is meant to stay up all of them)."""
    start = time.monotonic()
    while time.monotonic() - start < seconds and agent._thread.is_alive():
        time.sleep(1)
    return time.monotonic() - start


def _report(dsn: str, start: float, end: float, interval: float, alive: float, health: dict,
            served: dict) -> None:
    slots = math.floor(end / interval) - math.ceil(start / interval) + 1
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT p.device_id, p.object_type, p.object_instance, count(r.value),"
            " count(r.value) FILTER (WHERE r.time >= to_timestamp(%s) AND r.time <= to_timestamp(%s)),"
            " array_agg(DISTINCT r.value) FILTER (WHERE r.value IS NOT NULL)"
            " FROM point p LEFT JOIN sensor_readings r USING (site_id, point_id)"
            " WHERE p.device_id BETWEEN 1001 AND 1003 GROUP BY 1, 2, 3",
            (start, end),
        ).fetchall()
        per_device = dict(conn.execute(
            "SELECT p.device_id, count(*) FROM sensor_readings r JOIN point p USING (site_id, point_id)"
            " GROUP BY 1 ORDER BY 1"
        ).fetchall())  # fmt: skip
    in_window = [n for *_k, _all, n, _v in rows]
    wrong_sim = [
        (d, t, i, v) for d, t, i, _n, _w, values in rows for v in values or []
        if not math.isclose(v, float(plain_value(served[(d, t, i)])), rel_tol=1e-6)
    ]
    wrong_peers = misattributed(dsn, [d for d, _c in PEERS.values()])
    print(f"agent up {alive:.0f} of {end - start:.0f} s; health: readings {health['readings']}, "
          f"reads failed {health['reads_failed']}")
    print("discarded answers and contained failures per device:", health["device_errors"])
    print(f"healthy points: {len(in_window)}, clock slots in the window: {slots}")
    print(f"  readings per healthy point / slots: min {min(in_window) / slots:.1%}, "
          f"mean {sum(in_window) / len(in_window) / slots:.1%}")
    print(f"readings stored per device: {per_device}")
    print(f"misattributed readings: virtual devices {len(wrong_sim)}, bac-py peers {len(wrong_peers)}")
    if wrong_sim:
        _explain(dsn, wrong_sim, served)


def _explain(dsn: str, wrong: list[tuple], served: dict) -> None:
    """When, and how often, each unexpected value was stored, next to what the device serves now."""
    with psycopg.connect(dsn) as conn:
        for d, t, i, v in wrong[:20]:
            first, last, n = conn.execute(
                "SELECT min(r.time), max(r.time), count(*) FROM sensor_readings r"
                " JOIN point p USING (site_id, point_id)"
                " WHERE p.device_id = %s AND p.object_type = %s AND p.object_instance = %s AND r.value = %s",
                (d, t, i, v),
            ).fetchone()
            print(f"  {d} {t},{i}: {v} x{n} ({first:%H:%M:%S}-{last:%H:%M:%S}); serves {served[(d, t, i)]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--interval", type=float, default=5)
    args = parser.parse_args()
    run(args.minutes, args.interval)


if __name__ == "__main__":
    main()
