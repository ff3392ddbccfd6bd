"""Capacity you can see (issue 19): `central init --sites N` sizes central's replication settings, `site
link` refuses a site central cannot take, `central status` shows a stuck initial sync, and central's slots
are bounded and alert before they are lost.

One deployment (central + two sites) for the module, and the tests are its story in order: central is
sized for one site, takes one, refuses the second, runs out of workers, is resized, loses a slot. Central
runs without the harness's fixed `-c` replication limits, so ALTER SYSTEM (what `central init` writes)
takes effect at its restarts.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from bacpipes import certs
from bacpipes.capacity import SETTINGS, needs, refuse_if_full, sync_states
from bacpipes.errors import UserError
from bacpipes.replication import CENTRAL_ROLE, commands_publication, link, site_role, site_subscription
from central.alerts import SLOT_WARN_FRACTION, central_slots, judge_central_slots, run_alerts
from tests.pgcluster import PgCluster
from tests.replication_harness import Deployment, certificate_dir, linked, wait_synced, wait_until
from tests.test_replication import bacpipes, write_config

SMALL = {"max_logical_replication_workers": 2, "max_worker_processes": 4, "max_replication_slots": 2,
         "max_wal_senders": 2}  # a central too small for even one site


class SizedCentral(Deployment):
    """The harness's deployment, but central's replication limits come from its configuration files."""

    def _cluster(self, directory: Path, name: str, users: list[str],
                 settings: dict[str, str] | None = None) -> PgCluster:
        if name != "central":
            return super()._cluster(directory, name, users, settings)
        cluster = PgCluster(settings={"wal_level": "logical", "wal_sender_timeout": "10s",
                                      "wal_receiver_status_interval": "1s",
                                      **certs.server_settings(directory, name), **(settings or {})})
        cluster.init()
        (cluster.data / "pg_hba.conf").write_text(certs.hba_lines(users))
        self.clusters.append(cluster.start())
        return cluster


@pytest.fixture(scope="module")
def deployment() -> Iterator[SizedCentral]:
    with certificate_dir() as directory:
        d = SizedCentral(directory, ("site-a", "site-b"))
        try:
            yield d
        finally:
            d.close()


def central_sql(d: Deployment, query: str, *args: object) -> list[tuple]:
    with psycopg.connect(d.central.database.dsn, autocommit=True) as conn:
        cur = conn.execute(query, args or None)
        return cur.fetchall() if cur.description else []


def set_and_restart(d: Deployment, **values: object) -> None:
    for name, value in values.items():
        central_sql(d, f"ALTER SYSTEM SET {name} = '{value}'")
    d.central_cluster.stop()
    d.central_cluster.start()


def file_settings(d: Deployment) -> dict[str, int]:
    """What postgresql.auto.conf (the last file line of each) sets: the values after a restart."""
    rows = central_sql(d, "SELECT DISTINCT ON (name) name, setting::int FROM pg_file_settings"
                          " WHERE name = ANY(%s) ORDER BY name, seqno DESC", list(SETTINGS))
    return dict(rows)


def running(d: Deployment) -> dict[str, int]:
    query = "SELECT name, setting::int FROM pg_settings WHERE name = ANY(%s)"
    return dict(central_sql(d, query, list(SETTINGS)))


def test_init_sizes_central_for_the_sites_it_plans_for(deployment: SizedCentral, tmp_path: Path) -> None:
    d = deployment
    set_and_restart(d, **SMALL)
    conf = write_config(tmp_path / "central.toml", d.central)
    sized = bacpipes("central", "init", "--config", conf, "--sites", "1")
    assert sized.returncode == 0, sized.stderr
    wanted = needs(1, outbox=False)["central"]
    assert file_settings(d) == wanted  # written, read back from the files the server starts with
    assert running(d) == SMALL  # not yet applied: all four need a restart, and the output says so
    for name in SETTINGS:
        assert f"central {name} = {SMALL[name]}: set to {wanted[name]} for 1 site(s): RESTART" in sized.stdout
    assert "central max_slot_wal_keep_size = 2GB" in sized.stdout
    assert central_sql(d, "SHOW max_slot_wal_keep_size") == [("2GB",)]  # a reload applied it

    d.central_cluster.stop()
    d.central_cluster.start()
    again = bacpipes("central", "init", "--config", conf, "--sites", "1")
    assert again.returncode == 0 and "RESTART" not in again.stdout, again.stdout
    assert running(d) == wanted
    assert f"enough for 1 site(s) (needs {wanted['max_wal_senders']})" in again.stdout
    assert "central: room for 1 site(s) as it runs now; 0 linked" in again.stdout


def test_a_site_more_than_central_can_take_is_refused_and_nothing_is_made(deployment: SizedCentral) -> None:
    d = deployment
    linked(d, "site-a")  # sized for one: the first links and syncs
    refused = (r"central cannot take site 'site-b' as site number 2: central max_logical_replication_workers"
               r" = 3, needs 4.*central init --sites 2")
    with pytest.raises(UserError, match=refused):
        link(d.sites["site-b"], d.central)
    assert central_sql(d, "SELECT site_id FROM site") == [("site-a",)]
    for catalog, column, name in (("pg_subscription", "subname", site_subscription("site-b")),
                                  ("pg_publication", "pubname", commands_publication("site-b")),
                                  ("pg_roles", "rolname", site_role("site-b"))):
        assert central_sql(d, f"SELECT 1 FROM {catalog} WHERE {column} = %s", name) == []
    with psycopg.connect(d.sites["site-b"].database.dsn) as conn:
        made = conn.execute("SELECT (SELECT count(*) FROM pg_publication), (SELECT count(*) FROM"
                            " pg_subscription), (SELECT count(*) FROM pg_roles WHERE rolname = %s)",
                            (CENTRAL_ROLE,)).fetchone()
    assert made == (0, 0, 0)
    with psycopg.connect(d.central.database.dsn, autocommit=True) as conn:
        refuse_if_full(conn, None, "site-a")  # a re-run of a linked site's link is never refused


def test_status_shows_a_sync_stuck_for_want_of_workers(deployment: SizedCentral, tmp_path: Path) -> None:
    d = deployment
    conf = write_config(tmp_path / "central.toml", d.central)
    # let the link through (no table syncs counted), then give central exactly its two apply workers
    central_sql(d, "ALTER SYSTEM SET max_sync_workers_per_subscription = 0")
    central_sql(d, "SELECT pg_reload_conf()")
    link(d.sites["site-b"], d.central)
    central_sql(d, "ALTER SYSTEM RESET max_sync_workers_per_subscription")
    log, logged = d.central_cluster.log, len(d.central_cluster.log.read_bytes())
    set_and_restart(d, max_logical_replication_workers=2)
    wait_until(lambda: b"out of logical replication worker slots" in log.read_bytes()[logged:], 30,
               "central to run out of workers")
    with psycopg.connect(d.central.database.dsn, autocommit=True) as conn:
        stuck = {s.subscription: s for s in sync_states(conn)}
        assert list(stuck) == [site_subscription("site-b")]
        assert stuck[site_subscription("site-b")].workers == 0
        wait_until(lambda: sync_states(conn)[0].stuck(300) is not None, 30,  # past its start-up grace
                   "the sync to count as stuck")
    status = bacpipes("central", "status", "--config", conf)
    assert status.returncode == 1
    assert f"ALERT: initial sync of {site_subscription('site-b')} stuck:" in status.stdout
    assert "no table-sync worker runs" in status.stdout

    sized = bacpipes("central", "init", "--config", conf, "--sites", "2")
    assert "max_logical_replication_workers = 2: set to 4 for 2 site(s): RESTART" in sized.stdout
    d.central_cluster.stop()
    d.central_cluster.start()
    wait_synced(d, "site-b")
    healthy = bacpipes("central", "status", "--config", conf)
    assert "stuck" not in healthy.stdout and "room for 2 site(s) as it runs now; 2 linked" in healthy.stdout


def next_segment(d: Deployment) -> None:
    """Central's WAL moves on by a segment: a message, then a switch."""
    central_sql(d, "SELECT pg_logical_emit_message(false, 'capacity-test', 'x'), pg_switch_wal()")


