"""Operations alerts: the seed's rules, judged against a site or the central database, stored in `alerts`
and sent when they are new (webhook, e-mail, Telegram, SMS; PagerDuty also hears when they clear).
`raise_alert` is the one writer of that table (the flows raise theirs through it too) and `deliver` the
one way out (both in `bacpipes.alerts`, so the site's edge sends what it raises too).

Each rule gives a verdict per site (a message when the condition holds, None when it does not). An open
alert is never raised twice for the same rule and site; it is resolved when a later verdict is healthy.
A rule that cannot judge (too few commands, no disk path) gives no verdict and leaves alerts as they are.

How each rule judges, and why:

- replication_lag: on central, per site in the registry, the age of the site's newest heartbeat
  (`replication_status.lag_s`, written every few seconds in commit order with the readings), plus a lost
  or unreserved slot. On a site, the seconds are not known, so it judges what the site can see: each
  `bacpipes%` slot of this database has a subscriber connected and is not lost, and the site's own
  subscription to central has received something (walsender keepalives count) within the threshold.
- write_failures: command outcomes of the last hour, failed / (completed + failed). `rejected` is left
  out: a refusal before the device is touched is the validation working (a bad request), not a failing
  write path. Judged only with at least `write_min_commands` outcomes.
- read_failures: on a site, the share of points polled in the last hour whose latest poll failed
  (`point_state.last_error_at >= last_poll`): it clears as soon as reads succeed again. Central's
  point_state is kept from the readings (sql/021), without polls, so it reads the agent's cumulative
  counters from the heartbeat:
  reads_failed / (reads_failed + readings). Not `requests`: one request reads a whole batch, while
  reads_failed counts points, so that ratio can pass 100 %.
- disk_free: `alerts.disk_path`, else the data directory of a database on this host (`SHOW
  data_directory`, superusers only); no verdict when neither can be measured. Central-wide on central.
- agent_offline: on a site, the agent's heartbeat (`site_heartbeat` with `agent` health) older than
  3 x its `heartbeat_s` (default 10 s), or none at all while the site has published points. On central
  the heartbeat's age *is* the replication lag, so only "never any agent health while the site has points"
  is judged there; a silent agent shows as replication lag.
- central_slots: on central, central's own slots and its outbox's (`[central] outbox_dsn`), which the
  sites' subscriptions to them hold: each is bounded by `max_slot_wal_keep_size` (set by `central init`),
  so a site away too long loses its slot instead of filling central's disk. Warned while there is time
  (less than half the bound left, `safe_wal_size`), critical once `unreserved` (lost at the next
  checkpoint) or `lost` (the site needs `bacpipes site resync`). A slot named for a site is that site's;
  any other (the outbox's subscription to central) is central-wide.
- db_down: the database refuses or times out. The alert cannot be stored where it belongs, so it is sent
  directly once the outage has lasted `db_down_s` (remembered across runs in `alerts.state_path`), once
  per outage, and recorded (raised and resolved) in `alerts` when the database answers again.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from bacpipes.alerts import COLUMNS, Alert, Delivery, deliver, raise_alert
from bacpipes.replication import (
    COMMANDS_SUBSCRIPTION,
    agent_silent,
    central_status,
    commands_publication,
    heartbeat_every,
    is_central,
    linked_sites,
)
from bacpipes.settings import AlertSettings, Settings

log = logging.getLogger(__name__)

RULES = ("replication_lag", "write_failures", "read_failures", "disk_free", "agent_offline", "central_slots",
         "db_down")
SLOT_WARN_FRACTION = 0.5  # central_slots warns once a slot has less than this share of its bound left
_LOCK = 0x0BAC_A1E7  # one alert evaluation at a time per database: two runs must not both raise
_LOCAL_HOSTS = {"", "localhost", "127.0.0.1", "::1"}


def source(rule: str) -> str:
    return f"alerts:{rule}"


@dataclass(frozen=True)
class Verdict:
    """One rule's judgement for one site (None: central-wide). message None: healthy."""

    rule: str
    site_id: str | None
    message: str | None = None
    severity: str = "warning"




