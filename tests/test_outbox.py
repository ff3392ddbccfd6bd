"""Central sends to its sites from an outbox (issue 19): central keeps one WAL sender whatever the number
of sites, each site's sender lives on the outbox, and a command still reaches its site only, once.
Throwaway clusters (central, outbox, two sites), TLS 1.3 with client certificates, as `site link` makes
them."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bacpipes.commands import Command, insert_command
from bacpipes.db import connect
from bacpipes.replication import (
    COMMANDS_SUBSCRIPTION,
    OUTBOUND,
    commands_publication,
    link,
    old_subscriptions,
    resync,
    site_subscription,
)
from bacpipes.settings import Settings
from tests.replication_harness import (
    SITES,
    Deployment,
    certificate_dir,
    classic,
    insert_readings,
    totals,
    wait_synced,
    wait_until,
)
from tests.test_replication import bacpipes, write_config


@pytest.fixture(scope="module")
def deployment() -> Iterator[Deployment]:
    with certificate_dir() as directory:
        d = Deployment(directory, SITES, outbox=True)
        try:
            yield d
        finally:
            d.close()


def senders(settings: Settings) -> list[str]:
    """The slot each WAL sender of the server streams from."""
    with connect(settings.database.dsn) as conn:
        return [r[0] for r in conn.execute(
            "SELECT s.slot_name FROM pg_stat_replication r"
            " JOIN pg_replication_slots s ON s.active_pid = r.pid ORDER BY 1").fetchall()]


def command_on_central(central: Settings, site_id: str, value: float) -> uuid.UUID:
    with connect(central.database.dsn) as conn:
        command = insert_command(conn, Command(site_id=site_id, point_id=1, value=value, priority=8,
                                               source="central", created_by="test"))
        conn.commit()
    return command


def deployment_on_central(central: Settings, site_id: str) -> uuid.UUID:
    with connect(central.database.dsn) as conn:
        row = conn.execute(
            "INSERT INTO model_deployments (site_id, name, version, mode, sha256, onnx, created_by)"
            " VALUES (%s, 'setpoint', 'v1', 'shadow', 'x', '\\x00', 'test') RETURNING id", (site_id,)
        ).fetchone()
        conn.commit()
    return row[0]


def rows(settings: Settings, query: str, *params: object) -> list[tuple]:
    with connect(settings.database.dsn) as conn:
        return conn.execute(query, params).fetchall()


def arrives(settings: Settings, command: uuid.UUID) -> None:
    wait_until(lambda: rows(settings, "SELECT 1 FROM write_commands WHERE id = %s", command), 30,
               f"command {command} at {settings.site.id}")


def test_a_site_linked_to_central_moves_to_the_outbox_and_keeps_what_it_had(deployment: Deployment) -> None:
    central, a = deployment.central, deployment.sites["site-a"]
    link(a, classic(central))
    wait_synced(deployment, "site-a")
    before = command_on_central(central, "site-a", 21.0)
    model = deployment_on_central(central, "site-a")
    arrives(a, before)
    assert senders(central) == sorted([OUTBOUND, commands_publication("site-a")])

    steps = link(a, central)
    assert any("now takes what central sends it from" in s for s in steps), steps
    assert f"dropped publication {commands_publication('site-a')}" in steps
    wait_synced(deployment, "site-a")
    after = command_on_central(central, "site-a", 22.0)
    arrives(a, after)
    # copied again from the outbox, kept once (sql/021, sql/025): no duplicate key stopped the sync
    assert rows(a, "SELECT count(*) FROM write_commands WHERE id = %s", before) == [(1,)]
    assert rows(a, "SELECT count(*) FROM model_deployments WHERE id = %s", model) == [(1,)]
    assert senders(central) == [OUTBOUND]


def test_central_keeps_one_sender_and_each_command_reaches_its_site_once(deployment: Deployment) -> None:
    central, a, b = deployment.central, deployment.sites["site-a"], deployment.sites["site-b"]
    link(a, central)
    link(b, central)
    wait_synced(deployment, "site-b")
    assert deployment.outbox is not None
    assert senders(central) == [OUTBOUND]  # not one per site: central's WAL is decoded once
    assert senders(deployment.outbox) == sorted(commands_publication(s) for s in SITES)

    for_b = command_on_central(central, "site-b", 23.5)
    arrives(b, for_b)
    assert rows(b, "SELECT arrived FROM write_commands WHERE id = %s", for_b) == [("replication",)]
    assert not rows(a, "SELECT 1 FROM write_commands WHERE id = %s", for_b)

    with connect(b.database.dsn) as conn:  # made on the site: central gets it, the outbox never does
        made_at_b = insert_command(conn, Command(site_id="site-b", point_id=2, value=19.0, priority=8,
                                                 source="ui", created_by="operator"))
        conn.execute("INSERT INTO command_events (command_id, site_id, status, detail)"
                     " VALUES (%s, 'site-b', 'completed', 'test')", (for_b,))
        conn.commit()
    arrives(central, made_at_b)
    wait_until(lambda: rows(central, "SELECT 1 FROM command_events WHERE command_id = %s", for_b), 30,
               "the site's event on central")
    last = command_on_central(central, "site-b", 24.0)  # after it: the outbox has applied past it
    arrives(b, last)
    assert not rows(deployment.outbox, "SELECT 1 FROM write_commands WHERE id = %s", made_at_b)
    assert rows(b, "SELECT count(*) FROM write_commands WHERE id = %s", made_at_b) == [(1,)]


def test_resync_subscribes_afresh_when_the_commands_slot_is_gone(deployment: Deployment) -> None:
    central, a = deployment.central, deployment.sites["site-a"]
    link(a, central)
    assert deployment.outbox is not None
    slot = commands_publication("site-a")
    with connect(a.database.dsn, autocommit=True) as conn:
        conn.execute(f"ALTER SUBSCRIPTION {COMMANDS_SUBSCRIPTION} DISABLE")
    with connect(deployment.outbox.database.dsn, autocommit=True) as conn:
        wait_until(lambda: not conn.execute("SELECT active FROM pg_replication_slots WHERE slot_name = %s",
                                            (slot,)).fetchone()[0], 30, "the slot to be released")
        conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
    missed = command_on_central(central, "site-a", 20.5)

    steps = resync(a, central)
    assert "the site's commands slot was missing: subscribing afresh" in steps, steps
    arrives(a, missed)
    assert rows(a, "SELECT count(*) FROM write_commands WHERE id = %s", missed) == [(1,)]


def test_a_link_with_two_subscriptions_on_central_becomes_one(deployment: Deployment) -> None:
    """Links made before one subscription per site had two (readings, meta): the next link resyncs them."""
    central, b = deployment.central, deployment.sites["site-b"]
    link(b, central)
    wait_synced(deployment, "site-b")
    with connect(central.database.dsn, autocommit=True) as conn:  # put the old pair back by hand
        conninfo = conn.execute("SELECT subconninfo FROM pg_subscription WHERE subname = %s",
                                (site_subscription("site-b"),)).fetchone()[0]
    unlink_subscription(central, site_subscription("site-b"))
    for name, publication in zip(old_subscriptions("site-b"), ("bacpipes_readings", "bacpipes_meta"),
                                 strict=True):
        with connect(central.database.dsn, autocommit=True) as conn:
            conn.execute(f"CREATE SUBSCRIPTION {name} CONNECTION '{conninfo}' PUBLICATION {publication}"
                         " WITH (copy_data = false)")
            conn.execute("UPDATE site SET readings_subscription = %s WHERE site_id = 'site-b'"
                         if "readings" in name else
                         "UPDATE site SET meta_subscription = %s WHERE site_id = 'site-b'", (name,))
    insert_readings(b.database.dsn, "site-b", datetime.now(UTC), 200)
    wait_until(lambda: totals(central.database.dsn, "site-b")[0] >= 200, 30, "readings on the old pair")

    steps = link(b, central)
    assert f"created subscription {site_subscription('site-b')}" in steps, steps
    with connect(central.database.dsn) as conn:
        names = [r[0] for r in conn.execute(
            "SELECT subname FROM pg_subscription WHERE subname LIKE 'bacpipes_site_b%' ORDER BY 1")]
    assert names == [site_subscription("site-b")]
    wait_synced(deployment, "site-b")
    insert_readings(b.database.dsn, "site-b", datetime.now(UTC) + timedelta(minutes=5), 300)
    wait_until(lambda: totals(central.database.dsn, "site-b") == totals(b.database.dsn, "site-b"), 30,
               "every reading of site-b on central, once")


def unlink_subscription(settings: Settings, name: str) -> None:
    with connect(settings.database.dsn, autocommit=True) as conn:
        conn.execute(f"DROP SUBSCRIPTION {name}")


def test_central_status_counts_the_room_on_central_and_its_outbox(deployment: Deployment, tmp_path: Path
                                                                  ) -> None:
    """tls_cluster's 10 WAL senders and slots: the outbox (a sender per site) has room for 8 sites, and
    central (one sender, the outbox's) is held by its 16 replication workers, 2 kept for table syncs."""
    for site_id in SITES:
        link(deployment.sites[site_id], deployment.central)
        wait_synced(deployment, site_id)
    conf = write_config(tmp_path / "central.toml", deployment.central)
    with conf.open("a") as f:
        f.write(f"[central]\noutbox_dsn = '{deployment.central.central.outbox_dsn}'\n")
    status = bacpipes("central", "status", "--config", conf)
    assert "central: room for 8 site(s) as it runs now; 2 linked" in status.stdout, status.stdout
    assert "outbox: room for 8 site(s) as it runs now; 2 linked" in status.stdout, status.stdout
