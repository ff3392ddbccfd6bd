"""Backups of a site or central database: `pg_dump -Fc` into a directory, pruned after `keep_days`, and a
restore into a new, empty database with `pg_restore`.

The custom format (-Fc) is compressed, restores selectively and in parallel, and carries the partitions,
publications and `schema_migrations`, so a restored database is at the same migration as the dump. A dump
is written under a temporary name and renamed when complete: a dump that died halfway never looks like a
backup, and pruning runs only after a new dump succeeded, so the last good one is never deleted.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from psycopg.conninfo import conninfo_to_dict, make_conninfo

from bacpipes.db import connect, ensure_database
from bacpipes.pg_binaries import find_pg_bin
from bacpipes.replication import slug
from bacpipes.settings import Settings

_STAMP = "%Y%m%dT%H%M%SZ"


def pg_binary(name: str) -> str:
    """pg_dump/pg_restore: on PATH, else beside the PostgreSQL server binaries the demo and tests use (the
    newest /usr/lib/postgresql/*/bin: a newer pg_dump reads older servers, never the reverse)."""
    found = shutil.which(name)
    if found:
        return found
    located = find_pg_bin()
    if located and (located[0] / name).exists():
        return str(located[0] / name)
    raise FileNotFoundError(f"{name} not found on PATH nor beside the PostgreSQL server binaries")


def _command_env(dsn: str) -> tuple[str, dict[str, str]]:
    """The DSN without its password (which would show in `ps`), and the password in PGPASSWORD."""
    params = conninfo_to_dict(dsn)
    env = dict(os.environ)
    password = params.pop("password", None)
    if password:
        env["PGPASSWORD"] = str(password)
    return make_conninfo("", **params), env


def _run(command: list[str], env: dict[str, str]) -> None:
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{Path(command[0]).name} failed ({result.returncode}): {result.stderr.strip()}")


@dataclass
class Backup:
    path: Path
    size: int
    deleted: list[Path] = field(default_factory=list)

    def as_json(self) -> dict[str, object]:
        return {"path": str(self.path), "size": self.size, "deleted": [str(p) for p in self.deleted]}


def dump_name(site_id: str, at: datetime) -> str:
    return f"{slug(site_id)}-{at.astimezone(UTC).strftime(_STAMP)}.dump"


def _private_dir(directory: Path) -> None:
    """The backup folder, created 0700; an existing one of ours is narrowed to 0700 (dumps hold password
    hashes: nobody else may list or read them)."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    if directory.stat().st_uid == os.geteuid() and directory.stat().st_mode & 0o077:
        directory.chmod(0o700)


def dump(dsn: str, path: Path) -> Path:
    """`pg_dump -Fc` of `dsn` into `path`, atomically, readable by its owner only (0600)."""
    _private_dir(path.parent)
    partial = path.with_name(path.name + ".partial")
    conninfo, env = _command_env(dsn)
    try:
        partial.unlink(missing_ok=True)  # made 0600 before pg_dump writes (it keeps an existing file's mode)
        os.close(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        _run([pg_binary("pg_dump"), "-Fc", "--file", str(partial), "--dbname", conninfo], env)
        partial.chmod(0o600)
        partial.rename(path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def prune(directory: Path, site_id: str, keep_days: int, now: datetime | None = None) -> list[Path]:
    """Delete this site's dumps older than keep_days (by mtime); other files are never touched."""
    cutoff = (now or datetime.now(UTC)) - timedelta(days=keep_days)
    pattern = re.compile(rf"^{re.escape(slug(site_id))}-\d{{8}}T\d{{6}}Z\.dump$")
    deleted = []
    for path in sorted(directory.iterdir()):
        if pattern.match(path.name) and datetime.fromtimestamp(path.stat().st_mtime, UTC) < cutoff:
            path.unlink()
            deleted.append(path)
    return deleted


def backup(settings: Settings, now: datetime | None = None) -> Backup:
    """Dump the configured database, then prune the old dumps of the same site."""
    directory = Path(settings.backups.dir)
    path = dump(settings.database.dsn, directory / dump_name(settings.site.id, now or datetime.now(UTC)))
    deleted = prune(directory, settings.site.id, settings.backups.keep_days, now)
    return Backup(path, path.stat().st_size, deleted)


def restore(dump_path: str | Path, dsn: str, *, no_owner: bool = False) -> None:
    """Restore a dump into the database `dsn`, created if missing and refused unless empty (a restore over
    live tables would mix two histories). One transaction: it restores completely or not at all.
    no_owner: for a server without the dump's roles (e.g. a laptop copy of a site)."""
    ensure_database(dsn)
    with connect(dsn, autocommit=True) as conn:
        tables = conn.execute(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE c.relkind IN ('r', 'p', 'v', 'm')"
            " AND n.nspname NOT IN ('pg_catalog', 'information_schema')"
            " AND n.nspname NOT LIKE 'pg_toast%%'"
        ).fetchone()[0]  # type: ignore[index]
        if tables:
            name = conn.execute("SELECT current_database()").fetchone()[0]  # type: ignore[index]
            raise ValueError(f"database {name} is not empty ({tables} tables): restore into a new database")
    conninfo, env = _command_env(dsn)
    options = ["--no-owner", "--no-privileges"] if no_owner else []
    _run([pg_binary("pg_restore"), "--exit-on-error", "--single-transaction", *options, "--dbname", conninfo,
          str(dump_path)], env)
