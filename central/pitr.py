"""Central's point-in-time recovery with pgBackRest: WAL archived continuously, full and incremental
backups, retention by time, and a restore to any moment into a new data directory.

Thin wrappers over the `pgbackrest` command (Debian's `pgbackrest`), not hand-written archiving: it
checks every WAL segment and backup file, backs up incrementally by file, expires by time, and picks the
backup a time target needs. Everything it needs is in one generated config file in `Stanza.directory`
(never /etc): repository, logs and locks live there too, owned by the server's user. pgBackRest reads the
data directory itself and reaches the server on its unix socket, so it runs on central's host as the
server's user (`runuser -u postgres` when we are root, as initdb and pg_ctl do).

The server archives with `archive_mode = on` and `archive_command = Stanza.archive_command()`.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from psycopg.conninfo import conninfo_to_dict

from bacpipes.db import connect
from bacpipes.errors import UserError
from bacpipes.pg_binaries import SERVER_USER, give_to_server_user
from bacpipes.settings import BackupSettings
from bacpipes.waiting import poll_until

BackupKind = Literal["full", "diff", "incr"]


class PitrError(UserError):
    """pgBackRest refused or failed: its own message, which names the cause (a setting, a folder, the
    server's archiving), so the CLI shows it as one line."""


@dataclass(frozen=True)
class Stanza:
    """One cluster and the repository its backups and WAL go to (pgBackRest calls this a stanza)."""

    name: str
    directory: Path  # the config, log and lock files
    repo: Path
    pg_data: Path | None  # None: enough to restore, not to back up or archive
    pg_port: int = 5432
    pg_socket: Path = Path("/var/run/postgresql")
    retention_days: int = 30

    @property
    def config(self) -> Path:
        return self.directory / "pgbackrest.conf"

    def config_text(self) -> str:
        """start-fast: a backup checkpoints at once instead of waiting for the next one (up to 5 min);
        zst: compresses about as well as gzip at a fraction of the time; two processes: a full backup of a
        small database took 9 s instead of 14 s on 2 busy CPUs, and leave central the rest. bundle: a
        cluster's ~1,000 small files in a few repository files (the off-site mirror moves tens of objects,
        not a thousand). archive-timeout: a backup waits for its last WAL segment behind the archive queue,
        which a burst of writes lengthens (5 GB of history written at once overran the default 60 s)."""
        lines = [
            "[global]",
            f"repo1-path={self.repo}",
            "repo1-retention-full-type=time",
            f"repo1-retention-full={self.retention_days}",
            f"log-path={self.directory / 'log'}",
            f"lock-path={self.directory / 'lock'}",
            "log-level-console=warn",
            "log-level-file=info",
            "start-fast=y",
            "compress-type=zst",
            "process-max=2",
            "repo1-bundle=y",
            "archive-timeout=600",
            "",
            f"[{self.name}]",
            f"pg1-port={self.pg_port}",
            f"pg1-socket-path={self.pg_socket}",
        ]
        if self.pg_data is not None:
            lines.append(f"pg1-path={self.pg_data}")
        return "\n".join(lines) + "\n"

    def archive_command(self) -> str:
        """The server's archive_command: every finished WAL segment into the repository."""
        return (f"pgbackrest --config={shlex.quote(str(self.config))} --stanza={shlex.quote(self.name)}"
                " archive-push %p")

    def server_settings(self) -> dict[str, str]:
        """What the server needs for archiving (wal_level replica or logical is already there)."""
        return {"archive_mode": "on", "archive_command": self.archive_command()}


def stanza_from_settings(backups: BackupSettings, dsn: str) -> Stanza:
    """The stanza of central's database: its port from the DSN, the rest from `[backups]`."""
    directory = Path(backups.pitr_dir).absolute()
    port = conninfo_to_dict(dsn).get("port") or 5432
    return Stanza(
        name=backups.pitr_stanza,
        directory=directory,
        repo=Path(backups.pitr_repo).absolute() if backups.pitr_repo else directory / "repo",
        pg_data=Path(backups.pitr_pg_data).absolute() if backups.pitr_pg_data else None,
        pg_port=int(port),
        pg_socket=Path(backups.pitr_pg_socket),
        retention_days=backups.pitr_retention_days,
    )


# --- running pgbackrest --------------------------------------------------------------------------


def _as_server_user() -> bool:
    """Root runs pgBackRest as the server's user: the repository and restored files must be that user's.
    Anyone else runs it as themselves (they must be that user, or able to read the data directory)."""
    return os.geteuid() == 0


def _private_dir(path: Path) -> None:
    """A 0700 folder of the server's user (the repository holds every row, password hashes included).
    Not what it holds: pgBackRest writes that as the server's user, and a repository holds thousands."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    give_to_server_user(path, recursive=False)


def write_config(stanza: Stanza) -> Path:
    """The stanza's folders and its pgbackrest.conf (rewritten each time: settings are the truth)."""
    for folder in (stanza.directory, stanza.repo, stanza.directory / "log", stanza.directory / "lock"):
        _private_dir(folder)
    stanza.config.write_text(stanza.config_text())
    stanza.config.chmod(0o600)
    give_to_server_user(stanza.config)
    if _as_server_user():
        probe = subprocess.run(["runuser", "-u", SERVER_USER, "--", "test", "-r", str(stanza.config)],
                               capture_output=True)
        if probe.returncode != 0:
            raise UserError(f"the {SERVER_USER} user cannot reach {stanza.directory} (a parent folder is "
                            "closed to it): choose a pitr_dir it can reach")
    return stanza.config


def run(stanza: Stanza, command: str, *options: str, timeout: float | None = None) -> str:
    """`pgbackrest <command>` for this stanza, as the server's user; its stdout, or PitrError."""
    binary = shutil.which("pgbackrest")
    if binary is None:
        raise UserError("pgbackrest is not installed (apt install pgbackrest)")
    argv = [binary, f"--config={stanza.config}", f"--stanza={stanza.name}", *options, command]
    if _as_server_user():
        argv = ["runuser", "-u", SERVER_USER, "--", *argv]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd="/",
                            stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        message = (result.stderr.strip() or result.stdout.strip()).splitlines()
        text = "\n".join(message[-5:])
        if "archive_mode" in text or "archive_command" in text:
            text += (f"\nthe server must archive: archive_mode = on, archive_command = "
                     f"'{stanza.archive_command()}'")
        raise PitrError(f"pgbackrest {command} failed ({result.returncode}): {text}")
    return result.stdout


def create_stanza(stanza: Stanza) -> None:
    """Write the config and initialise the stanza in the repository (again is harmless)."""
    if stanza.pg_data is None:
        raise UserError("[backups] pitr_pg_data (central's data directory) is needed to back up")
    write_config(stanza)
    run(stanza, "stanza-create")


def check(stanza: Stanza) -> None:
    """Archiving works end to end: pgBackRest switches WAL and waits for the segment in the repository."""
    run(stanza, "check")


@dataclass
class BackupSet:
    label: str
    kind: str
    started: datetime
    stopped: datetime
    size: int  # the database's size at the backup
    repo_size: int  # what this backup added to the repository (compressed, only changed files)

    def as_json(self) -> dict[str, Any]:
        return {"label": self.label, "kind": self.kind, "started": self.started.isoformat(),
                "stopped": self.stopped.isoformat(), "size": self.size, "repo_size": self.repo_size}


def info(stanza: Stanza) -> list[BackupSet]:
    """The stanza's backups, oldest first (empty before the first one)."""
    stanzas = json.loads(run(stanza, "info", "--output=json"))
    sets = stanzas[0].get("backup", []) if stanzas else []
    return [
        BackupSet(
            label=b["label"], kind=b["type"],
            started=datetime.fromtimestamp(b["timestamp"]["start"], UTC),
            stopped=datetime.fromtimestamp(b["timestamp"]["stop"], UTC),
            size=b["info"]["size"], repo_size=b["info"]["repository"]["delta"],
        )
        for b in sets
    ]


def backup(stanza: Stanza, kind: BackupKind = "incr") -> BackupSet:
    """One backup (an incremental with no full before it is made full), then retention expires what is
    older than retention_days and no longer needed to reach back that far."""
    create_stanza(stanza)
    run(stanza, "backup", f"--type={kind}")
    return info(stanza)[-1]


def restore(stanza: Stanza, to: datetime, into: Path) -> Path:
    """Restore the state at `to` into the new data directory `into`; the server started on it replays WAL
    up to `to` and promotes itself (a new timeline: the old one's later WAL is never replayed).

    Refused when `into` has files (a restore over a live cluster would mix two histories), when `to` has
    no timezone, is in the future, or is before the oldest backup ended."""
    if to.tzinfo is None:
        raise UserError("the restore time needs a timezone, e.g. 2026-11-29T05:20:00+00:00")
    if to > datetime.now(UTC):
        raise UserError(f"{to.isoformat()} is in the future: nothing to restore up to it yet")
    if into.exists() and any(into.iterdir()):
        raise UserError(f"{into} is not empty: restore into a new data directory")
    if stanza.pg_data is not None or not stanza.config.exists():
        write_config(stanza)  # never drops pg1-path from the config a live server's archive-push reads
    backups = info(stanza)
    if not backups:
        raise UserError(f"stanza {stanza.name} has no backup yet in {stanza.repo}")
    if to < backups[0].stopped:
        raise UserError(f"{to.isoformat()} is before the oldest backup ended "
                        f"({backups[0].stopped.isoformat()}): the earliest time that can be restored")
    _private_dir(into)
    run(stanza, "restore", f"--pg1-path={into}", "--type=time",
        f"--target={to.astimezone(UTC).isoformat(sep=' ')}", "--target-action=promote")
    return into


def wait_promoted(dsn: str, timeout: float) -> None:
    """Until the restored server has replayed up to its target and promoted itself (it accepts
    read-only connections as soon as it is consistent, long before)."""

    def promoted() -> bool:
        with connect(dsn, autocommit=True) as conn:
            return not conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]  # type: ignore[index]

    poll_until(promoted, timeout, interval=0.2, what="the restored server promoted")
