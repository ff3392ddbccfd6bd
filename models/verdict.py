"""Results in plain words: what an operator reads on the Energy and A/B pages.

Numbers with intervals are easy to misread ("+2 % … [−2 %, +6 %]" reads as a saving to most people), so
the pages lead with a sentence that already says whether the result is significant, and when it is not,
about how much longer the test must run. Pure functions, no I/O, so the wording is tested on its own.

Two kinds of result:

* the A/B switchback (`models.ab.evaluate`): a saving as a fraction with its interval. Not significant
  while the interval holds zero; an interval's width shrinks as 1/sqrt(days), so the days needed for its
  half-width to fall to the measured difference are days · (half-width / |saving|)², the
  usual planning estimate (it assumes the difference stays where it is);
* savings against the M&V baseline (`models.baseline.avoided_energy`): kWh with the Guideline 14
  uncertainty, significant when the avoided energy is larger than its uncertainty.
"""

from __future__ import annotations

import math

from models.baseline import fractional_savings_uncertainty

A_YEAR_DAYS = 365  # beyond this, "about N more days" stops being a plan


def percent(fraction: float) -> str:
    """'8 %' for 0.08, '0.4 %' for 0.004 (a whole percent hides a small result); the magnitude only."""
    value = abs(fraction) * 100
    return f"{value:.0f} %" if round(value) >= 2 else f"{value:.1f} %"


def kwh(value: float) -> str:
    """'1,234 kWh'; the magnitude only (the sentence says which way)."""
    return f"{abs(value):,.0f} kWh"


def money(value: float, currency: str) -> str:
    """'246.80 USD'; the magnitude only."""
    return f"{abs(value):,.2f} {currency}"


def more_days_needed(savings: float, ci: tuple[float, float], days: float) -> int | None:
    """Days more until an interval of today's width, shrinking as 1/sqrt(days), would exclude zero at the
    difference measured so far; 0 when it already does; None when it cannot be said (no difference at all,
    or no days yet)."""
    low, high = ci
    if low > 0 or high < 0:
        return 0
    half = (high - low) / 2
    if savings == 0 or days <= 0 or not math.isfinite(half):
        return None
    needed = days * (half / abs(savings)) ** 2
    return max(1, math.ceil(round(needed - days, 6)))  # 24.000000001 days is 24, not 25


def ab_verdict(savings: float, ci: tuple[float, float], days: float, *, confidence: float = 0.95,
               subject: str = "energy", saved_kwh: float | None = None) -> str:
    """The switchback's result in one sentence, e.g. "ML saves 8 % ± 3 % of HVAC energy (95 %)".

    savings: 1 − ML's normalised energy / baseline's (positive: ML uses less); ci: its interval at
    `confidence`; days: the days scored so far (both arms); subject: what was metered; saved_kwh: the
    saving in kWh over the ML periods, added when given and the result is significant.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1: {confidence}")
    low, high = ci
    if low > high:
        raise ValueError(f"the interval's low end is above its high end: {ci}")
    half = (high - low) / 2
    level = f"{confidence * 100:.0f} %"
    amount = "" if saved_kwh is None else f", about {kwh(saved_kwh)} over the ML periods"
    if low > 0:
        return f"ML saves {percent(savings)} ± {percent(half)} of {subject} ({level}){amount}."
    if high < 0:
        return f"ML uses {percent(savings)} ± {percent(half)} more {subject} ({level}){amount}."
    measured = (f"so far ML {'saves' if savings >= 0 else 'uses'} {percent(savings)} ± {percent(half)} "
                f"{'of' if savings >= 0 else 'more'} {subject} ({level})")
    more = more_days_needed(savings, ci, days)
    if more is None:
        return (f"No significant difference yet: {measured}; with no difference measured, more days "
                "cannot be estimated.")
    if more > A_YEAR_DAYS:
        return (f"No significant difference yet: {measured}; a difference this small would take more "
                "than a year to confirm.")
    days_word = "day" if more == 1 else "days"
    return f"No significant difference yet: about {more} more {days_word} needed ({measured})."


def savings_uncertainty_kwh(*, cv_rmse: float, n: int, rho: float, hours: int, counterfactual_kwh: float,
                            confidence: float = 0.95) -> float:
    """± kWh of the avoided energy over `hours` reporting hours (Guideline 14 Annex B).

    The fractional savings uncertainty is ΔE/E_save with E_save = F · counterfactual, so the absolute
    uncertainty ΔE does not depend on the saving F: computed at F = 1 it is finite even when nothing was
    saved (where the fraction itself is infinite)."""
    if hours <= 0:
        raise ValueError(f"need at least one reporting hour: {hours}")
    fraction = fractional_savings_uncertainty(cv_rmse=cv_rmse, n=n, m=hours, rho=rho, savings_fraction=1.0,
                                              confidence=confidence)
    return fraction * abs(counterfactual_kwh)


def savings_statement(avoided_kwh: float, uncertainty_kwh: float, counterfactual_kwh: float, *,
                      confidence: float = 0.95, price_per_kwh: float | None = None,
                      currency: str | None = None) -> str:
    """Savings against the baseline in one sentence, in kWh (and money when a tariff is set), e.g.
    "Saved 1,234 kWh ± 456 kWh (95 %), 4.1 % of the 30,000 kWh the baseline predicts; worth 246.80 USD."."""
    if uncertainty_kwh < 0 or not math.isfinite(uncertainty_kwh):
        raise ValueError(f"the uncertainty must be a finite, non-negative kWh: {uncertainty_kwh}")
    if counterfactual_kwh <= 0:
        raise ValueError(f"the baseline's prediction must be positive: {counterfactual_kwh}")
    if (price_per_kwh is None) != (currency is None):
        raise ValueError("a price needs its currency (and a currency its price)")
    level = f"{confidence * 100:.0f} %"
    share = (f"{percent(avoided_kwh / counterfactual_kwh)} of the {kwh(counterfactual_kwh)} "
             "the baseline predicts")
    worth = ""
    if price_per_kwh is not None and currency is not None:
        worth = (f"; worth {money(avoided_kwh * price_per_kwh, currency)} "
                 f"± {money(uncertainty_kwh * price_per_kwh, currency)}")
    if avoided_kwh > uncertainty_kwh:
        return f"Saved {kwh(avoided_kwh)} ± {kwh(uncertainty_kwh)} ({level}), {share}{worth}."
    if avoided_kwh < -uncertainty_kwh:
        return (f"Used {kwh(avoided_kwh)} ± {kwh(uncertainty_kwh)} more than the baseline predicts "
                f"({level}), {share}{worth}.")
    direction = "saved" if avoided_kwh >= 0 else "more used"
    return (f"No significant savings yet: {kwh(avoided_kwh)} {direction} ± {kwh(uncertainty_kwh)} "
            f"({level}) is within the baseline's uncertainty ({share}).")
