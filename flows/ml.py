"""Prefect flows over `central/`: baseline measurement, training -> ONNX -> registry -> shadow rollout,
and the A/B evaluation that rolls a worse model back.

Each flow takes a settings file (the central database, and `[site] id` = the site it works for) and a
time window; tasks retry on transient database errors (only those: a user's mistake or a bug fails at
once). Alerts go through `central.alerts`, baselines through `central.baselines`.
`bacpipes flows run NAME` runs one now.

A site's work is submitted (`site_baseline`, `site_train`, `site_ab`) to the flow's task runner rather than
run in the flow: these flows run it for one site, `flows.fleet`'s for many at once on a Dask cluster, the
same tasks either way.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import psycopg
from prefect import Task, flow, get_run_logger, task
from prefect.client.schemas.objects import TaskRun
from prefect.futures import PrefectFuture, wait
from prefect.states import State

from bacpipes.db import connect
from bacpipes.errors import UserError
from bacpipes.settings import Settings, load_settings
from bacpipes.zones import find_zones, site_hourly, zone_frame
from central.ab import publish_schedule, published, score
from central.alerts import deliver, raise_alert
from central.baselines import store_baseline
from central.registry import deploy, record_closed_loop, register, rollback
from models.ab import Period, PeriodResult, evaluate, switchback
from models.baseline import fit_baseline
from models.features import build_features
from models.setpoint import export, select
from sim.closed_loop import closed_loop


def window(days: int, end: datetime | None) -> tuple[datetime, datetime]:
    end = end or datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    return end - timedelta(days=days), end


Steps = list[PrefectFuture[Any]]  # a site's submitted tasks, in order: the last one's result is the site's


def outcome(steps: Steps) -> Any:
    """The last step's result once every step is done, or the first failed step's own exception: a step
    after a failed one never runs, and its state says only that."""
    wait(steps)
    for step in steps:
        if not step.state.is_completed():
            step.result()  # raises what the step raised
    return steps[-1].result()


def transient(task: Task, run: TaskRun, state: State) -> bool:
    """Retry what may pass by itself (the database away for a moment), never a mistake or a bug: retrying
    those only delays the failure by the retries' delays."""
    return isinstance(state.result(raise_on_failure=False), psycopg.OperationalError)


@task(retries=3, retry_delay_seconds=10, retry_condition_fn=transient)
def fit_and_store_baseline(settings: Settings, start: datetime, end: datetime) -> dict[str, Any]:
    model = fit_baseline(site_hourly(settings, start, end))
    scored = model.metrics  # in-sample, on the hours with every input (zero electricity readings are gaps)
    raised = []
    with connect(settings.database.dsn) as conn:
        store_baseline(conn, settings.site.id, start, end, model)
        if not scored.meets_guideline_14:
            raised.append(raise_alert(
                conn, settings.site.id, "baseline", "warning",
                f"baseline misses ASHRAE Guideline 14: CV(RMSE) {scored.cv_rmse:.1%}, NMBE {scored.nmbe:.1%}",
            ))
    deliver(raised, settings.alerts)
    return {"cv_rmse": scored.cv_rmse, "nmbe": scored.nmbe, "r_squared": scored.r_squared,
            "meets_guideline_14": scored.meets_guideline_14, "hours": scored.n}


def site_baseline(settings: Settings, start: datetime, end: datetime) -> Steps:
    """The site's baseline fit, submitted: the caller decides when to wait (a fleet's run side by side)."""
    return [fit_and_store_baseline.submit(settings, start, end)]


@flow(name="baseline")
def baseline_flow(config: str | None = None, days: int = 90, end: datetime | None = None) -> dict[str, Any]:
    """Fit the site's energy baseline on the last `days` days and store it with its metrics."""
    settings = load_settings(config)
    start, stop = window(days, end)
    result = outcome(site_baseline(settings, start, stop))
    get_run_logger().info("baseline for %s: %s", settings.site.id, result)
    return result


@task(retries=3, retry_delay_seconds=10, retry_condition_fn=transient)
def training_set(settings: Settings, start: datetime, end: datetime, every: timedelta) -> list[pl.DataFrame]:
    """Per zone, its features (a zone's rows stay together: the multi-step error rolls along them)."""
    tz = settings.site.timezone
    with connect(settings.database.dsn) as conn:
        zones = find_zones(conn, settings.site.id)
        if not zones:
            raise UserError(f"site {settings.site.id} has no zones with every role (see bacpipes.zones)")
        return [build_features(zone_frame(z, start, end, every, settings, conn), tz) for z in zones]


