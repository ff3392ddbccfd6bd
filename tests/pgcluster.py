"""A throwaway PostgreSQL 15 cluster a test owns, so it can really stop the database and start it again.

The shared server on 5432 cannot be stopped by one test without breaking the others. initdb and pg_ctl
refuse to run as root, so when the tests are root the server binaries run as `postgres` (runuser) in a
directory that user owns. Extra `-c` settings (e.g. wal_level=logical for replication tests) go to
`settings`.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from tests.brokers import free_port

PG_BIN = Path(os.environ.get("BACPIPES_PG_BIN", "/usr/lib/postgresql/15/bin"))
SERVER_USER = "postgres"


class PgCluster:
    """One cluster in its own temp dir: `start()` (initdb the first time), `stop()`, `start()` again…

    fsync is off: these clusters die with the test, and a stop/start (even `immediate`) keeps the
    data in the OS cache, which is all an outage test needs.
    """

    def __init__(self, settings: dict[str, str] | None = None, port: int | None = None) -> None:
        self.port = port or free_port()
        self.settings = {"listen_addresses": "127.0.0.1", "fsync": "off", **(settings or {})}
        self.root = Path(tempfile.mkdtemp(prefix="bacpipes-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self._as_root = os.geteuid() == 0
        if self._as_root:
            pw = pwd.getpwnam(SERVER_USER)
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        self._initialised = False

    def _run(self, *args: str) -> None:
        """A server binary, as `postgres` when we are root (initdb/pg_ctl refuse root)."""
        command = [str(PG_BIN / args[0]), *args[1:]]
        if self._as_root:
            command = ["runuser", "-u", SERVER_USER, "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise RuntimeError(f"{args[0]} failed ({result.returncode}): {result.stderr}{self.log_tail()}")

    def init(self) -> PgCluster:
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")
        self._initialised = True
        return self

    def start(self) -> PgCluster:
        if not self._initialised:
            self.init()
        options = " ".join(
            [f"-p {self.port}", f"-k {self.root}"] + [f"-c {k}={v}" for k, v in self.settings.items()]
        )
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.log), "start", "-w")
        return self

    def stop(self, mode: str = "fast") -> None:
        """`fast` disconnects clients and shuts down cleanly; `immediate` is a crash."""
        self._run("pg_ctl", "-D", str(self.data), "stop", "-m", mode, "-w", "-t", "30")

    @property
    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def dsn(self, dbname: str = "postgres") -> str:
        return make_conninfo(host="127.0.0.1", port=self.port, user="postgres", dbname=dbname)

    def create_database(self, name: str) -> str:
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.dsn(name)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n" + "\n".join(self.log.read_text().splitlines()[-lines:])
        except OSError:
            return ""

    def cleanup(self) -> None:
        if self.running:
            with contextlib.suppress(RuntimeError):  # already gone: nothing to stop
                self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PgCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()