@dataclass
class Changes:
    raised: list[Alert] = field(default_factory=list)
    resolved: list[Alert] = field(default_factory=list)


# --- the rules ------------------------------------------------------------------------------------


def sites(conn: psycopg.Connection, settings: Settings, central: bool) -> list[str]:
    return linked_sites(conn) if central else [settings.site.id]


def replication_lag(conn: psycopg.Connection, settings: Settings, central: bool) -> list[Verdict]:
    limit = settings.replication.lag_alert_s
    if central:
        now = conn.execute("SELECT clock_timestamp()").fetchone()[0]  # type: ignore[index]
        out = []
        for link in central_status(conn):
            never = link.lag_s is None and (now - link.linked_at).total_seconds() > limit
            late = link.lag_s is not None and link.lag_s > limit
            lost = link.slot_wal_status in ("unreserved", "lost")
            bad = never or late or lost
            message = "; ".join(link.problems(limit)) if bad else None
            out.append(Verdict("replication_lag", link.site_id, message, "critical" if lost else "warning"))
        return out
    return [site_replication(conn, settings.site.id, limit)]


def site_replication(conn: psycopg.Connection, site_id: str, limit: float) -> Verdict:
    """The site's side of the link: its slots (central's subscriptions) and its own subscription."""
    slots = conn.execute(
        "SELECT s.slot_name, s.active, s.wal_status,"
        " extract(epoch FROM r.replay_lag)::float8,"
        " extract(epoch FROM clock_timestamp() - r.reply_time)::float8"
        " FROM pg_replication_slots s LEFT JOIN pg_stat_replication r ON r.pid = s.active_pid"
        " WHERE s.slot_name LIKE 'bacpipes%%' AND s.database = current_database() ORDER BY s.slot_name"
    ).fetchall()
    subscription = conn.execute(
        "SELECT s.subenabled, w.pid IS NOT NULL,"
        " extract(epoch FROM clock_timestamp() - w.last_msg_receipt_time)::float8"
        " FROM pg_subscription s LEFT JOIN pg_stat_subscription w ON w.subid = s.oid AND w.relid IS NULL"
        " WHERE s.subname = %s"
        " AND s.subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())",
        (COMMANDS_SUBSCRIPTION,),
    ).fetchone()
    return judge_site_replication(site_id, limit, slots, subscription)


def judge_site_replication(site_id: str, limit: float, slots: Iterable[tuple], subscription: tuple | None
                           ) -> Verdict:
    problems, critical = [], False
    for name, active, wal_status, replay_lag_s, reply_age_s in slots:
        if wal_status in ("unreserved", "lost"):
            problems.append(f"slot {name} is {wal_status}: central must `site resync`")
            critical = True
        elif not active:
            problems.append(f"slot {name} has no subscriber connected (central unreachable?)")
        elif replay_lag_s is not None and replay_lag_s > limit:
            problems.append(f"slot {name} lags {replay_lag_s:.0f} s > {limit:.0f} s")
        elif reply_age_s is not None and reply_age_s > limit:
            problems.append(f"slot {name}: no reply from central for {reply_age_s:.0f} s")
    if subscription is not None:
        enabled, running, silent_s = subscription
        if enabled and not running:
            problems.append(f"subscription {COMMANDS_SUBSCRIPTION} to central is not running")
        elif enabled and silent_s is not None and silent_s > limit:
            problems.append(f"nothing from central for {silent_s:.0f} s")
    severity = "critical" if critical else "warning"
    return Verdict("replication_lag", site_id, "; ".join(problems) or None, severity)


def write_failures(conn: psycopg.Connection, alerts: AlertSettings, site_id: str) -> Verdict | None:
    failed, completed, rejected = conn.execute(
        "SELECT count(*) FILTER (WHERE status = 'failed'), count(*) FILTER (WHERE status = 'completed'),"
        " count(*) FILTER (WHERE status = 'rejected') FROM command_events"
        " WHERE site_id = %s AND at > clock_timestamp() - interval '1 hour'"
        " AND status IN ('completed', 'failed', 'rejected')",
        (site_id,),
    ).fetchone()  # type: ignore[misc]
    total = failed + completed
    if total < alerts.write_min_commands:
        return None
    rate = failed / total
    message = None
    if rate > alerts.write_failure_rate:
        message = (f"write failure rate {rate:.0%} > {alerts.write_failure_rate:.0%} in the last hour "
                   f"({failed} failed of {total} executed; {rejected} rejected by validation, not counted)")
    return Verdict("write_failures", site_id, message)