def safe_wal_size(d: Deployment, slot: str) -> int:
    return central_sql(d, "SELECT safe_wal_size FROM pg_replication_slots WHERE slot_name = %s", slot)[0][0]


def test_a_central_slot_alerts_before_and_when_it_is_lost(deployment: SizedCentral, tmp_path: Path) -> None:
    d = deployment
    slot = commands_publication("site-a")  # site-a's subscription to central holds this slot on central
    with psycopg.connect(d.sites["site-a"].database.dsn, autocommit=True) as site:
        site.execute("ALTER SUBSCRIPTION bacpipes_commands DISABLE")  # the site goes away
    wait_until(lambda: central_sql(d, "SELECT active FROM pg_replication_slots WHERE slot_name = %s", slot)
               == [(False,)], 30, "the site's slot on central to be released")
    central_sql(d, "ALTER SYSTEM SET max_slot_wal_keep_size = '64MB'")
    central_sql(d, "SELECT pg_reload_conf()")
    while safe_wal_size(d, slot) >= SLOT_WARN_FRACTION * 64 * 2**20:  # 3 segments of 16 MB at most
        next_segment(d)
    assert safe_wal_size(d, slot) > 0  # not lost yet: the alert comes before
    central_sql(d, "CHECKPOINT")  # logs the running transactions: site-b's connected slot moves on past them
    half = SLOT_WARN_FRACTION * 64 * 2**20
    wait_until(lambda: safe_wal_size(d, commands_publication("site-b")) >= half, 30,
               "site-b's slot to follow central's WAL")
    with psycopg.connect(d.central.database.dsn) as conn:
        verdicts = {v.site_id: v for v in central_slots(conn, d.central)}
    early = verdicts["site-a"]
    assert early.severity == "warning" and f"central slot {slot} can keep" in (early.message or "")
    assert verdicts["site-b"].message is None and verdicts[None].message is None

    central_sql(d, "ALTER SYSTEM SET max_slot_wal_keep_size = '16MB'")  # site-a's slot is 3 segments back
    central_sql(d, "SELECT pg_reload_conf()")
    central_sql(d, "CHECKPOINT")
    status = central_sql(d, "SELECT wal_status FROM pg_replication_slots WHERE slot_name = %s", slot)
    assert status in ([("lost",)], [("unreserved",)])
    alerts = d.central.model_copy(update={"alerts": d.central.alerts.model_copy(
        update={"state_path": str(tmp_path / "alerts-state.json")})})
    run = run_alerts(alerts, central=True)
    lost = [a for a in run.raised if a.source == "alerts:central_slots"]
    assert [(a.site_id, a.severity) for a in lost] == [("site-a", "critical")]
    assert f"central slot {slot} is {status[0][0]}" in lost[0].message


def test_the_slot_judgement_names_each_server_and_site() -> None:
    """The outbox's slots are judged like central's; a slot of no site (the outbox's own) is central-wide."""
    mb = 2**20
    verdicts = {v.site_id: v for v in judge_central_slots(["site-a", "site-b"], [
        ("outbox", commands_publication("site-a"), "reserved", int(SLOT_WARN_FRACTION * 100 * mb) - 1, 100),
        ("outbox", commands_publication("site-b"), "reserved", 90 * mb, 100),
        ("central", "bacpipes_outbound", "lost", None, 100),
    ])}
    assert verdicts["site-a"].severity == "warning" and "outbox slot" in (verdicts["site-a"].message or "")
    assert verdicts["site-b"].message is None
    assert verdicts[None].severity == "critical"
    assert "bacpipes_outbound is lost" in (verdicts[None].message or "")
