"""PostgreSQL access and the migrations runner.

Migrations are plain numbered SQL files; each runs once, in its own transaction, under an advisory lock
so two agents starting together do not race.
"""

from __future__ import annotations

import contextlib
import re
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from bacpipes.errors import UserError
from bacpipes.partitions import ensure_partitions

_MIGRATION_LOCK = 0x0BAC_0001
_MIGRATION_NAME = re.compile(r"^(\d{3,})_[\w-]+\.sql$")


_HIDDEN = "***"
_URL_PASSWORD = re.compile(r"^(?P<head>[a-z][a-z0-9+.-]*://[^:/?#@]*:)(?P<password>[^@/?#]*)@", re.I)
_KV_PASSWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.I)
_QUOTED = re.compile(r'(?<=\s)"(?!=")[^"]*"')  # libpq quoting a piece of the string (not its "=")


def redact_dsn(dsn: str) -> str:
    """`dsn` as it may be shown: its password replaced by ***, in the form it was written (URL or key=value).

    A string libpq cannot parse is not shown at all: where its password ends cannot be known.
    """
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.Error:
        return "(a connection string that cannot be parsed; not shown)"
    if "password" not in params:
        return dsn
    redacted = _URL_PASSWORD.sub(lambda m: f"{m['head']}{_HIDDEN}@", dsn, count=1)
    redacted = re.sub(r"([?&]password=)[^&#]*", rf"\g<1>{_HIDDEN}", redacted, flags=re.I)
    if "://" not in redacted:
        redacted = _KV_PASSWORD.sub(rf"\g<1>{_HIDDEN}", redacted)
    with contextlib.suppress(psycopg.Error):
        if conninfo_to_dict(redacted).get("password") == _HIDDEN:
            return redacted
    return make_conninfo("", **{**params, "password": _HIDDEN})  # a form the patterns missed


def redact_error(message: str, *dsns: str) -> str:
    """An error message as it may be shown: `dsns`' passwords removed, and libpq's quotes of a connection
    string it could not parse (`missing "=" after "…"` may quote a password) elided."""
    for dsn in dsns:
        try:
            password = conninfo_to_dict(dsn).get("password")
        except psycopg.Error:
            password = None
        if password:
            message = message.replace(str(password), _HIDDEN)
    if any(m in message for m in ("connection info string", "URI", "percent-encoded", "connection option")):
        message = _QUOTED.sub('"…"', message)
    return message


def dsn_params(dsn: str) -> dict[str, Any]:
    """The connection string's parameters. One libpq cannot parse is a setting for the user to fix, said
    without the password libpq may quote (and without the original error, which quotes it too)."""
    try:
        return conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as exc:
        raise UserError(f"invalid database connection string: {redact_error(str(exc).strip())}") from None


def connect(dsn: str, *, autocommit: bool = False) -> psycopg.Connection:
    dsn_params(dsn)
    return psycopg.connect(dsn, autocommit=autocommit, connect_timeout=5)


def ensure_database(dsn: str) -> bool:
    """Create the database named in `dsn` if it does not exist; True when created."""
    params = dsn_params(dsn)
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
            # Grants are re-applied at every run (sql/018_roles.sql): tables of later migrations are covered.
            if conn.execute("SELECT to_regproc('bacpipes_grant_roles')").fetchone()[0] is not None:
                conn.execute("SELECT bacpipes_grant_roles()")
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


# Login roles of the processes, each in the group roles of sql/018_roles.sql it needs (`bacpipes db roles`).
LOGIN_ROLES: dict[str, tuple[str, ...]] = {
    "bacpipes_edge": ("bacpipes_agent", "bacpipes_ingest"),  # `edge run`: agent, ingest, executor, inference
    "bacpipes_app": ("bacpipes_app_operator",),              # the app (operators act through it)
    "bacpipes_app_readonly": ("bacpipes_app_viewer",),       # a read-only app (kiosk)
    "bacpipes_flows_runner": ("bacpipes_flows",),            # Prefect flows (central, or a site's retention)
}


def password_variable(role: str) -> str:
    """The environment variable `bacpipes db roles` takes a role's password from."""
    return f"BACPIPES_DB_PASSWORD_{role.upper()}"


def ensure_login_roles(dsn: str, passwords: dict[str, str]) -> dict[str, str]:
    """Create (or update) the LOGIN roles of LOGIN_ROLES, members of their groups; run as an administrator
    after the migrations. A role gets the password from `passwords`; one missing from it that does not
    exist yet gets a generated one. Returns the passwords set now (role -> password)."""
    import secrets

    set_now: dict[str, str] = {}
    with connect(dsn, autocommit=True) as conn:
        for role, groups in LOGIN_ROLES.items():
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
            password = passwords.get(role) or (None if exists else secrets.token_urlsafe(24))
            if not exists:
                conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
            conn.execute(sql.SQL("ALTER ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION")
                         .format(sql.Identifier(role)))
            if password is not None:
                # scram-sha-256 hashing happens in the server (password_encryption's default since PG 14).
                conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(role),
                                                                         sql.Literal(password)))
                set_now[role] = password
            for group in groups:
                conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(group), sql.Identifier(role)))
    return set_now
