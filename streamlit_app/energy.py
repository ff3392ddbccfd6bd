"""The Energy and A/B pages' data: the site's stored baseline, its metered energy against the baseline's
counterfactual hour by hour, and the savings to date with their Guideline 14 uncertainty.

The baseline is the one the `baseline` flow stored (`baseline_models`, newest fit per site); it predicts with
`models.baseline`, as the A/B flow's scoring does, and the site's hourly input is `bacpipes.zones.site_hourly`
(the site meter, outdoor temperature, occupancy), so the page, the flows and notebook 02 agree. Reporting
starts where the baseline's training window ended: hours it was fitted on would show savings of ~0 by
construction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import pandas as pd
import psycopg

from bacpipes.errors import UserError
from bacpipes.settings import Settings
from bacpipes.zones import site_hourly
from models.ab import Period
from models.baseline import BaselineModel, avoided_energy
from models.verdict import savings_uncertainty_kwh


@dataclass(frozen=True)
class StoredBaseline:
    id: int
    fitted_at: datetime
    period_start: datetime
    period_end: datetime
    cv_rmse: float
    nmbe: float
    meets_guideline_14: bool
    model: BaselineModel


@dataclass(frozen=True)
class Savings:
    """Avoided energy over the reporting hours (IPMVP Option C) and its ± at `confidence`."""

    counterfactual_kwh: float
    metered_kwh: float
    avoided_kwh: float
    uncertainty_kwh: float
    confidence: float
    hours: int


def for_site(settings: Settings, site: str) -> Settings:
    """The settings with `site` as the site (on central the app looks at one linked site at a time)."""
    return settings.model_copy(update={"site": settings.site.model_copy(update={"id": site})})


def latest_baseline(conn: psycopg.Connection, site: str) -> StoredBaseline | None:
    row = conn.execute(
        "SELECT id, fitted_at, period_start, period_end, cv_rmse, nmbe, meets_guideline_14, model"
        " FROM baseline_models WHERE site_id = %s ORDER BY fitted_at DESC, id DESC LIMIT 1", (site,),
    ).fetchone()
    if row is None:
        return None
    try:
        model = BaselineModel.from_dict(row[-1])
    except ValueError as exc:  # stored by an older release in a shape this one cannot read
        raise UserError(f"baseline {row[0]} of {site} cannot be read ({exc}): run the baseline flow "
                        "again") from exc
    return StoredBaseline(*row[:-1], model=model)


def against_baseline(settings: Settings, site: str, baseline: StoredBaseline, start: datetime,
                     end: datetime) -> pd.DataFrame:
    """Per hour in [start, end): the site's metered kWh, the baseline's counterfactual kWh and the inputs
    it used (index: the hour, site time)."""
    hourly = site_hourly(for_site(settings, site), start, end)
    if hourly.empty:
        return hourly.assign(baseline_kwh=pd.Series(dtype=float))
    predicted = baseline.model.predict(hourly)
    metered = hourly["energy_kwh"].mask(hourly["energy_kwh"] == 0)  # a zero reading is a gap (CalTRACK)
    return hourly.assign(energy_kwh=metered, baseline_kwh=predicted.reindex(hourly.index))


def usable(table: pd.DataFrame) -> pd.DataFrame:
    """The hours with both a metered value and a prediction: the only ones savings may count."""
    return table.dropna(subset=["energy_kwh", "baseline_kwh"])


def savings(baseline: StoredBaseline, table: pd.DataFrame, confidence: float = 0.95) -> Savings | None:
    """Savings to date over `table`'s usable hours; None when there is none."""
    if usable(table).empty:
        return None
    result = avoided_energy(baseline.model, table[["energy_kwh", "outdoor_temp_c", "occupancy"]],
                            confidence=confidence)
    metrics, rho = baseline.model.metrics, baseline.model.residual_autocorrelation
    spread = savings_uncertainty_kwh(cv_rmse=metrics.cv_rmse, n=metrics.n, rho=rho,
                                     hours=result.reporting_hours,
                                     counterfactual_kwh=result.counterfactual_kwh, confidence=confidence)
    return Savings(result.counterfactual_kwh, result.actual_kwh, result.avoided_kwh, spread, confidence,
                   result.reporting_hours)


def daily(baseline: StoredBaseline, table: pd.DataFrame, confidence: float = 0.95) -> pd.DataFrame:
    """Per local day: metered and baseline kWh, the day's saving, and the saving to date with its ± (which
    grows with the counterfactual and shrinks per hour as 1/sqrt(hours))."""
    hours = usable(table)
    days = hours.groupby(hours.index.tz_convert(baseline.model.timezone).normalize()).agg(
        metered_kwh=("energy_kwh", "sum"), baseline_kwh=("baseline_kwh", "sum"), hours=("energy_kwh", "size"))
    days.index = days.index.tz_localize(None)
    days.index.name = "day"
    days["saved_kwh"] = days["baseline_kwh"] - days["metered_kwh"]
    days["saved_to_date_kwh"] = days["saved_kwh"].cumsum()
    metrics, rho = baseline.model.metrics, baseline.model.residual_autocorrelation
    days["uncertainty_kwh"] = [
        savings_uncertainty_kwh(cv_rmse=metrics.cv_rmse, n=metrics.n, rho=rho, hours=int(h),
                                counterfactual_kwh=float(cf), confidence=confidence)
        for h, cf in zip(days["hours"].cumsum(), days["baseline_kwh"].cumsum(), strict=True)]
    return days.reset_index()


def ml_metered_kwh(settings: Settings, site: str, periods: Sequence[Period], washout_h: float) -> float:
    """The site's metered kWh over the ML periods' scored hours (after the washout), as the A/B scores them:
    the base its saving in percent turns into kWh."""
    ml = [p for p in periods if p.arm == "ml"]
    if not ml:
        return 0.0
    hourly = site_hourly(for_site(settings, site), min(p.start for p in ml), max(p.end for p in ml))
    energy = hourly["energy_kwh"]
    inside = pd.Series(False, index=energy.index)
    for p in ml:
        inside |= (energy.index >= p.scored_from(washout_h)) & (energy.index < p.end)
    return float(energy[inside].sum())
