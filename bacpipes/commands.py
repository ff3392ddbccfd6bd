"""Write commands and control authority, as every source creates them (CLI, UI, central, ML, MQTT).

A command is only ever inserted here; the edge executor validates it, runs it and appends its events.
Shared by the edge and central, so nothing here talks BACnet.
"""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg

from bacpipes.errors import UserError

SOURCES = ("mqtt", "ui", "central", "ml", "cli")
# accepted whatever the control authority, if inserted on the site itself: a command that arrived by
# replication (write_commands.arrived) is remote whatever its source says
LOCAL_SOURCES = frozenset({"mqtt", "ui", "cli"})
TERMINAL = ("completed", "failed", "rejected")


@dataclass(frozen=True, slots=True)
class Command:
    site_id: str
    point_id: int | None
    value: float | None  # None for a release
    priority: int | None = 8  # None only for a malformed command, stored to be rejected
    release: bool = False
    source: str = "cli"
    created_by: str = "unknown"
    reason: str | None = None
    not_after: datetime | None = None
    source_ip: str | None = None
    id: uuid.UUID | None = None  # None: a new one

    def __post_init__(self) -> None:
        # a release writes Null: a value riding along used to reach the device unchecked, and the
        # database refuses such a row anyway (write_commands_release_has_no_value)
        if self.release and self.value is not None:
            raise UserError("a release carries no value: give either a value or release, not both")

    @property
    def command_type(self) -> str:
        return "release_priority" if self.release else "write_value"


INSERT_COMMAND = (
    "INSERT INTO write_commands (id, site_id, point_id, command_type, value, priority, created_by, source,"
    " source_ip, reason, not_after) VALUES (%(id)s, %(site_id)s, %(point_id)s, %(command_type)s, %(value)s,"
    " %(priority)s, %(created_by)s, %(source)s, %(source_ip)s, %(reason)s, %(not_after)s)"
)


def command_params(command: Command) -> dict[str, Any]:
    return {**asdict(command), "id": command.id or uuid.uuid4(), "command_type": command.command_type}


def insert_command(conn: psycopg.Connection, command: Command) -> uuid.UUID:
    """Insert and commit; returns the id. The NOTIFY trigger wakes the site's executor."""
    params = command_params(command)
    conn.execute(INSERT_COMMAND, params)
    conn.commit()
    return params["id"]


def command_status(conn: psycopg.Connection, command_id: uuid.UUID) -> dict[str, Any] | None:
    cur = conn.execute("SELECT * FROM write_command_status WHERE id = %s", (command_id,))
    row = cur.fetchone()
    conn.commit()
    if row is None:
        return None
    return dict(zip([c.name for c in cur.description or []], row, strict=True))


def grant_remote(conn: psycopg.Connection, site_id: str, duration: timedelta, granted_by: str,
                 reason: str | None = None) -> datetime:
    """Let central and ML write for `duration`; the site reverts to edge control by itself after it."""
    if duration <= timedelta(0):
        raise UserError("a remote grant needs a positive duration")
    row = conn.execute(
        "INSERT INTO control_authority (site_id, mode, until, granted_by, reason)"
        " VALUES (%s, 'remote', clock_timestamp() + %s, %s, %s) RETURNING until",
        (site_id, duration, granted_by, reason),
    ).fetchone()
    conn.commit()
    return row[0]  # type: ignore[index]


def revoke_remote(conn: psycopg.Connection, site_id: str, revoked_by: str, reason: str | None = None) -> None:
    """Back to edge control at once."""
    conn.execute(
        "INSERT INTO control_authority (site_id, mode, granted_by, reason) VALUES (%s, 'edge', %s, %s)",
        (site_id, revoked_by, reason),
    )
    conn.commit()


CURRENT_AUTHORITY = """
SELECT CASE WHEN mode = 'remote' AND until > clock_timestamp() THEN 'remote' ELSE 'edge' END, until
FROM control_authority WHERE site_id = %s ORDER BY at DESC, id DESC LIMIT 1
"""


def current_authority(conn: psycopg.Connection, site_id: str) -> tuple[str, datetime | None]:
    row = conn.execute(CURRENT_AUTHORITY, (site_id,)).fetchone()
    conn.commit()
    return (row[0], row[1] if row[0] == "remote" else None) if row else ("edge", None)
