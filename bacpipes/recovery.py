"""After central was restored from a backup (`bacpipes central restore`): bring every linked site back with
no gap and no duplicate, in one step (`bacpipes central recover`).

What a restore breaks, and what this does about it:

- pgBackRest (like pg_basebackup) restores no replication slot. The slots central's outbox and its sites
  read from on central are gone: their subscribers retry forever ("replication slot does not exist").
  The outbox's subscription to central is made afresh (it copies central's rows again; the outbox's
  replica triggers keep the rows it has, sql/025); so is, without an outbox, each site's subscription to
  central (`replication.resync` does it when the slot is missing). Not re-pointed at a new slot of the
  same name: the subscriber would ask to start at its own last position, on the old timeline, and skip
  central's new rows until central's WAL passed it.
- Central's subscriptions to its sites come back with their positions as of the restore point, but each
  site's slot has moved past what central confirmed before it was lost: the rows central applied between
  the restore point and the crash would never come again (a gap). Every site is resynced
  (`replication.resync`): readings after central's newest come by a new subscription, those from
  `since` (minus the hour a reading may wait before it is stored) up to it are backfilled, skipping
  those central has (so no duplicate: central keeps one row per point and time), and the small tables
  are copied afresh (central's replica triggers keep what it has). The backfill starts at `since`, not at
  an hour before central's newest: the restored central's subscriptions started streaming the outage's
  readings as soon as it started, so its newest reading says nothing about what it lost.

Every site, always, rather than those that look behind: every subscription on a restored central is
rewound (its origin is the backup's), so any site that stored a reading between the restore point and the
crash has a gap, and nothing on central can tell which did (its newest readings are the outage's). A site
that wrote nothing then costs one resync: a few statements and an empty backfill.

Safe to re-run (a site that failed, unreachable say, is resynced on the next run; one done already is
resynced again, harmlessly). The sites' own work never waits on this: a site whose subscription to
central fails keeps polling, storing and executing its local writes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import psycopg

from bacpipes.db import connect
from bacpipes.errors import UserError
from bacpipes.replication import (
    COMMANDS_SUBSCRIPTION,
    OUTBOUND,
    READINGS_PUBLICATION,
    RESYNC_OVERLAP,
    commands_publication,
    drop_site_slots,
    exists,
    forget_subscription,
    in_sync,
    link,
    link_outbox,
    linked_sites,
    outbox,
    resync,
    site_subscription,
    unlink,
)
from bacpipes.settings import Settings
from bacpipes.waiting import poll_until


@dataclass
class Recovery:
    """What `recover` did: central's own steps, each site's, and the sites it could not recover."""

    central: list[str] = field(default_factory=list)
    sites: dict[str, list[str]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)


def _has_slot(conn: psycopg.Connection, name: str) -> bool:
    return exists(conn, "pg_replication_slots", "slot_name", name)


def _has_subscription(conn: psycopg.Connection, name: str) -> bool:
    return exists(conn, "pg_subscription", "subname", name)


def recover_outbox(central: Settings) -> list[str]:
    """The outbox's subscription to central, made afresh when central lost its slot (a restore)."""
    box = outbox(central)
    if box is None:
        return []
    done = []
    with connect(central.database.dsn, autocommit=True) as c, connect(box.database.dsn, autocommit=True) as o:
        if _has_subscription(o, OUTBOUND) and not _has_slot(c, OUTBOUND):
            forget_subscription(o, OUTBOUND)
            done.append(f"central has lost the outbox's slot {OUTBOUND}: the outbox subscribes afresh")
    return done + link_outbox(central)


