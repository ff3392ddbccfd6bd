"""A site rebuilt from central after its database was lost: `bacpipes site rebuild --from-central`.

Central holds what a site needs to start again: its devices and points with the operator's edits and
limits (the meta publication carries every column), its app users (sql/026_site_users.sql), the commands
and their trail both ways, its deployments and A/B schedule, and its history. On a new, empty site
database they are copied back (the readings the site keeps, `[database] retention_days`, and every hourly
rollup, which sites keep), then the site is linked again as a resync links it: central's newest reading
from the site bounds the readings publication, so nothing central holds is copied back to it, and the
small tables it receives afresh are absorbed by its replica triggers. Point ids are kept, so the agent
stores its next readings under the points central knows; a command that ran before the loss has its
events here and never runs again; a command made at the site is the site's again (`arrived = 'local'`).

Not restored, by design: the control authority (a remote grant is the site's consent: the rebuilt site
starts local-only until its operator grants again), login throttling, alarm acknowledgements and saved
trend sets (the site's own tables), and the agent's MQTT spool, which was on the lost disk.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import psycopg
from psycopg import sql

from bacpipes.db import connect, prepare_database
from bacpipes.errors import UserError
from bacpipes.partitions import create_partition
from bacpipes.replication import SITE_USERS, in_sync, relink_rebuilt, site_subscription, table
from bacpipes.settings import Settings
from bacpipes.waiting import poll_until

# what central holds of a site, in foreign-key order (one transaction: the executor never sees a command
# without the events it had)
SITE_TABLES = ("device", "point", "write_commands", "command_events", "model_deployments", "ab_schedule",
               "data_source", "model_guard_trips", "readings_hourly")
SINCE = {"inference_log": "at", "sensor_readings": "time"}  # history the site keeps for retention_days only
# a command travels away from where it was made: central's own are 'replication' here, the site's 'local'
ARRIVED_HERE = "CASE arrived WHEN 'local' THEN 'replication' ELSE 'local' END"

STATE_FROM_READINGS = """
INSERT INTO point_state AS s (site_id, point_id, value, quality, time)
SELECT p.site_id, p.point_id, r.value, r.quality, r.time FROM point p
CROSS JOIN LATERAL (SELECT value, quality, time FROM sensor_readings
                    WHERE site_id = p.site_id AND point_id = p.point_id ORDER BY time DESC LIMIT 1) r
WHERE p.site_id = %s
ON CONFLICT (site_id, point_id) DO UPDATE SET value = EXCLUDED.value, quality = EXCLUDED.quality,
    time = EXCLUDED.time
WHERE s.time IS NULL OR s.time < EXCLUDED.time
"""


@dataclass
class Rebuilt:
    rows: dict[str, int] = field(default_factory=dict)
    steps: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def lines(self) -> list[str]:
        copied = ", ".join(f"{t} {n}" for t, n in self.rows.items() if n)
        return [f"copied from central: {copied}", *self.steps,
                f"site rebuilt in {self.seconds:.1f} s; start the agent (`bacpipes edge run`)"]


def rebuild(site: Settings, central: Settings, sync_timeout_s: float = 600.0,
            now: datetime | None = None) -> Rebuilt:
    """Fill the new, empty database of `site` from central, link it again, and wait until central has
    taken the site's tables back in (its current values are then re-derived from what it holds)."""
    started = time.monotonic()
    site_id = site.site.id
    prepare_database(site.database.dsn)
    cutoff = (now or datetime.now(UTC)) - timedelta(days=site.database.retention_days)
    done = Rebuilt()
    with connect(central.database.dsn, autocommit=True) as c, connect(site.database.dsn) as s:
        _require_known(c, site_id)
        _require_empty(s)
        with s.transaction():
            done.rows = _copy_back(c, s, site_id, cutoff)
    done.steps = relink_rebuilt(site, central)
    with connect(central.database.dsn, autocommit=True) as c:
        poll_until(lambda: in_sync(c, site_subscription(site_id)), sync_timeout_s, interval=0.2,
                   what=f"central's copy of site {site_id}'s tables")
        c.execute(STATE_FROM_READINGS, (site_id,))  # central's point rows were replaced, and their state
    done.seconds = time.monotonic() - started
    return done


def _require_known(c: psycopg.Connection, site_id: str) -> None:
    if c.execute("SELECT 1 FROM point WHERE site_id = %s LIMIT 1", (site_id,)).fetchone() is None:
        known = [r[0] for r in c.execute("SELECT DISTINCT site_id FROM point ORDER BY 1")]
        raise UserError(f"central holds no points of site {site_id!r}: check [site] id in the site's "
                        f"settings (central knows {', '.join(known) or 'no site'})")


def _require_empty(s: psycopg.Connection) -> None:
    held = [t for t in ("point", "sensor_readings", "app_users")
            if s.execute(sql.SQL("SELECT 1 FROM {} LIMIT 1").format(sql.Identifier(t))).fetchone()]
    s.commit()
    if held:
        raise UserError(f"the site database already holds {', '.join(held)}: a rebuild fills a new, empty "
                        "database (point [database] dsn at one), it never merges into a live one")


def _copy_back(c: psycopg.Connection, s: psycopg.Connection, site_id: str,
               cutoff: datetime) -> dict[str, int]:
    mine = sql.SQL("site_id = {}").format(sql.Literal(site_id))
    rows = {t: _copy(c, s, t, t, mine, {"arrived": ARRIVED_HERE} if t == "write_commands" else {})
            for t in SITE_TABLES}
    rows["app_users"] = _copy(c, s, SITE_USERS, "app_users", mine)
    s.execute("SELECT setval(pg_get_serial_sequence('point', 'point_id'), max(point_id)) FROM point")
    day = cutoff.astimezone(UTC).date()
    while day <= datetime.now(UTC).date():
        create_partition(s, day)
        day += timedelta(days=1)
    for t, column in SINCE.items():
        recent = mine + sql.SQL(" AND {} > {}").format(sql.Identifier(column), sql.Literal(cutoff))
        rows[t] = _copy(c, s, t, t, recent)
    rows["point_state"] = s.execute(STATE_FROM_READINGS, (site_id,)).rowcount
    return rows


def _copy(c: psycopg.Connection, s: psycopg.Connection, source: str, target: str, where: sql.Composable,
          expressions: dict[str, str] | None = None) -> int:
    """Rows of `source` on central matching `where` into `target` here, by binary COPY (the columns
    `target` has, each from `source`'s column of that name or from `expressions`)."""
    columns = [r[0] for r in s.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped"
        " AND attgenerated = '' ORDER BY attnum", (target,))]
    expressions = expressions or {}
    select = sql.SQL(", ").join(sql.SQL(expressions[col]) if col in expressions else sql.Identifier(col)
                                for col in columns)
    out = sql.SQL("COPY (SELECT {} FROM {} WHERE {}) TO STDOUT (FORMAT BINARY)").format(
        select, table(source), where)
    into = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
        table(target), sql.SQL(", ").join(map(sql.Identifier, columns)))
    with c.cursor().copy(out) as reading, s.cursor() as cur:
        with cur.copy(into) as writing:
            for chunk in reading:
                writing.write(chunk)
        return cur.rowcount
