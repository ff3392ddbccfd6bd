"""PostgreSQL access and the migrations runner.

Migrations are plain numbered SQL files; each runs once, in its own transaction, under an advisory lock
so two agents starting together do not race.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from typing import NamedTuple

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from bacpipes.partitions import ensure_partitions

_MIGRATION_LOCK = 0x0BAC_0001
_MIGRATION_NAME = re.compile(r"^(\d{3,})_[\w-]+\.sql$")


def connect(dsn: str, *, autocommit: bool = False) -> psycopg.Connection:
    return psycopg.connect(dsn, autocommit=autocommit, connect_timeout=5)


def ensure_database(dsn: str) -> bool:
    """Create the database named in `dsn` if it does not exist; True when created."""
    params = conninfo_to_dict(dsn)
    name = params.get("dbname") or "postgres"
    admin = make_conninfo(dsn, dbname="postgres")
    with connect(admin, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if exists:
            return False
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return True


def migrations_dir() -> Path:
    repo_copy = Path(__file__).resolve().parent.parent / "sql"
    if repo_copy.is_dir():
        return repo_copy
    return Path(str(resources.files("bacpipes") / "_sql"))


def pending_migrations(directory: Path | None = None) -> list[Path]:
    files = sorted((directory or migrations_dir()).glob("*.sql"))
    return [f for f in files if _MIGRATION_NAME.match(f.name)]


def migrate(dsn: str, directory: Path | None = None) -> list[str]:
    """Apply every migration not yet recorded; returns the names applied now."""
    applied_now: list[str] = []
    with connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_MIGRATION_LOCK,))
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {r[0] for r in conn.execute("SELECT name FROM schema_migrations")}
            for path in pending_migrations(directory):
                if path.name in done:
                    continue
                with conn.transaction():
                    conn.execute(path.read_text())
                    conn.execute("INSERT INTO schema_migrations (name) VALUES (%s)", (path.name,))
                applied_now.append(path.name)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_MIGRATION_LOCK,))
    return applied_now


class DatabaseSetup(NamedTuple):
    created: bool
    applied: list[str]
    partitions: list[str]


def prepare_database(dsn: str) -> DatabaseSetup:
    """Create the database if missing, migrate it, and create the daily partitions ahead."""
    created = ensure_database(dsn)
    applied = migrate(dsn)
    with connect(dsn, autocommit=True) as conn:
        partitions = ensure_partitions(conn)
    return DatabaseSetup(created, applied, partitions)
