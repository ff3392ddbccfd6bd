"""How many sites a central can take: the server settings that grow with the number of sites.

PostgreSQL sizes its replication machinery at start, from four settings, and when one is short a link
does not fail: its initial sync waits for a worker, an origin or a slot that never comes free, and only
the server's log says so ("out of logical replication worker slots", "could not find free replication
state slot"). So `central init --sites N` sizes them, `site link` refuses a site central cannot take, and
`central status` shows a sync that is stuck (deploy/replication.md has the formula and how it was measured).

Per site, central holds one subscription (an apply worker and a replication origin) and, without an
outbox, the publisher end of the site's subscription to it (a slot and a WAL sender). A link's initial
sync adds, on both ends, up to `max_sync_workers_per_subscription` (S) table-sync workers, each with its
own origin on the subscriber and slot + WAL sender on the publisher. Origins are capped by
`max_replication_slots` too, in an array of their own. With an outbox, central's per-site publisher end
moves there and central keeps one subscriber (the outbox) instead. The background-worker pool
(`max_worker_processes`) holds the launcher, the replication workers and the parallel-query workers; the
latter are kept in reserve (`max_parallel_workers`) in what `central init` sets, so a busy query cannot
hold a sync back; a link is refused only for what replication itself needs.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg import sql

from bacpipes.db import connect
from bacpipes.errors import UserError
from bacpipes.settings import Settings

WORKERS = "max_logical_replication_workers"
PROCESSES = "max_worker_processes"
SLOTS = "max_replication_slots"
SENDERS = "max_wal_senders"
SETTINGS = (WORKERS, PROCESSES, SLOTS, SENDERS)  # all four take effect only at a restart
SYNC_WORKERS = 2  # max_sync_workers_per_subscription's default
PARALLEL_WORKERS = 8  # max_parallel_workers' default
LIVE_FROM_FILES = frozenset({"default", "configuration file"})  # sources ALTER SYSTEM can override


def needs(sites: int, outbox: bool, sync_workers: int = SYNC_WORKERS,
          parallel_workers: int = PARALLEL_WORKERS) -> dict[str, dict[str, int]]:
    """The settings `sites` sites need, per server: "central", and "outbox" when central has one.

    Room for one link's initial sync at a time at full speed (S = `sync_workers`); several links at once
    share it and finish one after another. Measured (deploy/replication.md): S = 1 is the least that
    finishes, one less of any setting and the last site's sync never does."""
    def hub(subscriptions: int, published_sites: int) -> dict[str, int]:
        workers = subscriptions + sync_workers
        return {
            WORKERS: workers,
            PROCESSES: workers + 1 + parallel_workers,  # + the launcher
            SLOTS: max(subscriptions, published_sites) + sync_workers,  # origins, and slots
            SENDERS: published_sites + sync_workers,
        }

    if not outbox:
        return {"central": hub(sites, sites)}
    return {"central": hub(sites, 1), "outbox": hub(1, sites)}


def room(running: dict[str, int], server: str, outbox: bool, sync_workers: int = SYNC_WORKERS,
         parallel_workers: int = PARALLEL_WORKERS) -> int:
    """How many sites these running values allow on `server`."""
    sites = 0
    while all(running[name] >= value for name, value in
              needs(sites + 1, outbox, sync_workers, parallel_workers)[server].items()):
        sites += 1  # ends: every server's slots grow with the sites
    return sites


# --- a live server ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    """One setting on one server: what runs now, what its files say (the value after a restart), and
    what the sites need."""

    server: str
    name: str
    needed: int
    running: int
    configured: int
    source: str  # pg_settings.source: where the running value comes from
    written: bool = False

    @property
    def enough_now(self) -> bool:
        return self.running >= self.needed

    @property
    def restart_needed(self) -> bool:
        return not self.enough_now and self.configured >= self.needed

    @property
    def overridden(self) -> bool:
        """Set on the server's command line (e.g. `-c` in a container): ALTER SYSTEM cannot change it."""
        return self.source not in LIVE_FROM_FILES

    def line(self, sites: int) -> str:
        head = f"{self.server} {self.name} = {self.running}"
        if self.enough_now:
            return f"{head}: enough for {sites} site(s) (needs {self.needed})"
        if self.overridden:
            return (f"{head}, {sites} site(s) need {self.needed}: it comes from the server's {self.source} "
                    "(e.g. a container's -c), which ALTER SYSTEM cannot override: raise it there and restart")
        if self.written:
            return f"{head}: set to {self.needed} for {sites} site(s): RESTART PostgreSQL to apply"
        if self.restart_needed:
            return (f"{head}: {self.configured} in its configuration, enough for {sites} site(s) "
                    f"(needs {self.needed}): RESTART PostgreSQL to apply")
        return f"{head}: {sites} site(s) need {self.needed}: run `bacpipes central init --sites {sites}`"


