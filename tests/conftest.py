"""Fixtures over real services: a throwaway PostgreSQL database per test, a Mosquitto broker the
test controls, and the virtual building on loopback."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# OpenBLAS's threads spin while they wait: on 2 cores they take the CPU from the simulators and agents the
# tests run beside a fit (measured: a baseline fit 7x slower under load). One thread, for this process and
# every child it starts; set before numpy is first imported.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from bacpipes.cli import prefect_environment
from bacpipes.db import migrate
from bacpipes.settings import Settings, load_settings
from tests.brokers import MosquittoBroker
from tests.pgcluster import server_user_folder

# the tests' Prefect runs as the CLI's does: never calling home, and time for its temporary server to start
prefect_environment(os.environ)

ADMIN_DSN = os.environ.get("BACPIPES_TEST_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (`./dev test -n 3`), a file's tests all run in one worker: they
    share the file's BACnet addresses (each file has a block of its own, e.g. 127.0.0.40-44 for
    test_edge) and its module-scoped buildings, which two workers would bind twice (bacpypes3 sets
    SO_REUSEPORT, so the second bind succeeds and the answers go to either). `-n N` alone means
    `--dist load`, one test at a time to any worker: made `loadfile` here."""
    if getattr(config.option, "dist", "no") not in ("no", "loadfile"):
        config.option.dist = "loadfile"


@contextmanager
def fresh_database() -> Iterator[str]:
    """A fresh, migrated database, dropped afterwards."""
    name = f"bacpipes_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    dsn = make_conninfo(ADMIN_DSN, dbname=name)
    try:
        migrate(dsn)
        yield dsn
    finally:
        with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pitr_dir() -> Iterator[Path]:
    """A folder outside pytest's tmp_path, which the server's user cannot reach when we are root
    (pgBackRest's repository and configuration, a restored data directory)."""
    with server_user_folder("bacpipes-pitr-") as directory:
        yield directory


@pytest.fixture
def db_dsn() -> Iterator[str]:
    with fresh_database() as dsn:
        yield dsn


@pytest.fixture(scope="session")
def prefect() -> Iterator[None]:
    """One temporary Prefect server for every flow test (it takes ~10 s to start)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=None):  # None: the setting above
        yield


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    b = MosquittoBroker(tmp_path / "broker")
    b.start()
    yield b
    b.stop()


def make_settings(db_dsn: str, mqtt_url: str, tmp_path: Path, **sections: dict) -> Settings:
    """Settings for a test: its own database, broker and spool; everything else from the defaults."""
    overrides: dict = {
        "database": {"dsn": db_dsn},
        "mqtt": {"url": mqtt_url, "client_id": f"edge-{uuid.uuid4().hex[:8]}", "health_interval_s": 2},
        "spool": {"path": str(tmp_path / "spool.sqlite")},
        "bacnet": {"apdu_timeout_ms": 500, "apdu_retries": 0},
        # the virtual building's trend logs hold made-up history: tests that want it say so (test_trendlog)
        "discovery": {"timeout_s": 1.0, "import_history": False},
    }
    for key, value in sections.items():
        overrides[key] = {**overrides.get(key, {}), **value}
    return load_settings(None, **overrides)
