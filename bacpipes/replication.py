"""Linking a site database and the central database with PostgreSQL logical replication.

Site -> central: `sensor_readings` (inserts only, through the partition root, so site retention's
DROP PARTITION never reaches central) and the small tables (device, point, command_events,
site_heartbeat, the commands made at the site, ...), two publications that central takes in with one
subscription per site. Central -> site: `write_commands` made on central for that site (a row filter),
with the site's deployments and A/B schedule. A command travels only away from the database it was made
in (`arrived = 'local'` in both directions' row filters; a replicated row arrives as 'replication',
sql/021), so no row loops although write_commands is published both ways. A site publishes only rows
with its own site_id (row filters), and central drops any other row arriving on that site's subscription
(`sql/015_site_guard.sql`): a compromised or misconfigured site cannot write another site's readings,
heartbeat or commands into central. Central keeps each site's current values (point_state) from the
readings it applies (sql/021), so nothing more is sent for them.

Central -> site leaves from central's outbox when it has one (`[central] outbox_dsn`): a small cluster on
central's host that subscribes once to central's outbound rows and publishes them per site. A WAL sender
decodes all of its database's WAL, and central's WAL is mostly the sites' readings: with a sender per site
on central, central's CPU grows with the square of the number of sites (issue 19). The outbox's WAL holds
only what is sent to sites, and central keeps one sender (the outbox's) whatever the number of sites.
Every connection is TLS 1.3 with a client certificate, checked by name (`sslmode=verify-full`); the
roles may replicate and read only what they replicate.

Everything here is idempotent: `link` checks before it creates, `unlink` drops only what exists.
Shared by the `bacpipes site …` and `bacpipes central …` commands; it talks SQL, not BACnet.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.types.json import Jsonb

from bacpipes.capacity import bound_slots, refuse_if_full
from bacpipes.certs import client_conninfo
from bacpipes.db import connect
from bacpipes.errors import UserError
from bacpipes.settings import Settings

READINGS_PUBLICATION = "bacpipes_readings"
SITE_USERS = "bacpipes_private.site_users"  # the site's app users, for a rebuild (sql/026_site_users.sql)
META_PUBLICATION = "bacpipes_meta"
META_TABLES = ("device", "point", "command_events", "site_heartbeat", "inference_log", "data_source",
               "readings_hourly", "model_guard_trips", "write_commands", SITE_USERS)
CENTRAL_TABLES = ("write_commands", "model_deployments", "ab_schedule")  # central -> site, per site
# published both ways: only the rows made where they are published from (sql/021_central_view.sql)
MADE_HERE = {"write_commands": "arrived = 'local'"}
CENTRAL_ROLE = "bacpipes_central"  # how central logs in to every site
COMMANDS_SUBSCRIPTION = "bacpipes_commands"  # the site's subscription to central (or its outbox)
OUTBOX_ROLE = "bacpipes_outbox"  # how central's outbox logs in to central
OUTBOUND = "bacpipes_outbound"  # central's publication of every site's rows, and the outbox's subscription


def slug(site_id: str) -> str:
    """A site id as it may appear in role, slot and publication names."""
    return re.sub(r"[^a-z0-9_]", "_", site_id.lower())[:40]


def site_role(site_id: str) -> str:
    return f"bacpipes_site_{slug(site_id)}"


def commands_publication(site_id: str) -> str:
    return f"bacpipes_commands_{slug(site_id)}"


def site_subscription(site_id: str) -> str:
    """Central's one subscription to a site (its readings and meta publications), and its slot there."""
    return f"bacpipes_{slug(site_id)}"


def old_subscriptions(site_id: str) -> tuple[str, str]:
    """Central's two subscriptions to a site as links made before one subscription per site had them."""
    return f"bacpipes_{slug(site_id)}_readings", f"bacpipes_{slug(site_id)}_meta"


def conninfo_to(target: Settings, subscriber: Settings, user: str) -> str:
    """How `subscriber`'s server reaches `target`'s database: target's public endpoint, with the
    subscriber host's client certificate for `user` (paths on the subscriber's machine)."""
    params = conninfo_to_dict(target.database.dsn)
    return client_conninfo(
        Path(subscriber.replication.certs_dir),
        user,
        host=target.replication.host or str(params.get("host", "127.0.0.1")),
        port=target.replication.port or int(params.get("port", 5432)),
        dbname=str(params.get("dbname", "postgres")),
    )


