"""Daily partitions of `sensor_readings`: created ahead, dropped whole when expired.

Why it works this way:

- **Bounds are midnight UTC, whatever the site's zone.** Central stores every site in one table, so a
  partition must mean the same interval for all of them; UTC days are always 24 h (a DST zone would give
  23/25 h days and two partitions named after one local date); and a partition's name
  (`sensor_readings_20261126`) then says exactly what it holds. `tz` exists for a deployment that wants
  local days, but one table must never mix zones (overlapping bounds are refused by PostgreSQL).
- **Retention is DETACH + DROP of whole partitions**, never DELETE: dropping a day costs the same whether
  it holds 10 rows or 10 million, leaves no dead tuples to vacuum, and is not replicated (central keeps its
  own, longer history).
- **The DEFAULT partition is a safety net, not a home.** An insert for a day with no partition lands there
  rather than failing. PostgreSQL refuses to create a partition that would own rows sitting in DEFAULT, so
  `create_partition` detaches DEFAULT, builds the day as a standalone table, moves the rows, and attaches
  both back, in one transaction. Doing the move while both tables are outside the partition tree also keeps
  it out of logical replication (a DELETE + INSERT through the published root would be replayed on central,
  where an insert-only subscription would stall on the duplicate key).
- **Expired rows in DEFAULT are moved into their day's partition, then dropped with it**, so even they go
  by DROP, and DEFAULT is empty after every retention run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import psycopg
from psycopg import sql

from bacpipes.errors import UserError

DEFAULT_TABLE = "sensor_readings"
DEFAULT_DAYS_AHEAD = 3
SITE_RETENTION_DAYS = 7

# one retention/partition run at a time per database (cron + a manual run must not interleave)
_LIFECYCLE_LOCK = 0x0BAC_0003

# A partition's bounds come back from PostgreSQL as text: FOR VALUES FROM ('…') TO ('…').
_PARTITIONS_SQL = """
SELECT c.relname,
       b[1]::timestamptz AS lower,
       b[2]::timestamptz AS upper
  FROM pg_inherits i
  JOIN pg_class c ON c.oid = i.inhrelid
  JOIN pg_class p ON p.oid = i.inhparent
  JOIN pg_namespace n ON n.oid = p.relnamespace
  LEFT JOIN LATERAL regexp_match(pg_get_expr(c.relpartbound, c.oid),
                                 'FROM \\(''([^'']+)''\\) TO \\(''([^'']+)''\\)') AS b ON true
 WHERE p.relname = %s AND n.nspname = current_schema()
 ORDER BY lower NULLS FIRST