def read_failures(conn: psycopg.Connection, alerts: AlertSettings, site_id: str) -> Verdict | None:
    failing, polled = conn.execute(
        "SELECT count(*) FILTER (WHERE last_error_at >= last_poll), count(*) FROM point_state"
        " WHERE site_id = %s AND last_poll > clock_timestamp() - interval '1 hour'",
        (site_id,),
    ).fetchone()  # type: ignore[misc]
    if polled:
        rate = failing / polled
        what = f"{failing} of {polled} points polled in the last hour failed their latest read"
    else:
        row = conn.execute("SELECT agent FROM site_heartbeat WHERE site_id = %s AND agent IS NOT NULL",
                           (site_id,)).fetchone()
        health = row[0] if row else {}
        failed, ok = int(health.get("reads_failed") or 0), int(health.get("readings") or 0)
        if failed + ok < alerts.read_min_reads:
            return None
        rate, what = failed / (failed + ok), f"{failed} of {failed + ok} reads failed since the agent started"
    message = f"read failure rate {rate:.0%} > {alerts.read_failure_rate:.0%}: {what}"
    return Verdict("read_failures", site_id, message if rate > alerts.read_failure_rate else None)


def disk_path(conn: psycopg.Connection, settings: Settings) -> Path | None:
    """Where to measure: the configured path, else a local database's data directory, else nothing."""
    if settings.alerts.disk_path:
        return Path(settings.alerts.disk_path)
    host = str(conninfo_to_dict(settings.database.dsn).get("host") or "")
    if host not in _LOCAL_HOSTS and not host.startswith("/"):
        return None
    try:
        with conn.transaction():
            directory = conn.execute("SHOW data_directory").fetchone()[0]  # type: ignore[index]
    except psycopg.errors.InsufficientPrivilege:
        return None
    return Path(directory)


def disk_free(conn: psycopg.Connection, settings: Settings, site_id: str | None) -> Verdict | None:
    path = disk_path(conn, settings)
    if path is None:
        log.info("disk rule skipped: set alerts.disk_path (the database is remote or not readable)")
        return None
    try:
        usage = shutil.disk_usage(path)
    except OSError as exc:
        log.warning("disk rule skipped: %s: %s", path, exc)
        return None
    free = usage.free / usage.total
    limit = settings.alerts.disk_free_min
    message = (f"disk {free:.0%} free < {limit:.0%} at {path} ({usage.free / 2**30:.1f} GiB of "
               f"{usage.total / 2**30:.1f} GiB)") if free < limit else None
    return Verdict("disk_free", site_id, message, "critical" if free < limit / 2 else "warning")


def agent_offline(conn: psycopg.Connection, site_id: str, central: bool) -> Verdict:
    points = conn.execute(
        "SELECT count(*) FROM point WHERE site_id = %s AND publish AND missing_since IS NULL", (site_id,)
    ).fetchone()[0]  # type: ignore[index]
    row = conn.execute(
        "SELECT agent, extract(epoch FROM clock_timestamp() - at)::float8 FROM site_heartbeat"
        " WHERE site_id = %s AND agent IS NOT NULL", (site_id,)
    ).fetchone()
    message = None
    if row is None:
        if points:
            message = f"no heartbeat from the edge agent, and the site has {points} published points"
    elif not central:
        health, age = row
        if agent_silent(age, health):
            message = f"edge agent silent for {age:.0f} s (heartbeat every {heartbeat_every(health):.0f} s)"
    return Verdict("agent_offline", site_id, message, "critical")