@dataclass
class Steps:
    """What a command did, for the operator to read."""

    done: list[str] = field(default_factory=list)

    def __call__(self, text: str) -> None:
        self.done.append(text)


# --- site side ------------------------------------------------------------------------------------

HEARTBEAT = """
INSERT INTO site_heartbeat AS h (site_id, at, wal_lsn, latest_reading, slots, agent)
SELECT %(site)s, clock_timestamp(), pg_current_wal_lsn(),
       (SELECT max(time) FROM point_state WHERE site_id = %(site)s),
       coalesce((SELECT jsonb_agg(jsonb_build_object(
                    'slot', slot_name, 'active', active, 'wal_status', wal_status,
                    'safe_wal_size', safe_wal_size, 'confirmed_flush_lsn', confirmed_flush_lsn))
                 FROM pg_replication_slots WHERE slot_name LIKE 'bacpipes%%'), '[]'),
       %(agent)s
ON CONFLICT (site_id) DO UPDATE SET at = EXCLUDED.at, wal_lsn = EXCLUDED.wal_lsn,
    latest_reading = EXCLUDED.latest_reading, slots = EXCLUDED.slots,
    agent = coalesce(EXCLUDED.agent, h.agent)
"""


USERS_TO_COPY = f"""
INSERT INTO {SITE_USERS} AS u (site_id, username, password_hash, role, created_at, disabled_at)
SELECT %s, username, password_hash, role, created_at, disabled_at FROM app_users
ON CONFLICT (site_id, username) DO UPDATE SET password_hash = EXCLUDED.password_hash, role = EXCLUDED.role,
    created_at = EXCLUDED.created_at, disabled_at = EXCLUDED.disabled_at
"""


def heartbeat(conn: psycopg.Connection, site_id: str, agent: dict[str, Any] | None = None) -> None:
    """Tell central (through the replication stream itself) where the site is; the agent calls this
    with its health counters, which the app and the alert rules read on the site and on central."""
    conn.execute(HEARTBEAT, {"site": site_id, "agent": Jsonb(agent) if agent is not None else None})
    conn.commit()


def linked_sites(conn: psycopg.Connection) -> list[str]:
    """The sites in central's registry; a site database has none."""
    return [r[0] for r in conn.execute("SELECT site_id FROM site ORDER BY site_id").fetchall()]


def is_central(conn: psycopg.Connection) -> bool:
    return bool(linked_sites(conn))


def heartbeat_every(agent: dict[str, Any] | None) -> float:
    """The interval the agent said it writes its heartbeat at (10 s when it did not say)."""
    return float((agent or {}).get("heartbeat_s") or 10.0)


def agent_silent(age_s: float | None, agent: dict[str, Any] | None) -> bool:
    """No heartbeat, or none for three of the agent's own intervals: the app's "offline" and the
    agent_offline alert rule judge the same way."""
    return age_s is None or not age_s <= 3 * heartbeat_every(agent)  # NaN (a table's missing value) too


def site_slots(conn: psycopg.Connection) -> list[dict[str, Any]]:
    """The site's replication slots as the site sees them: wal_status 'lost' means central must resync."""
    cur = conn.execute(
        "SELECT slot_name, active, wal_status, safe_wal_size,"
        " pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint AS lag_bytes"
        " FROM pg_replication_slots WHERE slot_name LIKE 'bacpipes%' ORDER BY slot_name"
    )
    names = [c.name for c in cur.description or []]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def _require_logical(conn: psycopg.Connection, which: str) -> None:
    level = conn.execute("SHOW wal_level").fetchone()[0]  # type: ignore[index]
    if level != "logical":
        raise UserError(f"{which} database has wal_level={level}: set wal_level = logical and restart it")


def table(name: str) -> sql.Identifier:
    """`t` or `schema.t` as an identifier."""
    return sql.Identifier(*name.split("."))


def _ensure_role(conn: psycopg.Connection, role: str, tables: tuple[str, ...], say: Steps) -> None:
    if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN REPLICATION").format(sql.Identifier(role)))
        say(f"created role {role} (login, replication; certificate authentication only)")
    for schema in sorted({t.split(".")[0] if "." in t else "public" for t in tables}):
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(schema),
                                                                      sql.Identifier(role)))
    conn.execute(
        sql.SQL("GRANT SELECT ON {} TO {}").format(
            sql.SQL(", ").join(table(t) for t in tables), sql.Identifier(role)
        )
    )


