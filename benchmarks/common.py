"""Helpers for benchmarks: a simulator in its own process, and CPU time of a process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from contextlib import contextmanager


@contextmanager
def sim_process(devices: int, points: int, address_base: str, speed: float = 0.0):
    """The virtual building in a separate process, so its CPU is not counted against the agent."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bacpipes.cli",
            "sim",
            "--devices",
            str(devices),
            "--points",
            str(points),
            "--address-base",
            address_base,
            "--speed",
            str(speed),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        started = 0
        while started < devices:  # one line per device once it serves
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError("simulator exited early")
            started += "device" in line.lower()
        time.sleep(0.5)
        yield proc
    finally:
        proc.terminate()
        proc.wait(20)


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc (no extra dependency)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
