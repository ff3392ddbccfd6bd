"""Where a site's fitted energy baselines are kept: one `baseline_models` row per fit, with the Guideline 14
metrics a report quotes and the model itself, so that a later score (the A/B test, savings) uses exactly
the fit it names rather than refitting on data that may have changed since."""

from __future__ import annotations

from datetime import datetime

import psycopg
from psycopg.types.json import Jsonb

from bacpipes.errors import UserError
from models.baseline import BaselineModel, Metrics


def store_baseline(conn: psycopg.Connection, site_id: str, start: datetime, end: datetime,
                   model: BaselineModel, metrics: Metrics | None = None) -> int:
    """Keep a fit of the window [start, end) and its metrics (default: the model's own in-sample ones);
    returns the row's id. Committed with the caller's transaction."""
    scored = metrics or model.metrics
    row = conn.execute(
        "INSERT INTO baseline_models (site_id, period_start, period_end, cv_rmse, nmbe, r_squared,"
        " meets_guideline_14, model) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
        (site_id, start, end, scored.cv_rmse, scored.nmbe, scored.r_squared, scored.meets_guideline_14,
         Jsonb(model.to_dict())),
    ).fetchone()
    assert row is not None
    return int(row[0])


def latest_baseline(conn: psycopg.Connection, site_id: str) -> BaselineModel | None:
    """The site's most recent fit, or None when the baseline flow has never run for it."""
    row = conn.execute(
        "SELECT id, model FROM baseline_models WHERE site_id = %s ORDER BY fitted_at DESC, id DESC LIMIT 1",
        (site_id,),
    ).fetchone()
    if row is None:
        return None
    try:
        return BaselineModel.from_dict(row[1])
    except ValueError as exc:  # a fit stored by an older release, in a format this one cannot read
        raise UserError(f"baseline {row[0]} of {site_id} cannot be read ({exc}): run the baseline flow "
                        "again") from exc