def exists(conn: psycopg.Connection, catalog: str, column: str, name: str) -> bool:
    """Whether the catalog `catalog` has a row named `name` (a publication, subscription, slot, role)."""
    query = sql.SQL("SELECT 1 FROM {} WHERE {} = %s").format(sql.Identifier(catalog), sql.Identifier(column))
    return conn.execute(query, (name,)).fetchone() is not None


def drop_site_slots(conn: psycopg.Connection, site_id: str) -> list[str]:
    """Central's slots on the site, dropped: a subscription dropped while its publisher was unreachable
    (or lost with central) leaves its slot behind, pinning the site's WAL."""
    done = []
    for name in (site_subscription(site_id), *old_subscriptions(site_id)):
        if exists(conn, "pg_replication_slots", "slot_name", name):
            conn.execute("SELECT pg_drop_replication_slot(%s)", (name,))
            done.append(f"dropped the site's slot {name}")
    return done


def own_rows(site_id: str, tables: tuple[str, ...], made_here: bool = True) -> sql.Composable:
    """`t1 WHERE (site_id = 'x'), t2 WHERE …`: a site publishes its own rows only, and a table published
    both ways only the rows made on this end (`MADE_HERE`), so none comes back to where it was made.
    Central's outbox publishes with `made_here=False`: every row there came from central."""
    return sql.SQL(", ").join(
        sql.SQL("{} WHERE (site_id = {}{})").format(
            table(t), sql.Literal(site_id),
            sql.SQL(f" AND {MADE_HERE[t]}" if made_here and t in MADE_HERE else ""))
        for t in tables
    )


def outbound_rows() -> sql.Composable:
    """Central's publication to its outbox: every site's rows, of those made on central."""
    return sql.SQL(", ").join(
        sql.SQL("{} WHERE ({})").format(sql.Identifier(t), sql.SQL(MADE_HERE[t])) if t in MADE_HERE
        else sql.Identifier(t)
        for t in CENTRAL_TABLES
    )


def readings_table(site_id: str, after: datetime | None = None) -> sql.Composable:
    """The readings publication's one table: the site's own rows, after `after` once a resync narrowed it."""
    if after is None:
        return own_rows(site_id, ("sensor_readings",))
    return sql.SQL("sensor_readings WHERE (site_id = {} AND time > {})").format(
        sql.Literal(site_id), sql.Literal(after))


def in_sync(conn: psycopg.Connection, subscription: str) -> bool:
    """Every table of the subscription copied and streaming (state 'r'); False while it has none yet."""
    row = conn.execute(
        "SELECT count(*) FILTER (WHERE r.srsubstate <> 'r') = 0 AND count(*) > 0 FROM pg_subscription_rel r"
        " JOIN pg_subscription s ON s.oid = r.srsubid WHERE s.subname = %s", (subscription,)).fetchone()
    return bool(row and row[0])


def _ensure_publication(
    conn: psycopg.Connection, name: str, tables: sql.Composable, options: str, say: Steps
) -> None:
    """Create it, or bring an older link's tables and row filters up to date (then subscribers refresh).

    A publication made before row filters carried every row of its tables, whatever their site_id."""
    ident = sql.Identifier(name)
    if not exists(conn, "pg_publication", "pubname", name):
        conn.execute(sql.SQL("CREATE PUBLICATION {} FOR TABLE ").format(ident) + tables
                     + sql.SQL(f" WITH ({options})"))
        say(f"created publication {name}")
        return
    unfiltered = [r[0] for r in conn.execute(
        "SELECT tablename FROM pg_publication_tables WHERE pubname = %s AND rowfilter IS NULL"
        " ORDER BY tablename", (name,))]
    conn.execute(sql.SQL("ALTER PUBLICATION {} SET TABLE ").format(ident) + tables)
    if unfiltered and name != OUTBOUND:
        say(f"publication {name} now carries only this site's rows of {', '.join(unfiltered)}")


def _drop_publication(conn: psycopg.Connection, name: str, say: Steps) -> None:
    if exists(conn, "pg_publication", "pubname", name):
        conn.execute(sql.SQL("DROP PUBLICATION {}").format(sql.Identifier(name)))
        say(f"dropped publication {name}")