@task
def export_register_and_deploy(settings: Settings, zones: list[pl.DataFrame], models_dir: Path, version: str,
                               mode: str) -> dict[str, Any]:
    """Every model family trained, the one with the least multi-step error on held-back days kept (its
    card lists them all), exported, registered and deployed."""
    trained = select(zones, settings.ml.interval_s)
    path = models_dir / f"{settings.ml.model}-{version}.onnx"
    digest = export(trained, path, version, created_by="flow:train")  # refuses on a parity mismatch
    with psycopg.connect(settings.database.dsn) as conn:
        register(conn, settings.ml.model, version, path, "flow:train")
        if mode != "none":
            deploy(conn, settings.site.id, settings.ml.model, version, mode, "flow:train", "nightly training")
    return {"version": version, "sha256": digest, "metrics": trained.metrics, "family": trained.family,
            "multistep_mae": trained.multistep, "path": str(path), "mode": mode,
            "rows": sum(z.height for z in zones)}


def site_train(settings: Settings, start: datetime, end: datetime, models_dir: Path, version: str,
               mode: str) -> Steps:
    """The site's training set, then its model trained, exported, registered and deployed, submitted: the
    features pass from one task to the next without coming back through the flow."""
    zones = training_set.submit(settings, start, end, timedelta(seconds=settings.ml.interval_s))
    return [zones, export_register_and_deploy.submit(settings, zones, models_dir, version, mode)]


@flow(name="train")
def train_flow(
    config: str | None = None, days: int = 30, end: datetime | None = None, models_dir: str | None = None,
    version: str | None = None, mode: str = "shadow",
) -> dict[str, Any]:
    """Train on the last `days` days, export to ONNX (parity-checked), register, and deploy in `mode`."""
    settings = load_settings(config)
    start, stop = window(days, end)
    version = version or datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    folder = Path(models_dir or settings.ml.models_dir)  # [ml] models_dir unless the caller names one
    result = outcome(site_train(settings, start, stop, folder, version, mode))
    get_run_logger().info("trained %s@%s (%s) on %d rows: %s", settings.ml.model, version, result["family"],
                          result["rows"], result["metrics"])
    return result


@task(retries=3, retry_delay_seconds=10, retry_condition_fn=transient)
def score_periods(settings: Settings, periods: list[Period], washout_h: float) -> list[PeriodResult]:
    return score(settings, periods, washout_h)


@task(retries=3, retry_delay_seconds=10, retry_condition_fn=transient)
def ab_periods(settings: Settings, start: datetime, days: int, seed: int,
               switch_hour: int | None) -> list[Period]:
    """The schedule published for the site (periods wholly inside the window): what its edge followed.
    None published (a plan made elsewhere), the switchback recomputed from `start` and `seed`."""
    with psycopg.connect(settings.database.dsn) as conn:
        periods = published(conn, settings.site.id, start, start + timedelta(days=days))
    return periods or switchback(start, days, seed=seed, switch_hour=switch_hour, tz=settings.site.tz)


@task  # no retries: a rollback committed before a failure must not roll back a second version
def judge_ab(settings: Settings, periods: list[Period], results: list[PeriodResult], washout_h: float,
             max_energy_loss: float, max_extra_discomfort_kh: float) -> dict[str, Any]:
    """The verdict on the scored periods; a worse model rolled back, with a critical alert."""
    verdict = evaluate(results, max_energy_loss=max_energy_loss,
                       max_extra_discomfort_kh=max_extra_discomfort_kh)
    rolled_back_to = None
    if verdict.rollback:
        with psycopg.connect(settings.database.dsn) as conn:
            rolled_back_to = rollback(conn, settings.site.id, settings.ml.model, "flow:ab", verdict.reason)
            alert = raise_alert(conn, settings.site.id, "ab", "critical",
                                f"rolled back to {rolled_back_to}: {verdict.reason}")
        deliver([alert], settings.alerts)
    return {"savings": verdict.savings, "ci": verdict.ci, "discomfort_ml": verdict.discomfort_ml,
            "discomfort_baseline": verdict.discomfort_baseline, "rollback": verdict.rollback,
            "reason": verdict.reason, "rolled_back_to": rolled_back_to, "washout_h": washout_h,
            "periods": len(periods)}


