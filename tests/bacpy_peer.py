"""A BACnet/IP device from another stack (bac-py, not bacpypes3), run as a subprocess for the tests.

bac-py needs Python >= 3.13 while the project runs on 3.11, so the device (``tests/peers/bacpy_device.py``)
runs from its own venv, ``<repo>/.venv-peer``, built on first use by :func:`peer_python`.

    with bacpy_peer("127.0.0.61", 7061, no_rpm=True, analog_inputs=8) as peer:
        ...                      # talk BACnet/IP to 127.0.0.61:47808
        peer.stats()["requests"]

Config keywords (all optional; defaults in ``DEFAULTS`` of the device script):
analog_inputs=4, analog_values=2, writable_value=True, binary_values=1, multi_state_values=1,
max_apdu=1476, segmentation="both", object_count=0, no_rpm=False, replay_window_s=0, late_every=0,
late_s=0, garbage_every=0, null_priority_array=False, odd_present_value=False, proprietary_objects=0,
trend_log_records=0, trend_log_interval_s=60, changing=False, change_every_s=1.0, vendor_id=555,
vendor_name="bac-py peer".
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import ipaddress
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg

from bacpipes.waiting import poll_until

REPO = Path(__file__).resolve().parent.parent
VENV = REPO / ".venv-peer"
SCRIPT = Path(__file__).resolve().parent / "peers" / "bacpy_device.py"
BAC_PY = "bac-py==1.5.7"
PY_VERSION = "3.13.0"


class PeerSetupError(RuntimeError):
    """The peer's Python 3.13 venv could not be built."""


def _find_python313() -> list[str]:
    """Candidate commands that run a Python 3.13 interpreter, best first."""
    candidates: list[list[str]] = []
    pyenv_root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    exact = pyenv_root / "versions" / PY_VERSION / "bin" / "python3.13"
    if exact.exists():
        candidates.append([str(exact)])
    if shutil.which("pyenv"):
        candidates.append(["env", f"PYENV_VERSION={PY_VERSION}", "python3.13"])
    if shutil.which("python3.13"):
        candidates.append(["python3.13"])
    for found in sorted(
        glob.glob(str(pyenv_root / "versions" / "3.13.*" / "bin" / "python3.13")), reverse=True
    ):
        candidates.append([found])
    good = []
    for cmd in candidates:
        try:
            out = subprocess.run(
                [*cmd, "-c", "import sys; print(sys.version_info[:2] >= (3, 13))"],
                capture_output=True, text=True, timeout=60,
            )  # fmt: skip
        except (OSError, subprocess.TimeoutExpired):
            continue
        if out.returncode == 0 and out.stdout.strip() == "True":
            good.append(cmd)
    return good[0] if good else []