def _ensure_subscription(
    conn: psycopg.Connection, name: str, conninfo: str, publications: list[str], say: Steps,
    slot: str | None = None, options: str = "",
) -> None:
    """`slot`: the slot's name on the publisher, which must be unique there (default: `name`);
    `options`: more of CREATE SUBSCRIPTION's WITH options."""
    if exists(conn, "pg_subscription", "subname", name):
        # new tables in the publication (a link made by an older version) start replicating; existing
        # ones are not copied again
        conn.execute(sql.SQL("ALTER SUBSCRIPTION {} REFRESH PUBLICATION WITH (copy_data = true)").format(
            sql.Identifier(name)))
        return
    conn.execute(
        sql.SQL("CREATE SUBSCRIPTION {} CONNECTION {} PUBLICATION {} WITH (slot_name = {}{})").format(
            sql.Identifier(name), sql.Literal(conninfo),
            sql.SQL(", ").join(sql.Identifier(p) for p in publications), sql.Literal(slot or name),
            sql.SQL(f", {options}" if options else ""),
        )
    )
    say(f"created subscription {name}")


def forget_subscription(conn: psycopg.Connection, name: str) -> None:
    """Drop a subscription without dropping its slot on the publisher: the slot went with the publisher's
    database (a lost site, a central restored from a backup), or the publisher cannot be reached."""
    ident = sql.Identifier(name)
    conn.execute(sql.SQL("ALTER SUBSCRIPTION {} DISABLE").format(ident))
    conn.execute(sql.SQL("ALTER SUBSCRIPTION {} SET (slot_name = NONE)").format(ident))
    conn.execute(sql.SQL("DROP SUBSCRIPTION {}").format(ident))


def _drop_subscription(conn: psycopg.Connection, name: str, say: Steps, slot_gone: bool = False) -> None:
    """Drop it and its slot on the publisher; if the publisher is unreachable, leave the slot behind.
    `slot_gone`: the publisher's database was lost with the slot, nothing to drop there."""
    if not exists(conn, "pg_subscription", "subname", name):
        return
    if slot_gone:
        forget_subscription(conn, name)
    else:
        try:
            conn.execute(sql.SQL("DROP SUBSCRIPTION {}").format(sql.Identifier(name)))
        except psycopg.OperationalError:
            forget_subscription(conn, name)
            say(f"publisher unreachable: its slot {name} must be dropped there")
    say(f"dropped subscription {name}")


def _send_commands(s: psycopg.Connection, o: psycopg.Connection, sender: Settings, site: Settings,
                   from_central: bool, say: Steps) -> None:
    """What central sends the site, from `sender` (`o`: central itself when `from_central`, else its
    outbox): the site's role and publication there, and the site's subscription to it."""
    site_id = site.site.id
    _ensure_role(o, site_role(site_id), CENTRAL_TABLES, say)
    _ensure_publication(o, commands_publication(site_id), own_rows(site_id, CENTRAL_TABLES, from_central),
                        "publish = 'insert'", say)
    _follow_commands(s, site, sender, say)


def _follow_commands(s: psycopg.Connection, site: Settings, sender: Settings, say: Steps) -> None:
    """The site's subscription to what central sends it, from `sender` (central or its outbox).

    Made afresh when it reads from elsewhere (central gained an outbox): the new one copies the site's rows
    again, and the site keeps those it has (sql/021, sql/025)."""
    conninfo = conninfo_to(sender, site, site_role(site.site.id))
    row = s.execute("SELECT subconninfo FROM pg_subscription WHERE subname = %s",
                    (COMMANDS_SUBSCRIPTION,)).fetchone()
    wanted = {k: v for k, v in conninfo_to_dict(conninfo).items() if k in ("host", "port", "dbname")}
    if row and {k: v for k, v in conninfo_to_dict(row[0]).items() if k in wanted} != wanted:
        _drop_subscription(s, COMMANDS_SUBSCRIPTION, say)
        say(f"the site now takes what central sends it from {wanted['host']}:{wanted['port']}")
    publication = commands_publication(site.site.id)
    _ensure_subscription(s, COMMANDS_SUBSCRIPTION, conninfo, [publication], say, slot=publication)


