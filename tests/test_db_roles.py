"""Least privilege in the database (sql/018_roles.sql): each process's role can do its work and nothing
else, the login roles of `bacpipes db roles`, and `bacpipes certs` printing deploy/pg_hba.conf's policy."""

from __future__ import annotations

import contextlib
import io
import stat
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from bacpipes.cli import main
from bacpipes.db import LOGIN_ROLES, migrate, password_variable
from bacpipes.partitions import create_partition, drop_partition, partition_name

ROOT = Path(__file__).resolve().parent.parent
SITE = "roles-site"
NOW = datetime(2026, 3, 1, 12, tzinfo=UTC)


@pytest.fixture
def conn(db_dsn: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(db_dsn, autocommit=True) as c:
        c.execute("INSERT INTO device (site_id, device_id, address) VALUES (%s, 1, '127.0.0.2')", (SITE,))
        c.execute("INSERT INTO point (site_id, point_id, device_id, object_type, object_instance, writable)"
                  " VALUES (%s, 1, 1, 'analog-value', 1, true)", (SITE,))
        c.execute("INSERT INTO app_users (username, password_hash, role)"
                  " VALUES ('op', 'scrypt$x', 'operator')")
        yield c


@contextlib.contextmanager
def as_role(conn: psycopg.Connection, role: str) -> Iterator[psycopg.Connection]:
    conn.execute(f"SET ROLE {role}")
    try:
        yield conn
    finally:
        conn.execute("RESET ROLE")


def refused(conn: psycopg.Connection, statement: str, params: tuple = ()) -> None:
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute(statement, params)


COMMAND = ("INSERT INTO write_commands (site_id, point_id, command_type, value, priority, created_by, source)"
           " VALUES (%s, 1, 'write_value', 21.5, 8, 'someone', 'ui')")


def test_ingest_moves_readings_and_nothing_else(conn: psycopg.Connection) -> None:
    with as_role(conn, "bacpipes_ingest") as c:
        c.execute("CREATE TEMP TABLE stage (time timestamptz, point_id bigint, value double precision)")
        c.execute("INSERT INTO stage VALUES (%s, 1, 20.5)", (NOW,))
        moved = c.execute("INSERT INTO sensor_readings (time, site_id, point_id, value, quality)"
                          " SELECT time, %s, point_id, value, 'good' FROM stage ON CONFLICT DO NOTHING",
                          (SITE,)).rowcount
        c.execute("INSERT INTO point_state (site_id, point_id, value, time) VALUES (%s, 1, 20.5, %s)"
                  " ON CONFLICT (site_id, point_id) DO UPDATE SET value = EXCLUDED.value", (SITE, NOW))
        c.execute("INSERT INTO ingest_rejects (site_id, topic, payload, reason) VALUES (%s, 't', 'x', 'bad')",
                  (SITE,))
        assert moved == 1
        refused(c, COMMAND, (SITE,))
        refused(c, "SELECT password_hash FROM app_users")
        refused(c, "DELETE FROM sensor_readings")
    assert conn.execute("SELECT value FROM point_state").fetchone() == (20.5,)


def test_viewer_reads_but_cannot_command(conn: psycopg.Connection) -> None:
    with as_role(conn, "bacpipes_app_viewer") as c:
        assert c.execute("SELECT count(*) FROM point").fetchone() == (1,)
        assert c.execute("SELECT count(*) FROM write_command_status").fetchone() == (0,)
        c.execute("INSERT INTO app_login_attempts (username, address, outcome)"
                  " VALUES ('op', 'local', 'failed')")
        refused(c, COMMAND, (SITE,))
        refused(c, "INSERT INTO control_authority (site_id, mode, granted_by) VALUES (%s, 'edge', 'v')",
                (SITE,))
        refused(c, "UPDATE point SET publish = false")
        refused(c, "UPDATE app_users SET role = 'operator'")


def test_operator_commands_but_cannot_touch_readings_or_users(conn: psycopg.Connection) -> None:
    with as_role(conn, "bacpipes_app_operator") as c:
        c.execute(COMMAND, (SITE,))
        c.execute("INSERT INTO control_authority (site_id, mode, granted_by) VALUES (%s, 'edge', 'op')",
                  (SITE,))
        c.execute("UPDATE point SET publish = false, min_value = 10 WHERE point_id = 1")
        refused(c, "UPDATE point SET object_type = 'analog-input'")  # discovery's column
        refused(c, "INSERT INTO sensor_readings (time, site_id, point_id, value) VALUES (now(), %s, 1, 1)",
                (SITE,))
        refused(c, "DELETE FROM sensor_readings")
        refused(c, "UPDATE app_users SET password_hash = 'mine'")
        refused(c, "INSERT INTO app_users (username, password_hash, role) VALUES ('x', 'y', 'operator')")
        refused(c, "INSERT INTO command_events (command_id, site_id, status) SELECT id, site_id, 'accepted'"
                   " FROM write_commands")
    assert conn.execute("SELECT count(*) FROM write_commands").fetchone() == (1,)


def test_agent_works_but_cannot_alter_schema_or_read_passwords(conn: psycopg.Connection) -> None:
    with as_role(conn, "bacpipes_agent") as c:
        c.execute("UPDATE device SET last_seen = now()")
        c.execute("INSERT INTO point_state (site_id, point_id, value) VALUES (%s, 1, 1)", (SITE,))
        command = c.execute(COMMAND.replace("'ui'", "'mqtt'") + " RETURNING id", (SITE,)).fetchone()[0]
        c.execute("INSERT INTO command_events (command_id, site_id, status) VALUES (%s, %s, 'accepted')",
                  (command, SITE))
        c.execute("INSERT INTO site_heartbeat (site_id, at, wal_lsn) VALUES (%s, now(), '0/0')", (SITE,))
        refused(c, "SELECT password_hash FROM app_users")
        refused(c, "DROP TABLE write_commands")
        refused(c, "ALTER TABLE point ADD COLUMN evil text")
        refused(c, "DELETE FROM write_commands")
        refused(c, "INSERT INTO control_authority (site_id, mode, until, granted_by)"
                   " VALUES (%s, 'remote', now() + interval '1 day', 'me')", (SITE,))
        refused(c, "INSERT INTO model_deployments (site_id) VALUES ('x')")


def test_partitions_created_by_anyone_are_dropped_by_the_flows(conn: psycopg.Connection) -> None:
    day = date(2020, 1, 2)
    with as_role(conn, "bacpipes_agent") as c:
        create_partition(c, day)  # the trend-log import's old days
    name = partition_name("sensor_readings", day)
    owner = conn.execute("SELECT relowner::regrole::text FROM pg_class WHERE relname = %s",
                         (name,)).fetchone()
    assert owner == ("bacpipes_readings_owner",)
    with as_role(conn, "bacpipes_flows") as c:
        drop_partition(c, "sensor_readings", name)
        refused(c, COMMAND, (SITE,))
        refused(c, "SELECT * FROM app_users")
    assert conn.execute("SELECT to_regclass(%s)", (name,)).fetchone() == (None,)


def test_tables_of_later_migrations_are_covered(db_dsn: str, tmp_path: Path) -> None:
    (tmp_path / "999_later.sql").write_text("CREATE TABLE later_table (x int);")
    migrate(db_dsn, tmp_path)
    with psycopg.connect(db_dsn, autocommit=True) as c, as_role(c, "bacpipes_app_viewer"):
        assert c.execute("SELECT count(*) FROM later_table").fetchone() == (0,)


def test_migration_is_idempotent_when_the_roles_exist(db_dsn: str) -> None:
    with psycopg.connect(db_dsn, autocommit=True) as c:
        c.execute("DELETE FROM schema_migrations WHERE name = '018_roles.sql'")
    assert migrate(db_dsn) == ["018_roles.sql"]


def test_db_roles_creates_login_roles(db_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "site.toml"
    config.write_text(f'[site]\nid = "{SITE}"\n[database]\ndsn = "{db_dsn}"\n')
    monkeypatch.setenv(password_variable("bacpipes_edge"), "edge-secret")
    with contextlib.redirect_stdout(io.StringIO()) as out:
        assert main(["db", "roles", "--config", str(config)]) == 0
    assert "edge-secret" not in out.getvalue()
    env = tmp_path / "db-roles.env"
    assert not env.exists() or stat.S_IMODE(env.stat().st_mode) == 0o600
    with psycopg.connect(db_dsn, autocommit=True) as c:
        for role, groups in LOGIN_ROLES.items():
            row = c.execute("SELECT rolcanlogin, rolsuper FROM pg_roles WHERE rolname = %s",
                            (role,)).fetchone()
            assert row == (True, False)
            member_of = {r[0] for r in c.execute(
                "SELECT b.rolname FROM pg_auth_members m JOIN pg_roles a ON a.oid = m.member"
                " JOIN pg_roles b ON b.oid = m.roleid WHERE a.rolname = %s", (role,))}
            assert member_of == set(groups)
    edge = make_conninfo(db_dsn, user="bacpipes_edge", password="edge-secret")
    with psycopg.connect(edge, autocommit=True) as c:
        refused(c, "SELECT password_hash FROM app_users")
        assert c.execute("SELECT count(*) FROM point").fetchone() == (0,)


def _policy(text: str) -> list[list[str]]:
    return [line.split() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_certs_prints_the_deploy_pg_hba_policy(tmp_path: Path) -> None:
    with contextlib.redirect_stdout(io.StringIO()) as out:
        assert main(["certs", "--out", str(tmp_path / "c"), "--central-host", "central.example",
                     "--site", "s1=site1.example"]) == 0
    printed = [f for f in _policy(out.getvalue()) if f and f[0] in ("local", "host", "hostssl", "hostnossl")]
    deployed = _policy((ROOT / "deploy" / "pg_hba.conf").read_text())
    assert printed == deployed
    assert not any("trust" in line for line in printed)
    assert [f for f in deployed if f[0] == "local"] == [["local", "all", "postgres", "peer"]]

