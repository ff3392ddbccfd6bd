"""Central's fleet flows (flows.fleet) on a local Dask cluster: the same results and database effects as the
serial run, the sites' tasks on the cluster's workers, a failing site reported without stopping the others.

The history is benchmarks.bench_flows_dask's (one backfilled site copied to the others with their meters
offset), in a template database each run copies."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from distributed import Client, LocalCluster
from prefect.task_runners import ThreadPoolTaskRunner

from bacpipes.errors import UserError
from bacpipes.settings import load_settings
from benchmarks.bench_flows_dask import (
    END,
    comparable,
    database,
    effects,
    fill_fleet,
    run_flows,
    same,
    site_ids,
    write_config,
)
from flows.fleet import FleetFailed, fleet_settings, run_fleet, task_runner

SITES, DAYS = 2, 8
RUN = uuid.uuid4().hex[:8]  # the suite may run twice at once on one server


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A template database with SITES sites' DAYS days of history; its name."""
    name = f"bacpipes_test_fleet_{RUN}"
    with database(name) as dsn:
        fill_fleet(dsn, SITES, DAYS, tmp_path_factory.mktemp("history"))
        yield name


def fleet(folder: Path, dsn: str, address: str | None = None) -> list[str]:
    return [write_config(folder, site, dsn, address) for site in site_ids(SITES)]


def test_fleet_flows_on_a_dask_cluster_store_what_the_serial_run_stores(prefect, history: str,
                                                                         tmp_path: Path) -> None:
    with database(f"bacpipes_test_fleet_{RUN}_serial", template=history) as dsn:
        serial, _ = run_flows(fleet(tmp_path / "serial", dsn), DAYS, ThreadPoolTaskRunner(max_workers=1))
        serial_effects = effects(dsn)
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0") as cluster, \
            database(f"bacpipes_test_fleet_{RUN}_dask", template=history) as dsn:
        with Client(cluster.scheduler_address) as client:
            client.get_task_stream()  # the scheduler records what its workers run from now on
        # the runner from the sites' settings: [central] dask_address names the cluster (no client of
        # ours left in this process: prefect-dask would take it instead of the address)
        parallel, _ = run_flows(fleet(tmp_path / "dask", dsn, cluster.scheduler_address), DAYS)
        parallel_effects = effects(dsn)
        with Client(cluster.scheduler_address) as client:  # what the cluster's workers ran
            ran = {(t["key"].rsplit("-", 1)[0], t["worker"]) for t in client.get_task_stream()}
            workers = set(client.scheduler_info()["workers"])
    assert same(comparable(parallel), comparable(serial)) and same(parallel_effects, serial_effects)
    tasks = {name for name, _ in ran}
    assert {"fit_and_store_baseline", "training_set", "export_register_and_deploy", "ab_periods",
            "score_periods", "judge_ab"} <= tasks, tasks
    assert {worker for _, worker in ran} <= workers
    # every site's own fit and model, stored under its name
    stored = {row[0] for row in serial_effects["baseline_models"]}
    assert set(serial["baseline"]) == set(site_ids(SITES)) == stored
    assert len({r["cv_rmse"] for r in serial["baseline"].values()}) == SITES  # the meters' offsets differ
    first = sorted(serial_effects["model_deployments"])[0]
    assert first[:4] == ("fleet-00", "setpoint", "1-fleet-00", "shadow")
    assert all(r["periods"] == DAYS and not r["rollback"] for r in serial["ab"].values())


def test_a_failing_site_is_reported_after_the_others_are_done(prefect, history: str, tmp_path: Path) -> None:
    with database(f"bacpipes_test_fleet_{RUN}_failing", template=history) as dsn:
        configs = [*fleet(tmp_path, dsn), write_config(tmp_path, "no-such-site", dsn)]
        with pytest.raises(FleetFailed, match=r"1 of 3 sites failed: no-such-site: .*no site meter"):
            run_fleet("baseline", configs, ThreadPoolTaskRunner(max_workers=2), days=DAYS, end=END)
        with psycopg.connect(dsn) as conn:
            fitted = conn.execute("SELECT site_id FROM baseline_models ORDER BY 1").fetchall()
    assert [r[0] for r in fitted] == site_ids(SITES)


def test_the_runner_comes_from_settings(tmp_path: Path) -> None:
    local = task_runner(load_settings(write_config(tmp_path / "a", "s1", "postgresql:///x")))
    assert local.address is None and local.cluster_kwargs["n_workers"] == os.cpu_count()
    assert local.cluster_kwargs["processes"] and local.cluster_kwargs["threads_per_worker"] == 1
    remote = task_runner(load_settings(write_config(tmp_path / "b", "s1", "postgresql:///x", "tls://d:8786")))
    assert remote.address == "tls://d:8786"
    twice: list[Any] = [write_config(tmp_path / d, "s1", "postgresql:///x") for d in ("a", "b")]
    with pytest.raises(UserError, match="distinct sites"):
        fleet_settings(twice)
    with pytest.raises(UserError, match="no fleet flow 'nope'"):
        run_fleet("nope", twice)
