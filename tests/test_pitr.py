"""Point-in-time recovery with the real pgBackRest: a throwaway cluster archives its WAL into a repository in
a temp dir; after a full and an incremental backup, rows written, the time noted, more rows and a dropped
table, `bacpipes central restore --to` that time brings back on a fresh cluster exactly the rows up to it."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from bacpipes.cli import main
from bacpipes.cli.servers import PostgresCluster, free_port
from bacpipes.errors import UserError
from central import pitr
from flows.ops import pitr_backup_flow
from tests import runbook
from tests.pgcluster import PgCluster


@pytest.fixture
def archived(pitr_dir: Path) -> Iterator[tuple[PgCluster, pitr.Stanza]]:
    """A running cluster whose every WAL segment goes to the stanza's repository."""
    cluster = PgCluster()
    stanza = pitr.Stanza(name="central", directory=pitr_dir / "conf", repo=pitr_dir / "repo",
                         pg_data=cluster.data, pg_port=cluster.port, pg_socket=cluster.root)
    cluster.settings.update(stanza.server_settings())
    with cluster:
        yield cluster, stanza


def settings_file(folder: Path, cluster: PgCluster, stanza: pitr.Stanza) -> Path:
    path = folder / "central.toml"
    path.write_text(f'[database]\ndsn = "{cluster.dsn()}"\n\n[backups]\n'
                    f'pitr_dir = "{stanza.directory}"\npitr_repo = "{stanza.repo}"\n'
                    f'pitr_pg_data = "{stanza.pg_data}"\npitr_pg_socket = "{stanza.pg_socket}"\n')
    return path


def count(dsn: str) -> tuple[int, int, int]:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT count(*), min(id), max(id) FROM readings").fetchone()  # type: ignore[return-value]


def test_restore_to_a_noted_time_brings_back_exactly_its_rows(
    prefect: None, archived: tuple[PgCluster, pitr.Stanza], pitr_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster, stanza = archived
    config = settings_file(pitr_dir, cluster, stanza)
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        conn.execute("CREATE TABLE readings (id int PRIMARY KEY, value float8)")
        conn.execute("INSERT INTO readings SELECT i, i * 0.5 FROM generate_series(1, 1000) i")
        assert main(runbook.command("central backup", {"central.toml": config})) == 0
        conn.execute("INSERT INTO readings SELECT i, i * 0.5 FROM generate_series(1001, 2000) i")
        assert pitr_backup_flow(str(config), "incr")["kind"] == "incr"  # the scheduled flow's way
        conn.execute("INSERT INTO readings SELECT i, i * 0.5 FROM generate_series(2001, 2500) i")
        noted = conn.execute("SELECT clock_timestamp()").fetchone()[0]  # type: ignore[index]
        conn.execute("INSERT INTO readings SELECT i, i * 0.5 FROM generate_series(2501, 3000) i")
        conn.execute("DROP TABLE readings")
    pitr.check(stanza)  # the WAL with the drop is in the repository (recovery must see past the target)

    backups = pitr.info(stanza)
    assert [b.kind for b in backups] == ["full", "incr"]
    assert 0 < backups[1].repo_size < backups[0].repo_size
    printed = capsys.readouterr().out
    assert "full backup" in printed

    for wrong, refusal in ((backups[0].started - timedelta(seconds=1), "before the oldest backup"),
                           (noted.replace(tzinfo=None), "needs a timezone"),
                           (noted + timedelta(hours=1), "in the future")):
        with pytest.raises(UserError, match=refusal):
            pitr.restore(stanza, wrong, pitr_dir / "refused")
    with pytest.raises(UserError, match="not empty"):
        pitr.restore(stanza, noted, cluster.data)

    restored = pitr_dir / "restored"
    port = free_port()
    try:
        restore = runbook.command("central restore", {"TIME": noted.isoformat(), "DIR": restored,
                                                      "PORT": port, "central.toml": config})
        assert main([*restore, "--timeout", "120"]) == 0
        dsn = PostgresCluster(restored, port=port).dsn()
        assert count(dsn) == (2500, 1, 2500)  # the table back, every row up to the time, none after
        with psycopg.connect(dsn, autocommit=True) as conn:  # promoted: it takes writes
            conn.execute("INSERT INTO readings VALUES (2501, 0)")
        assert f"running on postgresql://postgres@127.0.0.1:{port}/postgres" in capsys.readouterr().out
    finally:
        PostgresCluster(restored, port=port).cleanup()


def test_backup_and_restore_refuse_what_they_cannot_do_right(pitr_dir: Path) -> None:
    """A server that does not archive cannot be backed up (the message says what to set); a repository
    without a backup has nothing to restore."""
    with PgCluster() as cluster:
        stanza = pitr.Stanza(name="central", directory=pitr_dir / "conf", repo=pitr_dir / "repo",
                             pg_data=cluster.data, pg_port=cluster.port, pg_socket=cluster.root)
        with pytest.raises(pitr.PitrError, match="archive_command = 'pgbackrest --config="):
            pitr.backup(stanza, "full")
        with pytest.raises(UserError, match="no backup yet"):
            pitr.restore(stanza, datetime.now().astimezone(), pitr_dir / "a")