def outbox(central: Settings) -> Settings | None:
    """Central's outbox as a node of its own (its database; sites reach it on central's host at
    `outbox_port`, default the DSN's), or None when central publishes to its sites itself."""
    dsn = central.central.outbox_dsn
    if dsn is None:
        return None
    port = central.central.outbox_port or int(conninfo_to_dict(dsn).get("port") or 5432)
    return central.model_copy(update={
        "database": central.database.model_copy(update={"dsn": dsn}),
        "replication": central.replication.model_copy(update={"port": port}),
    })


def link_outbox(central: Settings) -> list[str]:
    """Central -> its outbox: one publication of every site's rows, one subscription. Safe to re-run.
    The outbox's database must have the schema (`prepare_database`) first."""
    box = outbox(central)
    if box is None:
        return []
    say = Steps()
    with connect(central.database.dsn, autocommit=True) as c, connect(box.database.dsn, autocommit=True) as o:
        _require_logical(c, "the central")
        _require_logical(o, "the outbox")
        _ensure_role(c, OUTBOX_ROLE, CENTRAL_TABLES, say)
        _ensure_publication(c, OUTBOUND, outbound_rows(), "publish = 'insert'", say)
        # flushed at each commit: a WAL sender sends only flushed WAL, and an apply worker's commits are
        # otherwise asynchronous (flushed every wal_writer_delay, 200 ms: measured, 202 ms a command)
        _ensure_subscription(o, OUTBOUND, conninfo_to(central, box, OUTBOX_ROLE), [OUTBOUND], say,
                             options="synchronous_commit = 'local'")
    return say.done


@contextmanager
def _both(site: Settings, central: Settings) -> Iterator[tuple[psycopg.Connection, psycopg.Connection]]:
    site_dsn, central_dsn = site.database.dsn, central.database.dsn
    with connect(site_dsn, autocommit=True) as s, connect(central_dsn, autocommit=True) as c:
        yield s, c


@contextmanager
def _sender(central: Settings, c: psycopg.Connection) -> Iterator[tuple[psycopg.Connection, Settings]]:
    """Where what central sends its sites leaves from: its outbox, or central itself (`c`)."""
    box = outbox(central)
    if box is None:
        yield c, central
        return
    with connect(box.database.dsn, autocommit=True) as o:
        yield o, box


def link(site: Settings, central: Settings) -> list[str]:
    """Connect one site and central both ways. Safe to re-run; a link made with two subscriptions on
    central (before one per site) is resynced into one."""
    site_id = site.site.id
    subscription = site_subscription(site_id)
    with connect(central.database.dsn, autocommit=True) as c, _sender(central, c) as (o, _):
        refuse_if_full(c, None if o is c else o, site_id)  # before anything is made on either side
        two = any(exists(c, "pg_subscription", "subname", name) for name in old_subscriptions(site_id))
    say = Steps(resync(site, central) if two else [])
    with _both(site, central) as (s, c), _sender(central, c) as (o, sender):
        _require_logical(s, "the site")
        _require_logical(c, "the central")
        bound_slots(s, site.replication.max_slot_wal_keep_size, "site")
        _ensure_role(s, CENTRAL_ROLE, ("sensor_readings", *META_TABLES), say)
        resynced = c.execute("SELECT resynced_from FROM site WHERE site_id = %s", (site_id,)).fetchone()
        # a resync narrowed the readings to those after central's newest: keep that bound
        _ensure_publication(s, READINGS_PUBLICATION, readings_table(site_id, resynced and resynced[0]),
                            "publish = 'insert', publish_via_partition_root = true", say)
        _ensure_publication(s, META_PUBLICATION, own_rows(site_id, META_TABLES),
                            "publish = 'insert, update, delete'", say)
        heartbeat(s, site_id)
        s.execute(USERS_TO_COPY, (site_id,))  # those made before the link (sql/026 keeps the copy after)

        # both registry columns name the one subscription (central's site guard maps either to the site)
        c.execute(
            "INSERT INTO site (site_id, readings_subscription, meta_subscription) VALUES (%s, %s, %s)"
            " ON CONFLICT (site_id) DO NOTHING",
            (site_id, subscription, subscription),
        )
        _ensure_subscription(c, subscription, conninfo_to(site, central, CENTRAL_ROLE),
                             [READINGS_PUBLICATION, META_PUBLICATION], say)

        _send_commands(s, o, sender, site, o is c, say)
        if o is not c:  # a link made before central had its outbox: nothing reads this any more
            _drop_publication(c, commands_publication(site_id), say)
    return say.done or ["already linked: nothing to do"]