def _int_setting(conn: psycopg.Connection, name: str) -> int:
    return int(conn.execute("SELECT setting FROM pg_settings WHERE name = %s", (name,)).fetchone()[0])  # type: ignore[index]


def server_needs(conn: psycopg.Connection, sites: int, server: str, outbox: bool, reserve: bool = True
                 ) -> dict[str, int]:
    """`needs` with this server's own S, and its parallel workers in reserve when `reserve`: what `central
    init` sets keeps them; what a link and the room judge by does not (a parallel query holds its workers
    for a while, it cannot keep a sync from ever finishing)."""
    parallel = _int_setting(conn, "max_parallel_workers") if reserve else 0
    return needs(sites, outbox, _int_setting(conn, "max_sync_workers_per_subscription"), parallel)[server]


FILE_VALUES = """
SELECT s.name, s.setting::int, coalesce(f.setting::int, s.reset_val::int), s.source
FROM pg_settings s LEFT JOIN (SELECT DISTINCT ON (name) name, setting FROM pg_file_settings
                              WHERE name = ANY(%(names)s) ORDER BY name, seqno DESC) f USING (name)
WHERE s.name = ANY(%(names)s)
"""
RUNNING_VALUES = """
SELECT name, setting::int, setting::int, source FROM pg_settings WHERE name = ANY(%(names)s)
"""


def read_settings(conn: psycopg.Connection, server: str, wanted: dict[str, int], files: bool = True
                  ) -> list[Setting]:
    """The four settings as the server runs them and, with `files` (a superuser's view), as its files set
    them (the last file line wins)."""
    rows = conn.execute(FILE_VALUES if files else RUNNING_VALUES, {"names": list(SETTINGS)}).fetchall()
    found = {name: (running, configured, source) for name, running, configured, source in rows}
    return [Setting(server, name, wanted[name], *found[name]) for name in SETTINGS]


def plan(conn: psycopg.Connection, sites: int, server: str = "central", outbox: bool = False,
         write: bool = True) -> list[Setting]:
    """Check, and with `write` raise (ALTER SYSTEM; never lowered) what `sites` sites need on `server`.

    Needs a superuser. The four settings take effect at the next restart, which is left to the operator:
    each returned Setting says whether it is enough now and whether a restart is needed."""
    out = []
    for setting in read_settings(conn, server, server_needs(conn, sites, server, outbox)):
        if write and setting.configured < setting.needed and not setting.overridden:
            conn.execute(sql.SQL("ALTER SYSTEM SET {} = {}").format(
                sql.Identifier(setting.name), sql.Literal(str(setting.needed))))
            setting = Setting(setting.server, setting.name, setting.needed, setting.running, setting.needed,
                              setting.source, written=True)
        out.append(setting)
    return out


def bound_slots(conn: psycopg.Connection, size: str, server: str = "central") -> str:
    """`max_slot_wal_keep_size` on a publisher: a subscriber away for long loses its slot (then resync)
    instead of filling the disk. A reload applies it."""
    conn.execute(sql.SQL("ALTER SYSTEM SET max_slot_wal_keep_size = {}").format(sql.Literal(size)))
    conn.execute("SELECT pg_reload_conf()")
    return f"{server} max_slot_wal_keep_size = {size}: an offline subscriber holds at most this much WAL"


def linked_count(conn: psycopg.Connection) -> int:
    """The sites in central's registry."""
    return int(conn.execute("SELECT count(*) FROM site").fetchone()[0])  # type: ignore[index]


def running_room(conn: psycopg.Connection, server: str, outbox: bool) -> int:
    """How many sites `server` can hold as it runs now: as many as `refuse_if_full` lets link."""
    running = {name: _int_setting(conn, name) for name in SETTINGS}
    return room(running, server, outbox, _int_setting(conn, "max_sync_workers_per_subscription"), 0)


def refuse_if_full(central: psycopg.Connection, outbox: psycopg.Connection | None, site_id: str) -> None:
    """Raise UserError, before `link` creates anything, when central (or its outbox) as it runs now
    cannot take `site_id` as one more site: its initial sync would wait forever. A site already in the
    registry (a re-run of link) is never refused."""
    if central.execute("SELECT 1 FROM site WHERE site_id = %s", (site_id,)).fetchone():
        return
    sites = linked_count(central) + 1
    short = []
    for server, conn in (("central", central), ("outbox", outbox)):
        if conn is None:
            continue
        wanted = server_needs(conn, sites, server, outbox is not None, reserve=False)
        short += [s for s in read_settings(conn, server, wanted, files=False) if not s.enough_now]
    if short:
        missing = "; ".join(f"{s.server} {s.name} = {s.running}, needs {s.needed}" for s in short)
        raise UserError(
            f"central cannot take site {site_id!r} as site number {sites}: {missing}; its initial sync could "
            f"wait for good. Run `bacpipes central init --sites {sites}` (or more) on central, restart its "
            "PostgreSQL, then link again (deploy/replication.md: capacity)")