def peer_python() -> Path:
    """The venv Python that has bac-py, building ``<repo>/.venv-peer`` once (locked, stamped)."""
    python = VENV / "bin" / "python"
    stamp = VENV / ".bacpipes-peer-stamp"
    if stamp.exists() and stamp.read_text().strip() == BAC_PY and python.exists():
        return python
    lock_path = (
        Path(tempfile.gettempdir())
        / f"bacpipes-venv-peer-{hashlib.sha1(str(VENV).encode()).hexdigest()[:12]}.lock"
    )
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if stamp.exists() and stamp.read_text().strip() == BAC_PY and python.exists():
                return python
            cmd = _find_python313()
            if not cmd:
                raise PeerSetupError(
                    "the bac-py test peer needs Python 3.13: none found (tried pyenv "
                    f"PYENV_VERSION={PY_VERSION}, python3.13 on PATH, ~/.pyenv/versions/3.13.*)"
                )
            if VENV.exists():
                shutil.rmtree(VENV)
            steps = [
                [*cmd, "-m", "venv", str(VENV)],
                [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", BAC_PY],
            ]
            for step in steps:
                out = subprocess.run(step, capture_output=True, text=True, timeout=600)
                if out.returncode != 0:
                    raise PeerSetupError(f"{' '.join(step)} failed:\n{out.stdout}\n{out.stderr}")
            stamp.write_text(BAC_PY + "\n")
            return python
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _check_loopback(address: str) -> None:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError as exc:
        raise ValueError(f"not an IP address: {address!r}") from exc
    if not (isinstance(ip, ipaddress.IPv4Address) and ip.is_loopback):
        raise ValueError(f"bac-py peers run on 127.0.0.0/8 only, not {address}")


class BacpyPeer:
    """One bac-py device in a subprocess: ``start()``, ``stats()``, ``restart()``, ``stop()``."""

    def __init__(
        self,
        address: str,
        device_id: int,
        port: int = 47808,
        ready_timeout: float = 30.0,
        **config: Any,
    ) -> None:
        _check_loopback(address)
        self.address = address
        self.port = port
        self.device_id = device_id
        self.config = config
        self.ready_timeout = ready_timeout
        self._dir = Path(tempfile.mkdtemp(prefix=f"bacpy-peer-{address}-"))
        self.stats_path = self._dir / "stats.json"
        self.stderr_path = self._dir / "stderr.log"
        self.proc: subprocess.Popen[str] | None = None

    def __repr__(self) -> str:
        return f"BacpyPeer({self.address}:{self.port}, device {self.device_id})"

    @property
    def bacnet_address(self) -> str:
        """``"127.0.0.61"`` or ``"127.0.0.61:47809"``, as bacpypes3's Address takes it."""
        return self.address if self.port == 47808 else f"{self.address}:{self.port}"

    def start(self) -> BacpyPeer:
        if self.proc is not None and self.proc.poll() is None:
            return self
        python = peer_python()
        self.stats_path.unlink(missing_ok=True)
        stderr = open(self.stderr_path, "w")  # noqa: SIM115 (the child writes it for its lifetime)
        try:
            self.proc = subprocess.Popen(
                [
                    str(python), "-u", str(SCRIPT),
                    "--address", self.address, "--port", str(self.port),
                    "--device-id", str(self.device_id),
                    "--config", json.dumps(self.config), "--stats", str(self.stats_path),
                ],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr, text=True,
            )  # fmt: skip
        finally:
            stderr.close()
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        proc = self.proc
        assert proc is not None and proc.stdout is not None
        line: list[str] = []
        reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
        reader.start()
        reader.join(self.ready_timeout)
        if line and line[0].strip() == "READY":
            return
        self._kill()
        raise RuntimeError(
            f"{self} did not print READY within {self.ready_timeout:.0f} s "
            f"(exit code {proc.returncode}); stderr:\n{self.stderr()}"
        )

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text()[-8000:]
        except OSError:
            return ""

    def stats(self) -> dict[str, Any]:
        """The device's counters (see the device script); ``{}`` before the first write."""
        for _ in range(20):
            try:
                return json.loads(self.stats_path.read_text())
            except FileNotFoundError:
                return {}
            except json.JSONDecodeError:
                time.sleep(0.01)
        return {}

    def wait_stats(self, predicate: Any, timeout: float = 5.0) -> dict[str, Any]:
        """Poll ``stats()`` until ``predicate(stats)`` holds (stats are written every 0.25 s)."""
        def matched() -> dict[str, Any] | None:
            stats = self.stats()
            return stats if stats and predicate(stats) else None

        try:
            return poll_until(matched, timeout, interval=0.05, what=f"{self}: stats matching")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}; last stats: {self.stats()}") from None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._kill()
        if proc.stdout is not None:
            proc.stdout.close()
        self.proc = None

    def _kill(self) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)

    def restart(self, **config: Any) -> BacpyPeer:
        """Stop and start again (same address and device id), optionally with config changes."""
        self.stop()
        self.config = {**self.config, **config}
        return self.start()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> BacpyPeer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def bacpy_peer(address: str, device_id: int, port: int = 47808, **config: Any) -> Iterator[BacpyPeer]:
    """A started :class:`BacpyPeer`, stopped on exit."""
    peer = BacpyPeer(address, device_id, port=port, **config)
    try:
        yield peer.start()
    finally:
        peer.close()




# --- the peers' identity rule, to find a reading stored under the wrong point ------------------------


def expected_value(object_type: str, instance: int) -> float | None:
    """What a bac-py peer's object reads when nobody has written it (the peer's identity rule)."""
    if object_type == "analog-input":
        return 1000.0 + instance
    if object_type == "analog-value":
        return 10100.0 if instance == 100 else 20 + instance / 100
    if object_type == "binary-value":
        return float(instance % 2)
    if object_type == "multi-state-value":
        return float((instance - 1) % 3 + 1)
    if object_type == "513":
        return 30000.0 + instance
    return None


def misattributed(dsn: str, devices: list[int] | None = None) -> list[tuple[Any, ...]]:
    """Readings (of these peers, or all) whose value is not the identity of the point they are under."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT p.object_type, p.object_instance, r.value FROM sensor_readings r"
            " JOIN point p USING (site_id, point_id) WHERE %(all)s OR p.device_id = ANY(%(devices)s)",
            {"all": devices is None, "devices": devices or []},
        ).fetchall()
    wrong = []
    for otype, instance, value in rows:
        expected = expected_value(otype, instance)
        if otype == "analog-input":  # a changing input stays within [1000 + n, 1001 + n)
            ok = math.floor(value) == expected
        else:
            ok = expected is not None and math.isclose(value, expected, abs_tol=1e-3)
        if not ok:
            wrong.append((otype, instance, value))
    return wrong


if __name__ == "__main__":  # python tests/bacpy_peer.py: build the venv and say where
    print(peer_python(), file=sys.stdout)
