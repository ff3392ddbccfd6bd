"""The demo owns its children: however it is stopped, every process it started stops with it.

Two ways a user stops it without a clean Ctrl-C on a live terminal: the terminal closes under it (SIGHUP,
here while the flows child and its Prefect server run), and `bacpipes demo | tee log` then Ctrl-C (tee
dies, the demo gets SIGINT with its output pipe gone, so its next print fails with EPIPE; here once it is
fully up, with its apps). Afterwards no process it started is left (the PostgreSQL clusters, which run as
`postgres` through runuser and pg_ctl, Mosquitto, the apps, the flows child, Prefect's server) and its
ports are free.

The folder's name has a double quote, a single quote, a backslash, a space and a non-ASCII letter in it:
the demo's settings files, PostgreSQL and Mosquitto all take it as it is.
"""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import tomllib
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bacpipes.cli.servers import listening
from bacpipes.waiting import poll_until

pytestmark = pytest.mark.timeout(600)

MARK = "BACPIPES_DEMO_CHILDREN_TEST"  # inherited by everything the demo starts, however it starts it


class DemoRun:
    """`bacpipes demo` as a child process whose stdout we read (and may close), stderr kept in a file."""

    def __init__(self, folder: Path, *args: str) -> None:
        self.folder = folder
        self.mark = uuid.uuid4().hex
        self.stderr_path = folder.parent / f"stderr-{self.mark}.log"
        with self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bacpipes.cli", "demo", "--dir", str(folder), "--days", "10",
                 "--status-every", "1", *args],
                stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL,
                env={**os.environ, MARK: self.mark},
            )
        self.output = b""

    @property
    def text(self) -> str:
        return self.output.decode(errors="replace") + "\n--- stderr:\n" + self.stderr

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def wait_until(self, check: Callable[[], object], timeout: float, what: str) -> object:
        """Read the output as it comes until `check()` holds; fail at once if the demo exits."""
        def ready() -> object:
            assert self.proc.stdout is not None
            if select.select([self.proc.stdout], [], [], 0.2)[0]:
                self.output += os.read(self.proc.stdout.fileno(), 65536)
            assert self.proc.poll() is None, f"the demo exited ({self.proc.returncode}):\n{self.text}"
            return check()

        return poll_until(ready, timeout, interval=0, what=what)

    def processes(self) -> list[str]:
        return started_by(self.mark, self.folder)

    def ports(self) -> list[int]:
        ports = list(json.loads((self.folder / "demo.json").read_text())["ports"].values())
        apps = re.findall(r"app \(\w+\):\s+http://127\.0\.0\.1:(\d+)", self.output.decode(errors="replace"))
        return ports + [int(p) for p in apps]

    def kill_leftovers(self) -> None:
        """After a failed test: the demo and what it left, by pid, so the next test starts clean."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for line in self.processes():
            os.kill(int(line.split(":", 1)[0]), signal.SIGKILL)


def started_by(mark: str, folder: Path) -> list[str]:
    """Every process the demo started: it inherited the demo's environment (the postmasters, Mosquitto,
    the apps, the flows child, Prefect's server), names the folder on its command line, or works in it
    (a PostgreSQL backend rewrites its command line, and its environment with it, but keeps its cwd)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        proc = Path("/proc") / pid
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(proc / "cwd")
        except OSError:  # gone meanwhile, or a zombie
            continue
        ours = f"{MARK}={mark}".encode() in environ or str(folder) in cmdline
        if (ours or cwd == str(folder) or cwd.startswith(f"{folder}/")) and int(pid) != os.getpid():
            found.append(f"{pid}: {cmdline}")
    return found


@pytest.fixture(scope="module")
def folder() -> Iterator[Path]:
    # readable by `postgres` (root runs the servers as it), so not pytest's 0700 tmp_path
    parent = Path(tempfile.mkdtemp(prefix="bacpipes-demo-children-"))
    parent.chmod(0o755)
    yield parent / "the \"demo\" folder, o'brien\\é"
    shutil.rmtree(parent, ignore_errors=True)


@pytest.fixture
def runs() -> Iterator[list[DemoRun]]:
    started: list[DemoRun] = []
    yield started
    for run in started:
        run.kill_leftovers()


def test_the_terminal_closing_stops_everything(folder: Path, runs: list[DemoRun]) -> None:
    run = DemoRun(folder)
    runs.append(run)

    def flows_running() -> bool:  # the flows child, and the Prefect server it started
        found = " ".join(run.processes())
        return "bacpipes.cli.demo flows" in found and "prefect.server.api.server" in found

    run.wait_until(flows_running, 300, "the flows child and its Prefect server")
    during = run.processes()
    ports = run.ports()
    assert all(listening(p) for p in ports), ports  # both databases and the broker are up
    run.proc.send_signal(signal.SIGHUP)
    out, _ = run.proc.communicate(timeout=180)
    run.output += out
    assert run.proc.returncode == 0, run.text
    for name in ("site database", "central database", "broker"):
        assert f"stopped {name}" in run.text, run.text
    assert not run.processes(), (run.processes(), during)
    assert not [p for p in ports if listening(p)], ports
    # the settings files name the folder as it is
    site = tomllib.loads((folder / "site.toml").read_text(encoding="utf-8"))
    assert site["spool"]["path"] == str(folder / "var" / "spool.sqlite")


def test_ctrl_c_with_the_output_pipe_gone_stops_everything(folder: Path, runs: list[DemoRun]) -> None:
    run = DemoRun(folder)  # the same folder: its history is there, the flows run again
    runs.append(run)
    run.wait_until(lambda: re.search(rb"Ctrl-C stops everything", run.output), 300, "the demo up")
    during = run.processes()
    ports = run.ports()
    assert len(ports) == 5 and all(listening(p) for p in ports), (ports, run.text)  # 2 DBs, broker, 2 apps
    assert sum("streamlit" in p or " ui " in p for p in during) == 2, during
    assert run.proc.stdout is not None
    run.proc.stdout.close()  # tee is gone: every print from now on fails with EPIPE
    run.proc.send_signal(signal.SIGINT)
    assert run.proc.wait(180) == 0, run.stderr  # 120 would mean it failed flushing its output at exit
    assert "Traceback" not in run.stderr, run.stderr
    assert not run.processes(), (run.processes(), during)
    assert not [p for p in ports if listening(p)], ports
    assert not (folder / "demo.pid").exists()  # its last cleanup ran too