def unlink(site: Settings, central: Settings) -> list[str]:
    """Undo `link`. History already on central stays there."""
    say = Steps()
    site_id = site.site.id
    with _both(site, central) as (s, c), _sender(central, c) as (o, _):
        _drop_subscription(s, COMMANDS_SUBSCRIPTION, say)
        for name in (site_subscription(site_id), *old_subscriptions(site_id)):
            _drop_subscription(c, name, say)
        for conn, name in ((o, commands_publication(site_id)), (c, commands_publication(site_id)),
                           (s, READINGS_PUBLICATION), (s, META_PUBLICATION)):
            _drop_publication(conn, name, say)
        for conn, role in ((o, site_role(site_id)), (c, site_role(site_id)), (s, CENTRAL_ROLE)):
            if exists(conn, "pg_roles", "rolname", role):
                conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
                conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
                say(f"dropped role {role}")
        c.execute("DELETE FROM site WHERE site_id = %s", (site_id,))
    return say.done or ["not linked: nothing to do"]


RESYNC_OVERLAP = timedelta(hours=1)  # how far before central's newest reading the backfill looks


def resync(site: Settings, central: Settings, backfill_from: datetime | None = None) -> list[str]:
    """Reconnect a site whose slots were lost (an outage longer than max_slot_wal_keep_size allowed).

    Not a full copy: with T = central's newest reading from the site, the readings publication is
    narrowed to `time > T` and a new subscription copies exactly those rows and streams on from its new
    slot; rows at or before T that central lacks (committed late, after the stream broke) are
    backfilled directly, skipping what central has, and central's current values take in what the
    backfill brought. The small tables (the site's commands and their events too) are copied afresh:
    central's replica triggers absorb the rows it already holds. A reading older than T that reaches
    the site after the resync is not replicated. The site's own subscription to what central sends is
    made afresh when its slot on central (or the outbox) was lost: it copies again, the site keeps what
    it has. `backfill_from`: backfill from this time on at least (after central was restored from a
    backup, its newest reading may be one streamed since, and the rows it lost are older: bacpipes.recovery).
    """
    say = Steps()
    site_id = site.site.id
    subscription = site_subscription(site_id)
    with _both(site, central) as (s, c), _sender(central, c) as (o, sender):
        for name in (subscription, *old_subscriptions(site_id)):
            _drop_subscription(c, name, say)
        say.done += drop_site_slots(s, site_id)
        newest = _newest_reading(c, site_id)
        s.execute(sql.SQL("ALTER PUBLICATION {} SET TABLE ").format(sql.Identifier(READINGS_PUBLICATION))
                  + readings_table(site_id, newest))
        if newest is not None:
            say(f"readings publication narrowed to readings after {newest.isoformat()}")
        c.execute("UPDATE site SET readings_subscription = %s, meta_subscription = %s WHERE site_id = %s",
                  (subscription, subscription, site_id))  # before it applies: the site guard reads these
        _ensure_subscription(c, subscription, conninfo_to(site, central, CENTRAL_ROLE),
                             [READINGS_PUBLICATION, META_PUBLICATION], say)
        if newest is not None:
            after = min(newest - RESYNC_OVERLAP, backfill_from or newest)
            say(f"backfilled {_backfill(s, c, site_id, after, newest)} readings")
        c.execute(
            "UPDATE site SET resynced_at = now(), resynced_from = %s WHERE site_id = %s", (newest, site_id)
        )
        slot = o.execute("SELECT wal_status FROM pg_replication_slots WHERE slot_name = %s",
                         (commands_publication(site_id),)).fetchone()
        if slot is None or slot[0] == "lost":
            say(f"the site's commands slot was {'lost' if slot else 'missing'}: subscribing afresh")
            _drop_subscription(s, COMMANDS_SUBSCRIPTION, say)
            _send_commands(s, o, sender, site, o is c, say)
    return say.done