"""


@dataclass(frozen=True)
class Partition:
    """One attached partition; `lower`/`upper` are None for DEFAULT."""

    name: str
    lower: datetime | None
    upper: datetime | None

    @property
    def is_default(self) -> bool:
        return self.lower is None


@dataclass
class RetentionReport:
    """What a retention run did, for the CLI to print and a flow to log."""

    table: str
    days: int
    cutoff: datetime
    dropped: dict[str, int] = field(default_factory=dict)  # partition -> rows it held
    created: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    moved_from_default: int = 0  # rows adopted out of DEFAULT into their day's partition
    rejects_deleted: int = 0  # ingest_rejects rows older than the cutoff (kept as long as the readings)

    def summary(self) -> str:
        rows = sum(self.dropped.values())
        return (
            f"{self.table}: retention {self.days} d (cutoff {self.cutoff.isoformat()}): "
            f"dropped {len(self.dropped)} partitions ({rows} rows), created {len(self.created)}, "
            f"kept {len(self.kept)}, moved {self.moved_from_default} rows out of DEFAULT, "
            f"deleted {self.rejects_deleted} ingest rejects"
        )


def _zone(tz: str | ZoneInfo | None) -> ZoneInfo:
    if tz is None:
        return ZoneInfo("UTC")
    return ZoneInfo(tz) if isinstance(tz, str) else tz


def day_bounds(day: date, tz: str | ZoneInfo | None = None) -> tuple[datetime, datetime]:
    """[midnight, next midnight) of `day` in `tz` (UTC by default)."""
    zone = _zone(tz)
    lower = datetime.combine(day, datetime.min.time(), tzinfo=zone)
    upper = datetime.combine(day + timedelta(days=1), datetime.min.time(), tzinfo=zone)
    return lower, upper


def partition_name(table: str, day: date) -> str:
    return f"{table}_{day:%Y%m%d}"


def list_partitions(conn: psycopg.Connection, table: str = DEFAULT_TABLE) -> list[Partition]:
    """Attached partitions of `table`, DEFAULT first, then by time."""
    rows = conn.execute(_PARTITIONS_SQL, (table,)).fetchall()
    return [Partition(name, lower, upper) for name, lower, upper in rows]


def _default_partition(conn: psycopg.Connection, table: str) -> str | None:
    return next((p.name for p in list_partitions(conn, table) if p.is_default), None)


def _count(conn: psycopg.Connection, relation: str, lower: datetime | None = None,
           upper: datetime | None = None) -> int:
    query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(relation))
    if lower is None or upper is None:
        return conn.execute(query).fetchone()[0]
    query += sql.SQL(" WHERE time >= %s AND time < %s")
    return conn.execute(query, (lower, upper)).fetchone()[0]


def create_partition(
    conn: psycopg.Connection, day: date, table: str = DEFAULT_TABLE, tz: str | ZoneInfo | None = None
) -> tuple[str, int] | None:
    """Create `day`'s partition, adopting that day's rows from DEFAULT; returns (name, rows moved).

    None when a partition already covers the day. Runs in the caller's transaction (or its own), so a
    failure leaves DEFAULT attached and every row where it was.
    """
    lower, upper = day_bounds(day, tz)
    existing = list_partitions(conn, table)
    if any(p.lower is not None and p.lower < upper and lower < p.upper for p in existing):
        return None
    name = partition_name(table, day)
    default = next((p.name for p in existing if p.is_default), None)
    with conn.transaction():
        waiting = _count(conn, default, lower, upper) if default else 0
        if waiting:
            _create_adopting_default(conn, table, name, default, lower, upper)
        else:
            conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES {}").format(
                sql.Identifier(name), sql.Identifier(table), sql.SQL(_bounds_clause(conn, lower, upper))))
    return name, waiting


def _bounds_clause(conn: psycopg.Connection, lower: datetime, upper: datetime) -> str:
    # DDL takes no bind parameters: the bounds are inlined as literals
    return f"FROM ({sql.Literal(lower).as_string(conn)}) TO ({sql.Literal(upper).as_string(conn)})"


def _create_adopting_default(
    conn: psycopg.Connection, table: str, name: str, default: str, lower: datetime, upper: datetime
) -> None:
    """Detach DEFAULT, move the day's rows into a new standalone table, attach both back.

    The CHECK constraint lets ATTACH skip its validation scan of the new table; it is dropped after.
    """
    ident, parent, dflt = sql.Identifier(name), sql.Identifier(table), sql.Identifier(default)
    bounds = sql.SQL(_bounds_clause(conn, lower, upper))
    check = sql.Identifier(f"{name}_bounds")
    conn.execute(sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(parent, dflt))
    conn.execute(sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
                 .format(ident, parent))
    conn.execute(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} CHECK (time >= {} AND time < {})").format(
        ident, check, sql.Literal(lower), sql.Literal(upper)))
    conn.execute(
        sql.SQL("WITH moved AS (DELETE FROM {} WHERE time >= %s AND time < %s RETURNING *) "
                "INSERT INTO {} SELECT * FROM moved").format(dflt, ident),
        (lower, upper),
    )
    conn.execute(sql.SQL("ALTER TABLE {} ATTACH PARTITION {} FOR VALUES {}").format(parent, ident, bounds))
    conn.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(ident, check))
    conn.execute(sql.SQL("ALTER TABLE {} ATTACH PARTITION {} DEFAULT").format(parent, dflt))


def _today(now: datetime | None, tz: str | ZoneInfo | None) -> date:
    return (now or datetime.now(UTC)).astimezone(_zone(tz)).date()


def ensure_partitions(
    conn: psycopg.Connection,
    table: str = DEFAULT_TABLE,
    days_ahead: int = DEFAULT_DAYS_AHEAD,
    tz: str | ZoneInfo | None = None,
    now: datetime | None = None,
) -> list[str]:
    """Create the partitions for today .. today+`days_ahead` that do not exist; returns their names.

    Ahead, so that the ingester (and replication on central) never meets midnight without a partition;
    any rows that reached DEFAULT for those days are moved into them.
    """
    today = _today(now, tz)
    created = []
    for offset in range(days_ahead + 1):
        made = create_partition(conn, today + timedelta(days=offset), table, tz)
        if made:
            created.append(made[0])
    return created


def adopt_default_rows(
    conn: psycopg.Connection, table: str = DEFAULT_TABLE, tz: str | ZoneInfo | None = None
) -> tuple[list[str], int]:
    """Give every day found in DEFAULT its own partition (moving its rows); returns (created, moved).

    Run before dropping, so that expired rows stranded in DEFAULT also leave by DROP, not DELETE.
    """
    default = _default_partition(conn, table)
    if default is None:
        return [], 0
    zone = _zone(tz)
    days = conn.execute(
        sql.SQL("SELECT DISTINCT (time AT TIME ZONE %s)::date FROM {} ORDER BY 1").format(
            sql.Identifier(default)),
        (zone.key,),
    ).fetchall()
    created, moved = [], 0
    for (day,) in days:
        made = create_partition(conn, day, table, tz)
        if made:
            created.append(made[0])
            moved += made[1]
    return created, moved


def validate_retention_days(days: int) -> int:
    """A retention under one day would drop today's partition, i.e. the data being written now."""
    if isinstance(days, bool) or not isinstance(days, int) or days < 1:
        raise UserError(f"retention must be a whole number of days >= 1, got {days!r}")
    return days


