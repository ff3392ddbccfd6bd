"""A/B: ML against baseline control over the switchback periods that are over, energy normalised by the
baseline model and discomfort per zone, the savings with their confidence interval (the same scoring
and statistics as the `ab` flow), and the rollback history.

The result leads in words (`models.verdict.ab_verdict`): "ML saves 8 % ± 3 % …" only when the interval
excludes zero, else "no significant difference yet: about N more days needed", with the saving in kWh."""

from __future__ import annotations

from datetime import datetime

import altair as alt
import pandas as pd
import streamlit as st

from bacpipes.settings import Settings
from central.ab import score
from models.ab import Period, PeriodResult, Verdict, evaluate
from models.verdict import ab_verdict, kwh, money
from streamlit_app import energy, queries
from streamlit_app.context import current_site, database, require_login, settings, shown_errors


def page() -> None:
    with database() as conn:
        site = current_site(conn)
        schedule = queries.ab_schedule(conn, site)
        history = queries.rollbacks(conn, site)
        alerts = queries.frame(conn, "SELECT raised_at, severity, message, resolved_at FROM alerts"
                                     " WHERE site_id = %s AND source = 'ab' ORDER BY raised_at DESC", (site,))
    st.subheader("Switchback")
    if schedule.empty:
        st.info("No A/B schedule for this site yet (the `ab-plan` flow publishes one).")
    else:
        done = schedule[schedule["period_end"] <= datetime.now(settings().site.tz)]
        st.caption(f"{len(schedule)} periods planned, {len(done)} over.")
        results(site, done)
    st.subheader("Rollbacks")
    if history.empty and alerts.empty:
        st.caption("No rollbacks.")
    else:
        st.dataframe(history, hide_index=True)
        st.dataframe(alerts, hide_index=True)


def in_words(config: Settings, site: str, verdict: Verdict, scored: list[PeriodResult]) -> None:
    """The verdict as a sentence (significant or not, and if not, about how many more days), with the saving
    in kWh over the ML periods (and money with `[energy]`'s tariff)."""
    washout = config.ab.washout_h
    days = sum((r.period.end - r.period.scored_from(washout)).total_seconds() for r in scored) / 86400
    ml_kwh = energy.ml_metered_kwh(config, site, [r.period for r in scored], washout)
    # ML metered E; baseline control would have used E / (1 - s) in the same hours: the saving is E·s/(1-s)
    saved = ml_kwh * verdict.savings / (1 - verdict.savings) if verdict.savings < 1 and ml_kwh > 0 else None
    sentence = ab_verdict(verdict.savings, verdict.ci, days, subject="metered site energy",
                          saved_kwh=saved)
    low, high = verdict.ci
    (st.success if low > 0 else st.warning if high < 0 else st.info)(sentence)
    if saved is not None:
        tariff = config.energy
        worth = ("" if tariff.price_per_kwh is None or tariff.currency is None
                 else f" ({money(saved * tariff.price_per_kwh, tariff.currency)})")
        st.caption(f"{days:.1f} days scored ({verdict.periods[0]} ML and {verdict.periods[1]} baseline "
                   f"periods); the ML periods metered {kwh(ml_kwh)}: about {kwh(saved)}{worth} "
                   f"{'less' if saved >= 0 else 'more'} than baseline control would have used.")


def results(site: str, done: pd.DataFrame) -> None:
    arms = done["arm"].value_counts()
    if arms.get("ml", 0) < 2 or arms.get("baseline", 0) < 2:
        st.info("Savings need at least two finished periods of each arm.")
        return
    config = settings()
    for_site = config.model_copy(update={"site": config.site.model_copy(update={"id": site})})
    periods = [Period(r.period_start, r.period_end, r.arm) for r in done.itertuples()]
    scored = score(for_site, periods)
    verdict = evaluate(scored)
    in_words(for_site, site, verdict, scored)
    left, middle, right = st.columns(3)
    left.metric("Energy saved by ML", f"{verdict.savings:+.1%}",
                help=f"95 % interval {verdict.ci[0]:+.1%} … {verdict.ci[1]:+.1%}")
    middle.metric("95 % interval", f"{verdict.ci[0]:+.1%} … {verdict.ci[1]:+.1%}")
    right.metric("Discomfort per zone and period", f"{verdict.discomfort_ml:.2f} K·h",
                 delta=f"{verdict.discomfort_ml - verdict.discomfort_baseline:+.2f} vs baseline",
                 delta_color="inverse")
    (st.error if verdict.rollback else st.success)(verdict.reason)
    table = pd.DataFrame([{"start": r.period.start, "arm": r.period.arm, "energy / baseline model":
                           r.normalised_energy, "discomfort K·h per zone": r.discomfort_kh_per_zone}
                          for r in scored])
    for measure in ("energy / baseline model", "discomfort K·h per zone"):  # energy, then comfort, by period
        st.altair_chart(alt.Chart(table).mark_bar().encode(
            x=alt.X("start:T", title=None), y=alt.Y(f"{measure}:Q"), color="arm:N",
            tooltip=list(table.columns)), width="stretch")
    st.dataframe(table, hide_index=True)


st.title("A/B evaluation")
require_login()
with shown_errors():
    page()