def relink_rebuilt(site: Settings, central: Settings) -> list[str]:
    """Link a site whose database was rebuilt from central (bacpipes.rebuild) in place of the lost one.

    Central's subscription to the lost database goes (its slot went with the disk), and so does the lost
    site's slot for what central sends it, unless a live subscriber holds it. The readings publication
    starts after central's newest reading from the site (as a resync's does): the history the rebuild
    copied here is never sent back."""
    say = Steps()
    site_id = site.site.id
    with connect(central.database.dsn, autocommit=True) as c, _sender(central, c) as (o, _):
        for name in (site_subscription(site_id), *old_subscriptions(site_id)):
            _drop_subscription(c, name, say, slot_gone=True)
        slot = commands_publication(site_id)
        if o.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s AND NOT active",
                     (slot,)).fetchone():
            o.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
            say(f"dropped the lost site's slot {slot}")
        newest = _newest_reading(c, site_id)
        c.execute("UPDATE site SET resynced_at = now(), resynced_from = %s WHERE site_id = %s",
                  (newest, site_id))
    return say.done + link(site, central)


def _newest_reading(c: psycopg.Connection, site_id: str) -> datetime | None:
    """Central's newest reading of the site: where a resynced or rebuilt site's publication starts."""
    row = c.execute("SELECT max(time) FROM sensor_readings WHERE site_id = %s", (site_id,)).fetchone()
    return row[0]  # type: ignore[index]


def _backfill(s: psycopg.Connection, c: psycopg.Connection, site_id: str, after: datetime,
              upto: datetime) -> int:
    """Site rows in (after, upto] into central, skipping those central has: binary COPY both ways."""
    columns = "time, site_id, point_id, value, quality"
    with c.transaction():
        c.execute("CREATE TEMP TABLE resync_stage (LIKE sensor_readings) ON COMMIT DROP")
        out = sql.SQL(
            "COPY (SELECT {} FROM sensor_readings WHERE site_id = {} AND time > {} AND time <= {})"
            " TO STDOUT (FORMAT BINARY)"
        ).format(sql.SQL(columns), sql.Literal(site_id), sql.Literal(after), sql.Literal(upto))
        with s.cursor().copy(out) as source, c.cursor().copy(
            f"COPY resync_stage ({columns}) FROM STDIN (FORMAT BINARY)"
        ) as target:
            for chunk in source:
                target.write(chunk)
        cur = c.execute(f"INSERT INTO sensor_readings ({columns}) SELECT {columns} FROM resync_stage"
                        " ON CONFLICT DO NOTHING")
        c.execute(STATE_FROM_STAGE)  # central's own insert: the replica trigger that keeps it did not fire
        return cur.rowcount


STATE_FROM_STAGE = """
INSERT INTO point_state AS s (site_id, point_id, value, quality, time)
SELECT DISTINCT ON (point_id) site_id, point_id, value, quality, time FROM resync_stage
ORDER BY point_id, time DESC
ON CONFLICT (site_id, point_id) DO UPDATE SET value = EXCLUDED.value, quality = EXCLUDED.quality,
    time = EXCLUDED.time
WHERE s.time IS NULL OR s.time < EXCLUDED.time
"""


# --- central side --------------------------------------------------------------------------------


@dataclass(frozen=True)
class SiteLink:
    site_id: str
    readings_worker_alive: bool
    meta_worker_alive: bool
    heartbeat_at: datetime | None
    lag_s: float | None
    lag_bytes: int | None
    slot_wal_status: str | None
    last_reading: datetime | None
    linked_at: datetime
    resynced_at: datetime | None

    def problems(self, lag_alert_s: float) -> list[str]:
        out = []
        if not (self.readings_worker_alive and self.meta_worker_alive):
            out.append("subscription worker not running (site unreachable, or its slot lost: `site resync`)")
        if self.lag_s is None:
            out.append("no heartbeat from the site yet")
        elif self.lag_s > lag_alert_s:
            out.append(f"replication lag {self.lag_s:.0f} s > {lag_alert_s:.0f} s")
        if self.slot_wal_status in ("unreserved", "lost"):
            out.append(f"the site's slot is {self.slot_wal_status}")
        return out


def central_status(conn: psycopg.Connection) -> list[SiteLink]:
    cur = conn.execute(
        "SELECT site_id, readings_worker_alive, meta_worker_alive, heartbeat_at, lag_s::float8,"
        " lag_bytes::bigint, slot_wal_status, last_reading, linked_at, resynced_at"
        " FROM replication_status ORDER BY site_id"
    )
    return [SiteLink(*row) for row in cur.fetchall()]
