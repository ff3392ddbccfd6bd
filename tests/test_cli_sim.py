"""`bacpipes sim` as a user runs it: a separate process serving real BACnet/IP until SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys

from bacpipes.settings import BacnetSettings
from edge.bacnet import BacnetClient


def test_sim_command_serves_devices_until_sigterm():
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bacpipes.cli",
            "sim",
            "--devices",
            "2",
            "--points",
            "30",
            "--address-base",
            "127.0.0.110",
            "--speed",
            "0",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        lines = [proc.stdout.readline() for _ in range(2)]
        assert [line.split()[:4] for line in lines] == [
            ["device", "1001", "at", "127.0.0.110:47808"],
            ["device", "1002", "at", "127.0.0.111:47808"],
        ]
        peers = asyncio.run(_who_is(["127.0.0.110", "127.0.0.111"]))
        assert [(p.device_id, p.address) for p in peers] == [(1001, "127.0.0.110"), (1002, "127.0.0.111")]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0


async def _who_is(addresses: list[str]):
    # a port of its own on 127.0.0.100: other files' clients run at the same time (xdist)
    client = BacnetClient.open(BacnetSettings(address="127.0.0.100/8:47945", apdu_timeout_ms=1000,
                                              apdu_retries=0))
    try:
        return [p for a in addresses for p in await client.who_is(a, 1001, 1002, 1.0)]
    finally:
        client.close()


def test_sim_refuses_addresses_off_loopback():
    result = subprocess.run(
        [sys.executable, "-m", "bacpipes.cli", "sim", "--address-base", "192.168.1.10"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2 and "127.0.0.0/8" in result.stderr
