"""A model's card: what it was trained on, how well it predicts, what it achieved in closed loop.

Built from the ONNX file's own metadata (`models.setpoint.export` writes it), so the card cannot claim
what the file does not; the closed-loop KPIs come later, from an evaluation of that exact version
(`central.registry.record_closed_loop`). Everything optional is optional here too: an older model has no
multi-step error or candidate list, a new one has no closed-loop run yet, and the card says "not
measured" for each rather than leaving it out, so an operator sees what is missing, not only what is
there.

Pure (no database, no app): the registry stores `ModelCard.to_dict()`, the Models page renders `facts()`,
`summary()` and the tables.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

NOT_MEASURED = "not measured"
# closed-loop KPIs the evaluation reports, in the order shown: key -> (words, unit)
KPIS: dict[str, tuple[str, str]] = {
    "hvac_kwh": ("HVAC electricity", "kWh"),
    "site_kwh": ("whole-building electricity", "kWh"),
    "peak_kw": ("peak demand", "kW"),
    "discomfort_kh": ("discomfort outside the band, occupied hours", "K·h"),
    "humid_hours": ("hours above 60 % RH", "h"),
    "setpoint_changes": ("setpoint changes per zone per day", ""),
}
TARGET_WORDS = {"energy_kw_next": "electric demand", "zone_temp_next": "zone temperature"}
MODEL_ARM, BASELINE_ARM = "ml", "baseline"

Horizons = dict[int, dict[str, float]]  # steps ahead -> target -> mean absolute error


class CardError(ValueError):
    """Closed-loop KPIs that cannot be shown truthfully (not numbers, wrong shape)."""


@dataclass(frozen=True)
class Candidate:
    """A model family tried during training, with its multi-step error on held-back days."""

    family: str
    multistep_mae: Horizons


@dataclass(frozen=True)
class ClosedLoop:
    """KPIs measured with the model controlling a building, against other controllers on the same weather.

    `controllers` maps a controller's name to its KPIs (`KPIS` keys, others allowed); the model's own arm
    is `model_arm`, the one savings are counted against `baseline_arm`.
    """

    controllers: dict[str, dict[str, float | None]]
    savings_pct: float | None = None  # the A/B module's estimate of energy saved by the model
    interval_pct: tuple[float, float] | None = None  # its 95 % interval
    method: str | None = None  # how it was measured, in words
    savings_of: str = "energy"  # what the savings are of, in words (e.g. "HVAC electricity")
    model_arm: str = MODEL_ARM
    baseline_arm: str = BASELINE_ARM
    measured_at: str | None = None  # set by the registry when recorded
    recorded_by: str | None = None

    @classmethod
    def from_dict(cls, kpis: Mapping[str, Any]) -> ClosedLoop:
        """From what an evaluation reports; raises CardError for anything not shown as a number.

        Either {"controllers": {name: {kpi: value}}, "savings_pct", "savings_interval_pct" ([low, high]),
        "savings_of", "method", "model_arm", "baseline_arm"} or, for the model's arm alone, the KPIs at the
        top level.
        """
        if not isinstance(kpis, Mapping) or not kpis:
            raise CardError(f"closed-loop KPIs must be a non-empty mapping, not {kpis!r}")
        model_arm = _text(kpis, "model_arm") or MODEL_ARM
        if "controllers" in kpis:
            raw = kpis["controllers"]
            if not isinstance(raw, Mapping) or not raw:
                raise CardError("closed-loop 'controllers' must map each controller to its KPIs")
        else:
            raw = {model_arm: {k: v for k, v in kpis.items() if k in KPIS}}
            if not raw[model_arm]:
                raise CardError(f"closed-loop KPIs name none of {list(KPIS)} and no 'controllers'")
        controllers = {}
        for arm, values in raw.items():
            if not isinstance(values, Mapping):
                raise CardError(f"controller {arm!r}: KPIs must be a mapping, not {values!r}")
            controllers[str(arm)] = {str(k): _number(f"{arm}.{k}", v) for k, v in values.items()}
        interval = kpis.get("savings_interval_pct")
        if interval is not None:
            if not isinstance(interval, list | tuple) or len(interval) != 2:
                raise CardError(f"savings_interval_pct must be [low, high], not {interval!r}")
            low, high = (_number("savings_interval_pct", x) for x in interval)
            if low is None or high is None or low > high:
                raise CardError(f"savings_interval_pct must be [low, high] with low <= high: {interval!r}")
            interval = (low, high)
        return cls(controllers, _number("savings_pct", kpis.get("savings_pct")), interval,
                   _text(kpis, "method"), _text(kpis, "savings_of") or "energy", model_arm,
                   _text(kpis, "baseline_arm") or BASELINE_ARM, _text(kpis, "measured_at"),
                   _text(kpis, "recorded_by"))

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["savings_interval_pct"] = list(self.interval_pct) if self.interval_pct else None
        del out["interval_pct"]
        return out

    def table(self) -> list[dict[str, Any]]:
        """A row per controller, a column per KPI (known ones first); None where it was not measured."""
        keys = [k for k in KPIS if any(k in v for v in self.controllers.values())]
        keys += sorted({k for v in self.controllers.values() for k in v} - set(keys))
        return [{"controller": arm, **{_kpi_label(k): values.get(k) for k in keys}}
                for arm, values in self.controllers.items()]

    def summary(self) -> list[str]:
        how = f" ({self.method})" if self.method else ""
        lines = []
        if self.savings_pct is not None:
            low_high = self.interval_pct
            interval = (f", 95 % interval {low_high[0]:.1f} … {low_high[1]:.1f} %" if low_high
                        else ", no interval reported")
            did = (f"saved {self.savings_pct:.1f} %" if self.savings_pct >= 0
                   else f"used {-self.savings_pct:.1f} % more")
            lines.append(f"In closed loop it {did} {self.savings_of} against {self.baseline_arm}"
                         f"{interval}{how}.")
        mine, base = self.controllers.get(self.model_arm), self.controllers.get(self.baseline_arm)
        if mine is not None and base is not None:
            compared = [_compare(words, unit, mine[k], base[k]) for k, (words, unit) in KPIS.items()
                        if mine.get(k) is not None and base.get(k) is not None]
            if compared:
                lines.append(f"With {self.model_arm} against {self.baseline_arm}: {'; '.join(compared)}.")
        elif not lines:
            lines.append(f"Closed-loop KPIs measured for {', '.join(self.controllers)}{how}, "
                         f"but not for both {self.model_arm} and {self.baseline_arm}.")
        return lines


@dataclass(frozen=True)
class ModelCard:
    version: str | None
    created_at: str | None
    created_by: str | None
    training_window: tuple[str, str] | None  # first and last time of the training data
    features: tuple[str, ...]  # in the order the model takes them
    targets: tuple[str, ...]
    units: dict[str, str]
    holdout: dict[str, dict[str, float]]  # target -> {"mae", "r2"} on the held-back part
    multistep_mae: Horizons = field(default_factory=dict)
    candidates: tuple[Candidate, ...] = ()
    interval_s: float | None = None  # one step, when the file records it
    family: str | None = None  # the model family this file is (one of the candidates, when they were tried)
    closed_loop: ClosedLoop | None = None

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, str], closed_loop: ClosedLoop | None = None) -> ModelCard:
        """From the ONNX metadata props; a key that is missing or unreadable is simply not on the card."""
        window = _json(metadata, "training_window")
        window = (str(window[0]), str(window[1])) if isinstance(window, list) and len(window) == 2 else None
        holdout = _json(metadata, "metrics")
        candidates = _json(metadata, "candidates")
        interval = _json(metadata, "interval_s")
        units = _json(metadata, "units")
        return cls(
            version=metadata.get("version"),
            created_at=metadata.get("created_at"),
            created_by=metadata.get("created_by"),
            training_window=window,
            features=tuple(_names(_json(metadata, "features"))),
            targets=tuple(_names(_json(metadata, "targets"))),
            units={str(k): str(v) for k, v in units.items()} if isinstance(units, dict) else {},
            holdout={str(t): {str(k): float(v) for k, v in m.items() if _finite(v)}
                     for t, m in holdout.items() if isinstance(m, dict)} if isinstance(holdout, dict) else {},
            multistep_mae=_horizons(_json(metadata, "multistep_mae")),
            candidates=tuple(Candidate(str(c["family"]), _horizons(c.get("multistep_mae")))
                             for c in candidates if isinstance(c, dict) and "family" in c)
            if isinstance(candidates, list) else (),
            interval_s=float(interval) if _finite(interval) and interval > 0 else None,
            family=metadata.get("family"),
            closed_loop=closed_loop,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; horizons keyed by strings as JSON needs."""
        out = asdict(self)
        out["multistep_mae"] = {str(h): v for h, v in self.multistep_mae.items()}
        out["candidates"] = [
            {"family": c.family, "multistep_mae": {str(h): v for h, v in c.multistep_mae.items()}}
            for c in self.candidates]
        out["closed_loop"] = self.closed_loop.to_dict() if self.closed_loop else None
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelCard:
        window = data.get("training_window")
        closed = data.get("closed_loop")
        return cls(
            version=data.get("version"), created_at=data.get("created_at"), created_by=data.get("created_by"),
            training_window=(window[0], window[1]) if window else None,
            features=tuple(data.get("features") or ()), targets=tuple(data.get("targets") or ()),
            units=dict(data.get("units") or {}), holdout=dict(data.get("holdout") or {}),
            multistep_mae=_horizons(data.get("multistep_mae")),
            candidates=tuple(Candidate(c["family"], _horizons(c.get("multistep_mae")))
                             for c in data.get("candidates") or ()),
            interval_s=data.get("interval_s"), family=data.get("family"),
            closed_loop=ClosedLoop.from_dict(closed) if closed else None,
        )

    def with_closed_loop(self, closed_loop: ClosedLoop | None) -> ModelCard:
        return replace(self, closed_loop=closed_loop)

    # --- what the page shows ------------------------------------------------------------------------

    def facts(self) -> list[tuple[str, str]]:
        """(label, value) for every part of the card, "not measured" where the model has none."""
        window = f"{self.training_window[0]} … {self.training_window[1]}" if self.training_window else None
        created = " by ".join(x for x in (self.created_at, self.created_by) if x) or None
        targets = ", ".join(f"{t} ({self.units[t]})" if t in self.units else t for t in self.targets)
        holdout = "; ".join(
            f"{t}: MAE {figure(m['mae'])} {self._error_unit(t)}".rstrip()
            + (f", R² {m['r2']:.3f}" if "r2" in m else "")
            for t, m in self.holdout.items() if "mae" in m)
        horizons = ", ".join(self._steps(h) for h in sorted(self.multistep_mae))
        candidates = ", ".join(c.family for c in self.candidates)
        measured = None
        if self.closed_loop:
            loop = self.closed_loop
            measured = " by ".join(x for x in (loop.measured_at, loop.recorded_by) if x)
            measured = ", ".join(x for x in (measured, loop.method) if x) or "measured"
        return [(label, value or NOT_MEASURED) for label, value in (
            ("Version", self.version),
            ("Created", created),
            ("Training data", window),
            (f"Features ({len(self.features)}, in order)", ", ".join(self.features)),
            ("Targets (units)", targets),
            ("Error on held-back data, one step", holdout),
            ("Multi-step error on held-back days", horizons and f"at {horizons}"),
            ("Model family", self.family),
            ("Model families tried", candidates),
            ("Closed loop", measured),
        )]

    def summary(self) -> list[str]:
        """Plain sentences an operator can read, from the best evidence the card has."""
        lines = []
        for target in self.targets:
            words, unit = TARGET_WORDS.get(target, target), self._error_unit(target)
            steps = {h: m[target] for h, m in sorted(self.multistep_mae.items()) if target in m}
            if steps:
                ahead = ", ".join(f"{self._steps(h)} ahead within {figure(e)} {unit}".replace("  ", " ")
                                  for h, e in steps.items())
                lines.append(f"Predicts {words} {ahead} on held-back days (mean absolute error).")
            elif "mae" in self.holdout.get(target, {}):
                mae, r2 = self.holdout[target]["mae"], self.holdout[target].get("r2")
                fit = f", R² {r2:.3f}" if r2 is not None else ""
                lines.append(f"Predicts {words} {self._steps(1)} ahead within {figure(mae)} {unit} "
                             f"on held-back data (mean absolute error{fit}).")
            else:
                lines.append(f"Prediction error for {words}: {NOT_MEASURED}.")
        if self.candidates:
            lines.append(self._candidates_line())
        else:
            lines.append(f"Model families compared: {NOT_MEASURED}.")
        if self.closed_loop:
            lines += self.closed_loop.summary()
        else:
            lines.append(f"Closed-loop KPIs (energy, peak, comfort, humidity in control): {NOT_MEASURED}.")
        return lines

    def _candidates_line(self) -> str:
        """The families tried, compared on the temperature error at the longest horizon they all have."""
        families = ", ".join(c.family for c in self.candidates)
        chosen = f"; this model is {self.family}" if self.family else ""
        target = self._temperature_target()
        shared = set.intersection(*(set(c.multistep_mae) for c in self.candidates))
        longest = max((h for h in shared if all(target in c.multistep_mae[h] for c in self.candidates)),
                      default=None)
        if target is None or longest is None:
            return f"{len(self.candidates)} model families tried: {families}{chosen}."
        unit = self._error_unit(target)
        errors = ", ".join(f"{c.family} {figure(c.multistep_mae[longest][target])} {unit}".rstrip()
                           for c in self.candidates)
        words = TARGET_WORDS.get(target, target)
        return (f"{len(self.candidates)} model families tried ({words} {self._steps(longest)} ahead, "
                f"mean absolute error): {errors}{chosen}.")

    def multistep_table(self) -> list[dict[str, Any]]:
        """A row per horizon: steps ahead and each target's mean absolute error."""
        return [{"steps ahead": h, **({"time ahead": self._duration(h)} if self.interval_s else {}),
                 **{f"{t} MAE ({self._error_unit(t)})": e for t, e in m.items()}}
                for h, m in sorted(self.multistep_mae.items())]

    def candidates_table(self) -> list[dict[str, Any]]:
        """A row per family tried and horizon."""
        return [{"family": c.family, "steps ahead": h,
                 **{f"{t} MAE ({self._error_unit(t)})": e for t, e in m.items()}}
                for c in self.candidates for h, m in sorted(c.multistep_mae.items())]

    def _error_unit(self, target: str) -> str:
        unit = self.units.get(target, "")
        return "K" if unit in ("degC", "°C", "K") else unit  # an error in temperature is a difference

    def _temperature_target(self) -> str | None:
        return next((t for t in self.targets if self._error_unit(t) == "K"), self.targets[0] if self.targets
                    else None)

    def _steps(self, steps: int) -> str:
        return self._duration(steps) if self.interval_s else f"{steps} step{'s' * (steps != 1)}"

    def _duration(self, steps: int) -> str:
        seconds = steps * (self.interval_s or 0)
        if seconds % 3600 == 0:
            return f"{seconds / 3600:g} h"
        return f"{seconds / 60:g} min"