def _forget_lost_commands_slot(site: Settings, central: Settings) -> list[str]:
    """The site's subscription to what central sends it, dropped here when its slot is gone from central
    (or its outbox): `resync` then makes it afresh."""
    box = outbox(central)
    slot = commands_publication(site.site.id)
    with connect((box or central).database.dsn, autocommit=True) as o, \
            connect(site.database.dsn, autocommit=True) as s:
        if not _has_subscription(s, COMMANDS_SUBSCRIPTION) or _has_slot(o, slot):
            return []
        forget_subscription(s, COMMANDS_SUBSCRIPTION)
    return [f"central has lost the site's slot {slot}: the site subscribes afresh"]


def _check_sites(central: Settings, sites: list[Settings]) -> tuple[list[Settings], list[Settings]]:
    """The sites central's registry lists and those it does not (linked after the restore point), or
    UserError before anything is changed: a site listed without a config would keep its gap."""
    ids = [s.site.id for s in sites]
    twice = sorted({i for i in ids if ids.count(i) > 1})
    if twice:
        raise UserError(f"site {', '.join(twice)} given more than once")
    with connect(central.database.dsn, autocommit=True) as c:
        known = linked_sites(c)
    missing = sorted(set(known) - set(ids))
    if missing:
        raise UserError(
            f"central lists site {', '.join(missing)} but no site config was given for it: give every linked "
            "site's config (a site left out keeps the gap), or `bacpipes site unlink` a site that is gone")
    return [s for s in sites if s.site.id in known], [s for s in sites if s.site.id not in known]


def _relink(site: Settings, central: Settings) -> list[str]:
    """A site linked after the restore point: central has nothing of it, so the link is made afresh
    (a full copy). Refused for a database that was never linked: recovering does not link new sites."""
    with connect(site.database.dsn, autocommit=True) as s:
        was_linked = exists(s, "pg_publication", "pubname", READINGS_PUBLICATION)
    if not was_linked:
        raise UserError(f"site {site.site.id} is not linked to central: `bacpipes site link` it")
    done = ["linked after the restore point: linked afresh", *_forget_lost_commands_slot(site, central),
            *unlink(site, central)]
    with connect(site.database.dsn, autocommit=True) as s:  # central's slot here: no subscription drops it
        done += drop_site_slots(s, site.site.id)
    return done + link(site, central)


def _synced(site: Settings, central: Settings) -> bool:
    """Central's subscription to the site and the site's to central (or its outbox) in sync."""
    with connect(central.database.dsn, autocommit=True) as c, \
            connect(site.database.dsn, autocommit=True) as s:
        return in_sync(c, site_subscription(site.site.id)) and in_sync(s, COMMANDS_SUBSCRIPTION)


def recover(central: Settings, sites: list[Settings], since: datetime, timeout: float = 300) -> Recovery:
    """Bring every site linked to a restored central back: the outbox's subscription, then each site
    resynced with its readings backfilled from `since` (the time central was restored to, or earlier),
    then waits up to `timeout` s for every new subscription's first copy. A site that fails (unreachable)
    is reported in `failed` and the others go on; run again for it."""
    if since.tzinfo is None:
        raise UserError("--since needs a timezone, e.g. 2026-11-29T05:20:00+00:00")
    known, new = _check_sites(central, sites)
    report = Recovery(central=recover_outbox(central))
    fresh = {s.site.id for s in new}
    for site in [*known, *new]:
        site_id = site.site.id
        try:
            if site_id in fresh:
                report.sites[site_id] = _relink(site, central)
            else:
                report.sites[site_id] = [*_forget_lost_commands_slot(site, central),
                                         *resync(site, central, backfill_from=since - RESYNC_OVERLAP)]
        except (psycopg.Error, UserError) as exc:
            report.failed[site_id] = str(exc).strip().splitlines()[0]
    for site in [*known, *new]:
        if site.site.id in report.failed:
            continue
        try:
            poll_until(lambda site=site: _synced(site, central), timeout, interval=0.2,
                       what=f"site {site.site.id}'s subscriptions in sync")
        except (TimeoutError, psycopg.Error) as exc:
            report.failed[site.site.id] = str(exc).strip().splitlines()[0]
    return report