# --- initial syncs ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sync:
    """A subscription of this database whose initial sync has not finished."""

    subscription: str
    waiting: tuple[tuple[str, str], ...]  # (table, srsubstate) not yet synchronized
    workers: int  # table-sync workers running for them
    longest_s: float | None  # the oldest of those workers' age
    apply_s: float | None = None  # the subscription's apply worker's age (None: not running)

    def stuck(self, limit_s: float) -> str | None:
        """Why it is stuck, or None while it is making progress (or has only just started: its apply
        worker starts the table syncs, one after another)."""
        tables = ", ".join(f"{t} ({state})" for t, state in self.waiting)
        if self.workers == 0 and not (self.apply_s is not None and self.apply_s < START_GRACE_S):
            return (f"initial sync of {self.subscription} stuck: {tables} wait and no table-sync worker runs "
                    "(central out of workers, origins or slots? `bacpipes central init --sites N`, restart)")
        if self.longest_s is not None and self.longest_s > limit_s:
            return f"initial sync of {self.subscription}: a table-sync worker has run {self.longest_s:.0f} s"
        return None


START_GRACE_S = 10.0  # an apply worker starts its table syncs within seconds (retries every 5 s)

SYNCS = """
SELECT s.subname, r.srrelid::regclass::text, r.srsubstate::text, w.pid,
       extract(epoch FROM clock_timestamp() - a.backend_start)::float8,
       extract(epoch FROM clock_timestamp() - aa.backend_start)::float8
FROM pg_subscription s
JOIN pg_subscription_rel r ON r.srsubid = s.oid
LEFT JOIN pg_stat_subscription w ON w.subid = s.oid AND w.relid = r.srrelid
LEFT JOIN pg_stat_activity a ON a.pid = w.pid
LEFT JOIN pg_stat_subscription m ON m.subid = s.oid AND m.relid IS NULL
LEFT JOIN pg_stat_activity aa ON aa.pid = m.pid
WHERE s.subenabled AND r.srsubstate IN ('i', 'd', 'f')
  AND s.subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())
ORDER BY s.subname, 2
"""


def sync_states(conn: psycopg.Connection) -> list[Sync]:
    """The subscriptions with tables still waiting for their copy ('i', 'd', 'f'; 's' is done and only
    waits for the apply worker to mark it ready)."""
    grouped: dict[str, list[tuple[str, str, int | None, float | None]]] = {}
    apply: dict[str, float | None] = {}
    for name, table, state, pid, age, apply_age in conn.execute(SYNCS).fetchall():
        grouped.setdefault(name, []).append((table, state, pid, age))
        apply[name] = apply_age
    out = []
    for name, rows in grouped.items():
        running = [age for _, _, pid, age in rows if pid is not None]
        ages = [age for age in running if age is not None]
        waiting = tuple((table, state) for table, state, _, _ in rows)
        out.append(Sync(name, waiting, len(running), max(ages) if ages else None, apply[name]))
    return out


# --- central init and status -----------------------------------------------------------------------


def servers(settings: Settings) -> list[tuple[str, str]]:
    """Central's database and, when it has one, its outbox's: (name, DSN)."""
    box = settings.central.outbox_dsn
    return [("central", settings.database.dsn), *([("outbox", box)] if box else [])]


def size_central(settings: Settings, sites: int | None) -> list[str]:
    """`central init`'s capacity step, on central and its outbox: bound their slots, and with `sites` raise
    the four settings for that many sites (never for fewer than are linked); without, only check them for
    one more site than are linked. Lines for the operator, the restarts needed among them."""
    if sites is not None and sites < 1:
        raise UserError(f"--sites {sites}: plan for one site or more")
    box = settings.central.outbox_dsn
    with connect(settings.database.dsn, autocommit=True) as c:
        linked = linked_count(c)
    planned = max(sites, linked) if sites is not None else linked + 1
    lines = []
    for server, dsn in servers(settings):
        with connect(dsn, autocommit=True) as conn:
            if conn.execute("SHOW is_superuser").fetchone()[0] != "on":  # type: ignore[index]
                lines.append(f"{server}: replication settings not checked: ALTER SYSTEM and the files' "
                             "values need a superuser connection (deploy/replication.md: Capacity)")
                continue
            lines.append(bound_slots(conn, settings.replication.max_slot_wal_keep_size, server))
            checked = plan(conn, planned, server, box is not None, write=sites is not None)
            lines += [setting.line(planned) for setting in checked]
            lines.append(room_line(conn, server, box is not None, linked))
    return lines


def room_line(conn: psycopg.Connection, server: str, outbox: bool, linked: int) -> str:
    return f"{server}: room for {running_room(conn, server, outbox)} site(s) as it runs now; {linked} linked"