def drop_partition(conn: psycopg.Connection, table: str, name: str) -> int:
    """DETACH then DROP; returns the rows the partition held (counted first, for the report)."""
    rows = _count(conn, name)
    with conn.transaction():
        conn.execute(sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(
            sql.Identifier(table), sql.Identifier(name)))
        conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(name)))
    return rows


def delete_expired_rejects(conn: psycopg.Connection, cutoff: datetime) -> int:
    """Delete the ingest rejects received before `cutoff`; returns how many.

    The rejects (messages the ingester refused, up to 64 KiB each) are kept as long as the readings, so a
    flood of bad messages cannot fill the disk. A DELETE, not partitions: the table is small, indexed on
    received_at (sql/017_audit.sql), and not replicated.
    """
    if conn.execute("SELECT to_regclass('ingest_rejects')").fetchone()[0] is None:
        return 0
    return conn.execute("DELETE FROM ingest_rejects WHERE received_at < %s", (cutoff,)).rowcount


def apply_retention(
    conn: psycopg.Connection,
    days: int = SITE_RETENTION_DAYS,
    table: str = DEFAULT_TABLE,
    now: datetime | None = None,
    days_ahead: int = DEFAULT_DAYS_AHEAD,
    tz: str | ZoneInfo | None = None,
) -> RetentionReport:
    """Drop the partitions entirely older than `days` days before `now`, create the ones ahead.

    A partition is dropped only when its upper bound is at or before the cutoff (`now - days`), so no
    row younger than the retention is ever removed; the day straddling the cutoff is kept whole.
    """
    validate_retention_days(days)
    now = now or datetime.now(UTC)
    report = RetentionReport(table=table, days=days, cutoff=now - timedelta(days=days))
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LIFECYCLE_LOCK,))
        adopted, report.moved_from_default = adopt_default_rows(conn, table, tz)
        ahead = ensure_partitions(conn, table, days_ahead, tz, now)
        report.created = sorted(set(adopted) | set(ahead))
        for part in list_partitions(conn, table):
            if part.is_default:
                continue
            if part.upper <= report.cutoff:
                report.dropped[part.name] = drop_partition(conn, table, part.name)
            else:
                report.kept.append(part.name)
        if table == DEFAULT_TABLE:
            report.rejects_deleted = delete_expired_rejects(conn, report.cutoff)
    report.created = [name for name in report.created if name not in report.dropped]
    return report