CENTRAL_SLOTS = """
SELECT %(server)s, slot_name, wal_status, safe_wal_size,
       (SELECT setting::bigint FROM pg_settings WHERE name = 'max_slot_wal_keep_size')
FROM pg_replication_slots
WHERE slot_type = 'logical' AND slot_name LIKE 'bacpipes%%' AND database = current_database()
ORDER BY slot_name
"""


def central_slots(conn: psycopg.Connection, settings: Settings) -> list[Verdict]:
    rows = conn.execute(CENTRAL_SLOTS, {"server": "central"}).fetchall()
    if settings.central.outbox_dsn:
        with psycopg.connect(settings.central.outbox_dsn, autocommit=True,
                             connect_timeout=settings.alerts.connect_timeout_s) as box:
            rows += box.execute(CENTRAL_SLOTS, {"server": "outbox"}).fetchall()
    return judge_central_slots(linked_sites(conn), rows)


def judge_central_slots(site_ids: list[str], slots: Iterable[tuple]) -> list[Verdict]:
    """`slots`: (server, slot, wal_status, safe_wal_size bytes, max_slot_wal_keep_size MB or -1)."""
    owner = {commands_publication(site_id): site_id for site_id in site_ids}
    problems: dict[str | None, list[str]] = {site_id: [] for site_id in (*site_ids, None)}
    critical: set[str | None] = set()
    for server, slot, wal_status, safe_bytes, keep_mb in slots:
        site_id = owner.get(slot)
        if wal_status == "lost":
            problems[site_id].append(f"{server} slot {slot} is lost: `bacpipes site resync` reconnects it")
            critical.add(site_id)
        elif wal_status == "unreserved":
            problems[site_id].append(f"{server} slot {slot} is unreserved: past max_slot_wal_keep_size, lost "
                                     "at the next checkpoint")
            critical.add(site_id)
        elif keep_mb > 0 and safe_bytes is not None and safe_bytes < SLOT_WARN_FRACTION * keep_mb * 2**20:
            problems[site_id].append(f"{server} slot {slot} can keep {safe_bytes / 2**20:.0f} MB more WAL of "
                                     f"max_slot_wal_keep_size {keep_mb} MB: its subscriber is away or behind")
    return [Verdict("central_slots", site_id, "; ".join(found) or None,
                    "critical" if site_id in critical else "warning") for site_id, found in problems.items()]


def evaluate(conn: psycopg.Connection, settings: Settings, central: bool) -> list[Verdict]:
    """Every rule's verdicts; a rule that fails is logged and gives none, so the others still count."""
    verdicts: list[Verdict | None] = []
    checks: list[tuple[str, Any]] = [("replication_lag", lambda: replication_lag(conn, settings, central))]
    for site_id in sites(conn, settings, central):
        checks += [
            ("write_failures", lambda s=site_id: [write_failures(conn, settings.alerts, s)]),
            ("read_failures", lambda s=site_id: [read_failures(conn, settings.alerts, s)]),
            ("agent_offline", lambda s=site_id: [agent_offline(conn, s, central)]),
        ]
    if central:
        checks.append(("central_slots", lambda: central_slots(conn, settings)))
    checks.append(("disk_free", lambda: [disk_free(conn, settings, None if central else settings.site.id)]))
    for rule, check in checks:
        try:
            with conn.transaction():
                verdicts += check()
        except psycopg.Error:
            log.exception("alert rule %s could not be judged", rule)
    return [v for v in verdicts if v is not None]


# --- storing --------------------------------------------------------------------------------------



def apply(conn: psycopg.Connection, verdicts: list[Verdict], monitored: list[str] | None = None) -> Changes:
    """Raise what is new, resolve what cleared, leave the rest. `monitored`: the sites judged this run;
    an open rule alert for a site no longer among them (unlinked) is resolved too."""
    changes = Changes()
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK,))
        open_rows = conn.execute(
            f"SELECT {COLUMNS} FROM alerts WHERE resolved_at IS NULL AND source LIKE 'alerts:%%'"
        ).fetchall()
        opened = {(row[2], row[1]): Alert(*row) for row in open_rows}
        for v in verdicts:
            current = opened.get((source(v.rule), v.site_id))
            if v.message is not None and current is None:
                changes.raised.append(raise_alert(conn, v.site_id, source(v.rule), v.severity, v.message))
            elif v.message is None and current is not None:
                changes.resolved.append(_resolve(conn, current.id))
        if monitored is not None:
            for (_, site_id), alert in opened.items():
                if site_id is not None and site_id not in monitored and source("db_down") != alert.source:
                    changes.resolved.append(_resolve(conn, alert.id))
    return changes


