"""Central's ML flows for a fleet: every site's baseline, training or A/B read as tasks side by side on a
Dask cluster (prefect-dask), so the work spreads over as many machines as the fleet needs.

A fleet is a list of site settings files, each as `flows.ml` takes one (central's database, the site's
`[site]` id and timezone: central does not know a site's timezone). Each site's work is the same tasks
`flows.ml` submits for one site; only the task runner differs. `run_fleet` picks it from the first file's
`[central] dask_address`: a scheduler's address (a cluster shared by the fleet's machines), or none for a
local cluster of a worker process per CPU, started for the run. Called directly, the fleet flows run on
Prefect's default thread pool; a runner with one thread is the serial run (benchmarks/bench_flows_dask.py).

A site that fails does not stop the others: the flow waits for every site, then fails naming the sites that
did, with the first error of each.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.task_runners import TaskRunner
from prefect_dask import DaskTaskRunner

from bacpipes.errors import UserError
from bacpipes.settings import Settings, load_settings
from flows.ml import Steps, outcome, site_ab, site_baseline, site_train, window


class FleetFailed(RuntimeError):
    """Some sites' work failed (the others' is done and stored)."""


def task_runner(settings: Settings, workers: int | None = None) -> DaskTaskRunner:
    """The Dask runner `[central] dask_address` names, or a local cluster: `workers` processes (default one
    per CPU) of one thread each, since a site's work holds the GIL (pandas, scikit-learn)."""
    if settings.central.dask_address:
        return DaskTaskRunner(address=settings.central.dask_address)
    return DaskTaskRunner(cluster_class="distributed.LocalCluster", cluster_kwargs={
        "n_workers": workers or os.cpu_count() or 1, "threads_per_worker": 1, "processes": True,
        "dashboard_address": ":0",  # any free port: runs and tests side by side would collide on :8787
    })


def fleet_settings(configs: Sequence[str]) -> list[Settings]:
    """Each site's settings, refused up front when two files name one site (their results would mix)."""
    sites = [load_settings(config) for config in configs]
    ids = [s.site.id for s in sites]
    twice = sorted({i for i in ids if ids.count(i) > 1})
    if not sites or twice:
        raise UserError(f"a fleet needs site settings files naming distinct sites: {twice or 'none given'}")
    return sites


def gather(sites: dict[str, Steps]) -> dict[str, dict[str, Any]]:
    """Every site's result, once all are done; FleetFailed naming each site that failed, and why."""
    results, failed = {}, {}
    for site, steps in sorted(sites.items()):  # all were submitted before the first wait
        try:
            results[site] = outcome(steps)
        except Exception as exc:  # the site's failure: reported below, with the others'
            failed[site] = exc
    logger = get_run_logger()
    for site, result in results.items():
        logger.info("%s: %s", site, result)
    if failed:
        reasons = "; ".join(f"{site}: {error}" for site, error in failed.items())
        raise FleetFailed(f"{len(failed)} of {len(sites)} sites failed: {reasons}")
    return results


@flow(name="baseline-fleet")
def baseline_fleet_flow(configs: list[str], days: int = 90,
                        end: datetime | None = None) -> dict[str, dict[str, Any]]:
    """Each site's baseline fitted on the last `days` days and stored (as `flows.ml.baseline_flow`)."""
    start, stop = window(days, end)
    return gather({s.site.id: site_baseline(s, start, stop) for s in fleet_settings(configs)})


@flow(name="train-fleet")
def train_fleet_flow(configs: list[str], days: int = 30, end: datetime | None = None,
                     models_dir: str | None = None, version: str | None = None,
                     mode: str = "shadow") -> dict[str, dict[str, Any]]:
    """Each site's model trained, exported, registered and deployed in `mode` (as `flows.ml.train_flow`),
    as version `<version>-<site>`: the registry keys a model by name and version; each site has its own."""
    start, stop = window(days, end)
    version = version or datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    return gather({
        s.site.id: site_train(s, start, stop, Path(models_dir or s.ml.models_dir), f"{version}-{s.site.id}",
                              mode)
        for s in fleet_settings(configs)
    })


@flow(name="ab-fleet")
def ab_fleet_flow(configs: list[str], start: datetime | None = None, days: int = 14, seed: int = 0,
                  max_energy_loss: float = 0.02, max_extra_discomfort_kh: float = 0.5,
                  washout_h: float | None = None,
                  switch_hour: int | None = None) -> dict[str, dict[str, Any]]:
    """Each site's switchback evaluated, a worse model rolled back (as `flows.ml.ab_flow`)."""
    start = start or window(days, None)[0]
    return gather({
        s.site.id: site_ab(s, start, days, seed, max_energy_loss, max_extra_discomfort_kh, washout_h,
                           switch_hour)
        for s in fleet_settings(configs)
    })


FLEET_FLOWS = {"baseline": baseline_fleet_flow, "train": train_fleet_flow, "ab": ab_fleet_flow}


def run_fleet(name: str, configs: Sequence[str], runner: TaskRunner | None = None,
              **parameters: Any) -> dict[str, dict[str, Any]]:
    """Run the fleet flow `name` over the sites' settings files on `runner` (default: `task_runner` of the
    first file's settings); its results by site."""
    if name not in FLEET_FLOWS:
        raise UserError(f"no fleet flow {name!r}: choose one of {', '.join(FLEET_FLOWS)}")
    if not configs:
        raise UserError("a fleet needs at least one site settings file")
    runner = runner or task_runner(load_settings(configs[0]))
    return FLEET_FLOWS[name].with_options(task_runner=runner)(list(configs), **parameters)
