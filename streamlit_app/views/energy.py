"""Energy: the site's metered energy against what the baseline says it would have used, day by day since
the baseline's training window ended, and the savings to date in kWh (and money, with `[energy]`'s tariff)
with their Guideline 14 uncertainty, said in a sentence first (`models.verdict`)."""

from __future__ import annotations

from datetime import datetime

import altair as alt
import pandas as pd
import streamlit as st

from bacpipes.replication import is_central
from models.verdict import kwh, savings_statement
from streamlit_app import energy
from streamlit_app.context import current_site, database, require_login, settings, shown_errors

CONFIDENCE = 0.95


def baseline_caption(baseline: energy.StoredBaseline) -> str:
    tz = settings().site.tz
    fit = "meets" if baseline.meets_guideline_14 else "misses (savings against it are not reliable)"
    return (f"Baseline fitted {baseline.fitted_at.astimezone(tz):%Y-%m-%d %H:%M} on "
            f"{baseline.period_start.astimezone(tz):%Y-%m-%d} – "
            f"{baseline.period_end.astimezone(tz):%Y-%m-%d}: "
            f"CV(RMSE) {baseline.cv_rmse:.1%}, NMBE {baseline.nmbe:+.1%}; it {fit} ASHRAE Guideline 14.")


def headline(result: energy.Savings) -> None:
    tariff = settings().energy
    sentence = savings_statement(result.avoided_kwh, result.uncertainty_kwh, result.counterfactual_kwh,
                                 confidence=result.confidence, price_per_kwh=tariff.price_per_kwh,
                                 currency=tariff.currency)
    (st.success if sentence.startswith("Saved") else st.warning if sentence.startswith("Used") else st.info)(
        sentence)
    columns = st.columns(4 if tariff.priced else 3)
    columns[0].metric("Saved to date", f"{result.avoided_kwh:,.0f} kWh",
                      help="the baseline's counterfactual minus the metered energy, over the hours with both")
    columns[1].metric(f"Uncertainty ({result.confidence * 100:.0f} %)", f"± {kwh(result.uncertainty_kwh)}")
    columns[2].metric("Metered / baseline",
                      f"{result.metered_kwh:,.0f} / {result.counterfactual_kwh:,.0f} kWh",
                      help=f"over {result.hours} hours")
    if tariff.price_per_kwh is not None:
        columns[3].metric("Cost saved", f"{result.avoided_kwh * tariff.price_per_kwh:,.2f} {tariff.currency}",
                          help=f"at {tariff.price_per_kwh:g} {tariff.currency}/kWh (`[energy]` settings)")


def charts(days: pd.DataFrame) -> None:
    long = days.melt(id_vars="day", value_vars=["metered_kwh", "baseline_kwh"], var_name="series",
                     value_name="kWh")
    long["series"] = long["series"].map({"metered_kwh": "metered",
                                         "baseline_kwh": "baseline (counterfactual)"})
    per_day = alt.Chart(long, title="Energy per day: metered against the baseline").mark_line(point=True)
    st.altair_chart(per_day.encode(
        x=alt.X("day:T", title=None), y=alt.Y("kWh:Q", title="kWh per day", scale=alt.Scale(zero=False)),
        color=alt.Color("series:N", title=None, legend=alt.Legend(orient="bottom"),
                        scale=alt.Scale(domain=["metered", "baseline (counterfactual)"],
                                        range=["#1f77b4", "#7f7f7f"])),
        strokeDash=alt.StrokeDash("series:N", legend=None, scale=alt.Scale(
            domain=["metered", "baseline (counterfactual)"], range=[[1, 0], [6, 3]])),
        tooltip=["day:T", "series:N", alt.Tooltip("kWh:Q", format=",.0f")]), width="stretch")
    band = days.assign(low=days["saved_to_date_kwh"] - days["uncertainty_kwh"],
                       high=days["saved_to_date_kwh"] + days["uncertainty_kwh"])
    base = alt.Chart(band, title=f"Saved to date, ± its uncertainty ({CONFIDENCE * 100:.0f} %)").encode(
        x=alt.X("day:T", title=None))
    spread = base.mark_area(opacity=0.25).encode(y=alt.Y("low:Q", title="kWh saved to date"), y2="high:Q")
    line = base.mark_line(point=True).encode(
        y="saved_to_date_kwh:Q", tooltip=["day:T", alt.Tooltip("saved_to_date_kwh:Q", format=",.0f")])
    st.altair_chart(spread + line, width="stretch")


def page() -> None:
    with database() as conn:
        site = current_site(conn)
        baseline = energy.latest_baseline(conn, site)
        central = is_central(conn)
    if baseline is None:
        where = ("" if central else " Baselines are kept on central, not replicated to the site: this page "
                 "shows them in central's app.")
        st.info(f"No baseline stored for {site} yet: the `baseline` flow fits one on central "
                f"(`bacpipes flows run baseline --config central.toml`).{where}")
        return
    st.caption(baseline_caption(baseline))
    now = datetime.now(settings().site.tz)
    table = energy.against_baseline(settings(), site, baseline, baseline.period_end, now)
    result = energy.savings(baseline, table, CONFIDENCE)
    if result is None:
        st.info("No hour since the baseline's training window has both a metered energy and a prediction "
                "yet.")
        return
    headline(result)
    days = energy.daily(baseline, table, CONFIDENCE)
    charts(days)
    st.caption("The first and last days may be part days: `hours` counts the hours with both a metered "
               "value and a prediction.")
    st.dataframe(days, hide_index=True, column_config={
        "day": st.column_config.DateColumn("day", format="YYYY-MM-DD ddd"),
        **{c: st.column_config.NumberColumn(c.replace("_kwh", " (kWh)").replace("_", " "), format="%.0f")
           for c in days.columns if c.endswith("_kwh")}})


st.title("Energy")
require_login()
with shown_errors():
    page()