def _resolve(conn: psycopg.Connection, alert_id: int | None) -> Alert:
    row = conn.execute(f"UPDATE alerts SET resolved_at = now() WHERE id = %s RETURNING {COLUMNS}",
                       (alert_id,)).fetchone()
    return Alert(*row)  # type: ignore[misc]


# --- one run --------------------------------------------------------------------------------------


@dataclass
class Run:
    database: str  # "up" | "down"
    central: bool | None
    raised: list[Alert] = field(default_factory=list)
    resolved: list[Alert] = field(default_factory=list)
    open: int = 0
    delivery: Delivery = field(default_factory=Delivery)

    def as_json(self) -> dict[str, Any]:
        return {"database": self.database, "central": self.central,
                "raised": [a.as_json() for a in self.raised],
                "resolved": [a.as_json() for a in self.resolved],
                "open": self.open, "delivery": self.delivery.as_json()}


def run_alerts(settings: Settings, central: bool | None = None) -> Run:
    """Judge every rule, store the changes, send what is new. central None: decide from the registry."""
    conf = settings.alerts
    try:
        conn = psycopg.connect(settings.database.dsn, autocommit=True, connect_timeout=conf.connect_timeout_s)
    except psycopg.OperationalError as exc:
        return _database_down(settings, central, str(exc).strip())
    with conn:
        central = is_central(conn) if central is None else central
        site_id = None if central else settings.site.id
        recovered = _database_back(conn, conf, site_id)
        monitored = sites(conn, settings, central)
        changes = apply(conn, evaluate(conn, settings, central), monitored)
        count = conn.execute("SELECT count(*) FROM alerts WHERE resolved_at IS NULL").fetchone()[0]  # type: ignore[index]
    result = Run("up", central, changes.raised, changes.resolved + recovered, count)
    result.delivery = deliver(changes.raised, conf, resolved=result.resolved)  # resolves: PagerDuty only
    return result


def _state(conf: AlertSettings) -> dict[str, Any]:
    try:
        return json.loads(Path(conf.state_path).read_text())
    except (OSError, ValueError):
        return {}


def _database_down(settings: Settings, central: bool | None, error: str) -> Run:
    conf = settings.alerts
    state = _state(conf)
    now = datetime.now(UTC)
    since = datetime.fromisoformat(state["down_since"]) if "down_since" in state else now
    state.setdefault("down_since", since.isoformat())
    where = conninfo_to_dict(settings.database.dsn)
    name = f"{where.get('host', 'local socket')}:{where.get('port', 5432)}/{where.get('dbname', '')}"
    message = f"database {name} not answering for {(now - since).total_seconds():.0f} s: {error}"
    result = Run("down", central)
    if (now - since).total_seconds() >= conf.db_down_s and not state.get("delivered"):
        site_id = None if central else settings.site.id
        alert = Alert(None, site_id, source("db_down"), "critical", message, since)
        result.raised = [alert]
        result.delivery = deliver([alert], conf)
        state.update(delivered=True, message=message)
    path = Path(conf.state_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(state))
    log.error("%s", message)
    return result


def _database_back(conn: psycopg.Connection, conf: AlertSettings, site_id: str | None) -> list[Alert]:
    """The outage's record, once the database can hold it: raised when it began, resolved now."""
    state = _state(conf)
    if not state:
        return []
    out = []
    if state.get("delivered"):
        out.append(raise_alert(conn, site_id, source("db_down"), "critical",
                               state.get("message") or "database not answering",
                               raised_at=datetime.fromisoformat(state["down_since"]), resolved=True))
    Path(conf.state_path).unlink(missing_ok=True)
    return out