def site_ab(settings: Settings, start: datetime, days: int, seed: int, max_energy_loss: float,
            max_extra_discomfort_kh: float, washout_h: float | None = None,
            switch_hour: int | None = None) -> Steps:
    """The site's switchback read, scored and judged, submitted; `washout_h` and `switch_hour` default to
    the site's `[ab]` settings."""
    washout = settings.ab.washout_h if washout_h is None else washout_h
    hour = settings.ab.switch_hour if switch_hour is None else switch_hour
    periods = ab_periods.submit(settings, start, days, seed, hour)
    scored = score_periods.submit(settings, periods, washout)
    return [periods, scored,
            judge_ab.submit(settings, periods, scored, washout, max_energy_loss, max_extra_discomfort_kh)]


@flow(name="ab")
def ab_flow(config: str | None = None, start: datetime | None = None, days: int = 14, seed: int = 0,
            max_energy_loss: float = 0.02, max_extra_discomfort_kh: float = 0.5,
            washout_h: float | None = None, switch_hour: int | None = None) -> dict[str, Any]:
    """Evaluate the switchback from `start`; roll the model back (and raise an alert) if ML is worse.
    Each period is scored after its washout (`washout_h`, default `[ab] washout_h`); `switch_hour`
    (default `[ab] switch_hour`) only matters when no schedule was published (see `ab_periods`)."""
    settings = load_settings(config)
    start = start or window(days, None)[0]
    result = outcome(site_ab(settings, start, days, seed, max_energy_loss, max_extra_discomfort_kh, washout_h,
                             switch_hour))
    get_run_logger().info("A/B for %s: %s", settings.site.id, result)
    return result


@flow(name="closed-loop")
def closed_loop_flow(days: float = 14, zones: int = 3, seed: int = 11, building: str = "rc",
                     config: str | None = None) -> dict[str, Any]:
    """Baseline vs the exported model on two identical virtual buildings (see sim.closed_loop); with
    building="energyplus", the medium office in Tampa under the schedule, a fixed 24.5 °C, the one-step
    policy and the MPC, with the switchback A/B (sim.energyplus.closed_loop; `zones` is the building's),
    and with a `config` the evaluated model registered with the KPIs it achieved on its card."""
    if building == "energyplus":
        from sim.energyplus.closed_loop import evaluate_controllers  # needs pyenergyplus

        evaluation = evaluate_controllers(days=int(days), seed=seed)
        get_run_logger().info("EnergyPlus closed loop over %g days:\n%s\n%s", days, evaluation.models(),
                              evaluation.table())
        result = {**evaluation.to_dict(), "summary": evaluation.table()}
        if config is not None:
            result["registered"] = register_evaluated(load_settings(config), evaluation)
        return result
    report = closed_loop(days=days, zones=zones, seed=seed)
    get_run_logger().info("closed loop over %g days: %s", days, report.summary())
    return {"savings": report.savings, "baseline": report.baseline.__dict__, "ml": report.ml.__dict__,
            "summary": report.summary()}


def register_evaluated(settings: Settings, evaluation: Any, version: str | None = None) -> str:
    """The model a closed loop evaluated, exported, registered and its KPIs recorded on its card, so the
    registry says what it achieved (not deployed: a person decides that). Returns its version."""
    version = version or f"closed-loop-{datetime.now(UTC):%Y%m%d%H%M%S}"
    path = Path(settings.ml.models_dir) / f"{settings.ml.model}-{version}.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    export(evaluation.trained, path, version, created_by="flow:closed-loop")
    with psycopg.connect(settings.database.dsn) as conn:
        register(conn, settings.ml.model, version, path, "flow:closed-loop")
        record_closed_loop(conn, settings.ml.model, version, evaluation.card_kpis(), "flow:closed-loop")
    return version


@flow(name="ab-plan")
def ab_plan_flow(config: str | None = None, start: datetime | None = None, days: int = 14,
                 hours_per_period: int = 24, seed: int = 0, switch_hour: int | None = None) -> int:
    """Publish the switchback schedule the site's edge will follow (and the ab flow will evaluate): from
    `start` (default: the next midnight UTC), or with `switch_hour` (default `[ab] switch_hour`) from the
    first such local hour (site.timezone) at or after it, switching at that hour."""
    settings = load_settings(config)
    start = start or datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
    hour = settings.ab.switch_hour if switch_hour is None else switch_hour
    periods = switchback(start, days, hours_per_period, seed, switch_hour=hour, tz=settings.site.tz)
    with psycopg.connect(settings.database.dsn) as conn:
        added = publish_schedule(conn, settings.site.id, periods)
    get_run_logger().info("A/B schedule for %s: %d periods from %s", settings.site.id, added, start)
    return added