def _json(metadata: Mapping[str, str], key: str) -> Any:
    try:
        return json.loads(metadata[key]) if key in metadata else None
    except (TypeError, json.JSONDecodeError):
        return None


def _names(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else []


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _horizons(value: Any) -> Horizons:
    """{"1": {"zone_temp_next": 0.3}} -> {1: {...}}; anything unreadable is left out."""
    if not isinstance(value, Mapping):
        return {}
    out: Horizons = {}
    for steps, errors in value.items():
        try:
            h = int(steps)
        except (TypeError, ValueError):
            continue
        if isinstance(errors, Mapping):
            out[h] = {str(t): float(e) for t, e in errors.items() if _finite(e)}
    return dict(sorted(out.items()))


def _number(name: str, value: Any) -> float | None:
    if value is None:
        return None
    if not _finite(value):
        raise CardError(f"closed-loop KPI {name} must be a finite number or null, not {value!r}")
    return float(value)


def _text(data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    return None if value is None else str(value)


def _compare(words: str, unit: str, mine: float, base: float) -> str:
    change = f" ({(mine - base) / base * 100:+.1f} %)" if base else ""
    return f"{words} {figure(mine)} {unit} against {figure(base)} {unit}{change}".replace("  ", " ").strip()


def _kpi_label(key: str) -> str:
    words, unit = KPIS.get(key, (key, ""))
    return f"{words} ({unit})" if unit else words


def figure(value: float | None) -> str:
    """A figure as the card prints it: three significant digits or so, "not measured" for None."""
    if value is None:
        return NOT_MEASURED
    size = abs(value)
    return f"{value:.0f}" if size >= 100 else f"{value:.1f}" if size >= 10 else f"{value:.2f}"


def from_registry(card: Mapping[str, Any] | None, metadata: Mapping[str, str],
                  closed_loop: list[Mapping[str, Any]]) -> ModelCard:
    """The card as the registry row holds it: the stored card (or, for a row registered before cards were
    stored, one built from the metadata) with the newest closed-loop measurement."""
    built = ModelCard.from_dict(card) if card else ModelCard.from_metadata(metadata)
    if not closed_loop:
        return built
    newest = closed_loop[-1]
    measured = ClosedLoop.from_dict({**newest["kpis"], "measured_at": newest.get("at"),
                                     "recorded_by": newest.get("by")})
    return built.with_closed_loop(measured)
