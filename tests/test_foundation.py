"""Settings, migrations and the CLI's set-up commands, against the real PostgreSQL."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from bacpipes.db import migrate, pending_migrations
from bacpipes.settings import load_settings


def test_settings_have_the_agreed_keys_and_env_overrides(tmp_path, monkeypatch):
    config = tmp_path / "site.toml"
    config.write_text('[site]\nid = "tower-b"\n[mqtt]\nurl = "mqtts://broker.example:8883"\n')
    monkeypatch.setenv("BACPIPES_MQTT__PASSWORD", "from-env")
    monkeypatch.setenv("BACPIPES_POLLING__DEFAULT_INTERVAL_S", "15")
    s = load_settings(config)
    assert (s.site.id, s.site.timezone) == ("tower-b", "Asia/Macau")
    assert s.mqtt.url == "mqtts://broker.example:8883" and s.mqtt.password == "from-env"
    assert s.polling.default_interval_s == 15
    assert s.database.dsn == "postgresql://postgres@127.0.0.1:5432/bacpipes"
    assert (s.bacnet.address, s.bacnet.device_id) == ("127.0.0.100/8:47900", 3001234)
    assert s.discovery.targets == ["127.0.0.10-127.0.0.19"]


def test_bad_settings_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="config file not found"):
        load_settings(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text('[site]\ntimezone = "Mars/Olympus"\n')
    with pytest.raises(ValueError, match="Mars/Olympus"):
        load_settings(bad)


def test_migrations_are_recorded_and_idempotent(db_dsn):
    assert migrate(db_dsn) == []  # the fixture already applied everything
    with psycopg.connect(db_dsn) as conn:
        recorded = [r[0] for r in conn.execute("SELECT name FROM schema_migrations ORDER BY name")]
    assert recorded == [p.name for p in pending_migrations()]


def test_a_reading_for_a_day_without_partition_still_lands(db_dsn):
    with psycopg.connect(db_dsn) as conn:
        conn.execute("INSERT INTO device (site_id, device_id, address) VALUES ('s', 1, '127.0.0.1')")
        conn.execute(
            "INSERT INTO sensor_readings (time, site_id, point_id, value) VALUES (%s, 's', 1, 1.5)",
            (datetime(2031, 2, 3, tzinfo=UTC),),
        )
        where = conn.execute("SELECT tableoid::regclass::text FROM sensor_readings").fetchone()[0]
    assert where == "sensor_readings_default"


def test_cli_db_migrate_creates_the_database(db_dsn, tmp_path):
    params = conninfo_to_dict(db_dsn)
    dsn = f"postgresql://postgres@127.0.0.1:5432/{params['dbname']}_cli"
    config = tmp_path / "site.toml"
    config.write_text(f'[database]\ndsn = "{dsn}"\n')
    try:
        run = [sys.executable, "-m", "bacpipes.cli", "db", "migrate", "--config", str(config)]
        first = subprocess.run(run, capture_output=True, text=True, check=True)
        second = subprocess.run(run, capture_output=True, text=True, check=True)
        assert "created database" in first.stdout and "001_site_core.sql" in first.stdout
        assert "applied 0 migration(s)" in second.stdout
        kept = subprocess.run(
            [*run[:4], "retention", "--config", str(config), "--days", "2"],
            capture_output=True,
            text=True,
            check=True,
        )
        assert "retention 2 d" in kept.stdout
        refused = subprocess.run(
            [*run[:4], "retention", "--config", str(config), "--days", "0"], capture_output=True, text=True
        )
        assert refused.returncode == 2 and "retention must be" in refused.stderr
    finally:
        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{params["dbname"]}_cli" WITH (FORCE)')


def test_cli_reports_a_missing_config_clearly(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "bacpipes.cli", "edge", "discover", "--config", str(tmp_path / "nope.toml")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "config file not found" in result.stderr


def test_cli_reports_an_unreachable_database_clearly(tmp_path):
    config = tmp_path / "site.toml"
    config.write_text('[database]\ndsn = "postgresql://postgres@127.0.0.1:1/nowhere"\n')
    result = subprocess.run(
        [sys.executable, "-m", "bacpipes.cli", "edge", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 3 and "database unavailable" in result.stderr
