"""Backups with the real pg_dump / pg_restore: a dump restores into a new database with the same rows
(readings across daily partitions, points, commands), and pruning deletes only this site's old dumps."""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from bacpipes.partitions import create_partition, list_partitions
from bacpipes.settings import Settings, load_settings
from central.backups import backup, pg_binary, prune, restore
from flows.ops import backup_flow
from tests.conftest import ADMIN_DSN

TABLES = {
    "device": "site_id, device_id",
    "point": "site_id, point_id",
    "point_state": "site_id, point_id",
    "sensor_readings": "site_id, point_id, time",
    "write_commands": "id",
    "command_events": "command_id, status",
    "schema_migrations": "name",
}


@contextmanager
def empty_database() -> Iterator[str]:
    """A database that does not exist yet (restore creates it), dropped afterwards."""
    name = f"bacpipes_restore_{uuid.uuid4().hex[:12]}"
    try:
        yield make_conninfo(ADMIN_DSN, dbname=name)
    finally:
        with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def settings_for(dsn: str, directory: Path, keep_days: int = 7) -> Settings:
    return load_settings(None, site={"id": "Site-1"}, database={"dsn": dsn},
                         backups={"dir": str(directory), "keep_days": keep_days})


def fill(dsn: str) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    with psycopg.connect(dsn, autocommit=True) as conn:
        for days in range(3):
            create_partition(conn, (now - timedelta(days=days)).date())
        conn.execute("INSERT INTO device (site_id, device_id, address, name) VALUES ('Site-1', 1001, "
                     "'127.0.0.10', 'AHU-1')")
        point = conn.execute(
            "INSERT INTO point (site_id, device_id, object_type, object_instance, object_name, writable,"
            " user_tags, min_value, max_value) VALUES ('Site-1', 1001, 'analog-value', 1, 'ZN-SP', true,"
            " '{\"zone\": \"1\"}', 18, 28) RETURNING point_id").fetchone()[0]
        conn.execute("INSERT INTO sensor_readings (time, site_id, point_id, value, quality)"
                     " SELECT %s - g * interval '15 minutes', 'Site-1', %s, 20 + g / 7.0, 'good'"
                     " FROM generate_series(0, 250) g", (now, point))
        conn.execute("INSERT INTO point_state (site_id, point_id, value, quality, time, last_poll)"
                     " VALUES ('Site-1', %s, 20, 'good', %s, %s)", (point, now, now))
        command = conn.execute(
            "INSERT INTO write_commands (site_id, point_id, command_type, value, priority, created_by,"
            " source, reason) VALUES ('Site-1', %s, 'write_value', 23.5, 8, 'ops', 'cli', 'test')"
            " RETURNING id",
            (point,)).fetchone()[0]
        conn.execute("INSERT INTO command_events (command_id, site_id, status, value_read, priority_array)"
                     " VALUES (%s, 'Site-1', 'completed', 23.5, '[null, 23.5]')", (command,))


def contents(dsn: str) -> dict[str, list[tuple]]:
    with psycopg.connect(dsn) as conn:
        out = {t: conn.execute(f"SELECT * FROM {t} ORDER BY {key}").fetchall() for t, key in TABLES.items()}
        out["partitions"] = [(p.name, p.lower, p.upper) for p in list_partitions(conn)]
        out["per_partition"] = conn.execute(
            "SELECT tableoid::regclass::text, count(*) FROM sensor_readings GROUP BY 1 ORDER BY 1").fetchall()
    return out


def test_dump_restores_the_same_rows(db_dsn: str, tmp_path: Path) -> None:
    fill(db_dsn)
    made = backup(settings_for(db_dsn, tmp_path / "backups"))
    assert re.fullmatch(r"site_1-\d{8}T\d{6}Z\.dump", made.path.name)  # the site id as a file name
    assert made.path.parent == tmp_path / "backups"
    assert made.size == made.path.stat().st_size > 0 and made.deleted == []
    assert list((tmp_path / "backups").iterdir()) == [made.path]  # no partial file left behind
    before = contents(db_dsn)
    assert len(before["sensor_readings"]) == 251 and len(before["per_partition"]) >= 3
    with empty_database() as target:
        restore(made.path, target)
        assert contents(target) == before
        with pytest.raises(ValueError, match="not empty"):  # never over a live database
            restore(made.path, target)


def test_prune_deletes_only_this_sites_old_dumps(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    names = {"site_1-20260101T000000Z.dump": 8, "site_1-20260105T000000Z.dump": 6,
             "other-20260101T000000Z.dump": 30, "site_1-notes.txt": 30}
    for name, days in names.items():
        path = tmp_path / name
        path.write_bytes(b"x")
        old = (now - timedelta(days=days)).timestamp()
        os.utime(path, (old, old))
    deleted = prune(tmp_path, "Site-1", keep_days=7, now=now)
    assert [p.name for p in deleted] == ["site_1-20260101T000000Z.dump"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(set(names) - {"site_1-20260101T000000Z.dump"})


def test_backup_flow_dumps_and_prunes(prefect, db_dsn: str, tmp_path: Path) -> None:
    directory = tmp_path / "backups"
    directory.mkdir()
    stale = directory / "site_1-20200101T000000Z.dump"
    stale.write_bytes(b"old")
    os.utime(stale, (0, 0))
    conf = tmp_path / "site.toml"
    conf.write_text(f'[site]\nid = "Site-1"\n[database]\ndsn = "{db_dsn}"\n'
                    f'[backups]\ndir = "{directory}"\nkeep_days = 2\n')
    result = backup_flow(str(conf))
    assert Path(result["path"]).exists() and result["size"] > 0
    assert result["deleted"] == [str(stale)] and not stale.exists()


def test_pg_binaries_are_found() -> None:
    for name in ("pg_dump", "pg_restore"):
        assert os.access(pg_binary(name), os.X_OK)
