"""Edge inference: every interval, the deployed model picks each zone's cooling setpoint.

The model arrives as a `model_deployments` row (replicated from central) carrying the ONNX bytes; it is
loaded through `models.artifact.load` (its bytes hash to the row's sha256, and it was built for this feature
builder's columns, in this order) and swapped in without a restart when a newer row appears. Shadow mode
only logs (`inference_log`); active mode issues `write_commands` with source `ml` at the ML priority,
through the same executor and checks as every other write.

Fail-safe: stale or missing inputs, a refused or failing model, or no model at all: no write. When the
model has made no good decision for `ml.release_after_s` (or is switched off), the ML priority is
released, so the building returns to its own schedule.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import polars as pl
import psycopg

from bacpipes.commands import Command, insert_command
from bacpipes.db import connect
from bacpipes.settings import Settings
from bacpipes.zones import Zone, find_zones, hvac_frame, zone_frame
from edge.guard import latest_deployment, stood_down
from models.artifact import LoadedModel, ModelRefused, load
from models.features import FEATURES, build_features
from models.mpc import MpcConfig, ZoneState, decide, session_predictor
from models.outlook import NotEnoughHistory, Outlook

log = logging.getLogger(__name__)



@dataclass
class Loaded:
    deployment: Any  # uuid of the model_deployments row
    version: str
    mode: str
    model: LoadedModel

    @property
    def session(self) -> Any:
        return self.model.session


class ModelSlot:
    """The model in use; replaced only by a newer deployment that `load` accepts."""

    def __init__(self, site_id: str, name: str) -> None:
        self.site_id, self.name = site_id, name
        self.current: Loaded | None = None
        self.refused: Any = None  # the last deployment refused, so it is reported once

    def refresh(self, conn: psycopg.Connection) -> Loaded | None:
        latest = latest_deployment(conn, self.site_id, self.name)
        if latest is None or latest.mode == "off":
            self.current = None
            return None
        deployment, version, mode = latest.id, latest.version, latest.mode
        if self.current and self.current.deployment == deployment:
            return self.current
        if self.refused == deployment:
            return self.current  # reported once; keep running what was verified before
        # the bytes only for a deployment not seen yet, not every round
        sha256, onnx = conn.execute("SELECT sha256, onnx FROM model_deployments WHERE id = %s",
                                    (deployment,)).fetchone()
        try:
            model = load(bytes(onnx or b""), sha256)
        except ModelRefused as exc:
            log.error("model %s@%s refused, keeping %s: %s", self.name, version,
                      f"version {self.current.version}" if self.current else "none", exc)
            self.refused = deployment
            return self.current
        self.current = Loaded(deployment, version, mode, model)
        log.info("model %s@%s loaded (%s)", self.name, version, mode)
        return self.current


@dataclass
class Decision:
    zone: str
    point_id: int
    setpoint: float | None = None
    energy_kw: float | None = None
    zone_temp: float | None = None
    command_id: Any = None
    detail: str | None = None
    step_back: bool = False  # no one expected over the horizon: the building's own schedule (its setback)
    waiting: bool = False  # inputs not there yet (an agent just started): worth another try within a minute


@dataclass
class EdgeInference:
    settings: Settings
    slot: ModelSlot = field(init=False)
    last_good: dict[int, datetime] = field(default_factory=dict)  # per setpoint point: last active write
    holding: set[int] = field(default_factory=set)  # setpoints where ML holds the ML priority
    # the MPC's outlook (models.outlook), learnt from the site's own history at most once a day
    outlook: Outlook | None = None
    outlook_note: str = "not learnt yet"
    outlook_learnt: datetime | None = None  # when it was (last tried), in the caller's clock

    def __post_init__(self) -> None:
        self.slot = ModelSlot(self.settings.site.id, self.settings.ml.model)

    def step(self, now: datetime | None = None) -> list[Decision]:
        """One round for every zone; never raises for a zone's trouble, only logs and records it."""
        now = now or datetime.now(UTC)
        with connect(self.settings.database.dsn) as conn:
            try:
                model = self.slot.refresh(conn)
            except Exception as exc:  # a model that will not even load: treated as no model
                log.error("model %s could not be loaded: %s", self.settings.ml.model, exc)
                model = None
            if model is not None and stood_down(conn, self.settings.site.id, model.deployment):
                model = None  # the edge guard tripped on this deployment, released its writes (edge/guard.py)
                self.holding.clear()
            decisions = []
            arm = _ab_arm(conn, self.settings.site.id, now)
            for zone in find_zones(conn, self.settings.site.id):
                if model is None:
                    decision = Decision(zone.name, zone.setpoint, detail="no model deployed")
                elif model.mode == "active" and arm == "baseline":
                    decision = Decision(zone.name, zone.setpoint, detail="A/B: a baseline period")
                    self.last_good.pop(zone.setpoint, None)  # give the priority back now
                else:
                    decision = self._decide(conn, zone, model, now)
                    if decision.step_back:
                        self.last_good.pop(zone.setpoint, None)  # give the priority back now
                if model and model.mode == "active" and decision.setpoint is not None:
                    decision.command_id = self._write(conn, zone, model, decision, now)
                self._release_if_due(conn, zone, model, now)
                if model:
                    self._log(conn, model, decision, now)
                decisions.append(decision)
            conn.commit()
        return decisions

    def _decide(self, conn: psycopg.Connection, zone: Zone, model: Loaded, now: datetime) -> Decision:
        ml = self.settings.ml
        decision = Decision(zone.name, zone.setpoint)
        if zone.ml_min is None or zone.ml_max is None:
            decision.detail = "the setpoint has no ML limits"
            return decision
        every = timedelta(seconds=ml.interval_s)
        window = max(3 * every, timedelta(seconds=ml.stale_after_s) + every)  # a row and its lag
        frame = zone_frame(zone, now - window, now, every, self.settings, conn)
        if frame.is_empty() or (now - frame["time"].max()).total_seconds() > ml.stale_after_s:
            decision.detail, decision.waiting = "stale or missing inputs", True
            return decision
        # a reading holds until the next one, as on the controller, within the window (stale_after_s): an
        # interval with no reading of a role (a slower point; the minutes between a site's history and its
        # agent's first polls) takes the last one, so the newest row has its lag
        frame = frame.upsample("time", every=every).fill_null(strategy="forward")
        features = build_features(frame, self.settings.site.timezone, with_targets=False).tail(1)
        if features.is_empty():
            decision.detail, decision.waiting = "incomplete inputs", True
            return decision
        # the receding-horizon policy (models.mpc): trajectories within the ML limits and step from the
        # present setpoint (what the executor would accept); only the first move is written. With an
        # outlook: forecast outdoor temperature and occupancy, comfort bound in occupied steps only, and
        # the objective in HVAC electricity; without one (too little history): the present held, every
        # step occupied, the zone's cooling as the objective
        row = features.select(FEATURES).to_numpy()[0]
        at = features["time"][0]  # the newest complete instant (the newest bucket may still be partial)
        energy = frame.filter(pl.col("time") <= at)["energy_kw"].drop_nulls()
        if energy.is_empty():
            decision.detail = "incomplete inputs"
            return decision
        outlook = self._outlook(conn, now)
        forecast = occupied = price = None
        if outlook is not None:
            forecast, occupied, price = outlook.ahead(zone.name, at, ml.mpc_horizon_steps,
                                                      float(row[FEATURES.index("outdoor_temp")]))
            if not any(occupied):  # nights and weekends: the setback is the schedule's, not the model's
                decision.step_back = True
                hours = ml.mpc_horizon_steps * ml.interval_s / 3600
                decision.detail = (f"unoccupied for the next {hours:g} h (outlook: {self.outlook_note}):"
                                   " the building's own schedule")
                return decision
        state = ZoneState(row, float(energy[-1]), zone.present_setpoint, zone.ml_min, zone.ml_max,
                          zone.ml_max_step, forecast, occupied)
        config = MpcConfig(horizon_steps=ml.mpc_horizon_steps, every_s=ml.interval_s,
                           step_c=ml.candidate_step_c, margin_c=ml.mpc_margin_c,
                           change_cost=ml.mpc_change_cost)
        try:
            [plan] = decide(session_predictor(model.session), [state], (ml.comfort_low_c, ml.comfort_high_c),
                            config, None if price is None else price.tolist())
        except Exception as exc:
            decision.detail = f"model failed: {exc}"
            return decision
        decision.setpoint, decision.energy_kw, decision.zone_temp = (
            plan.setpoint, plan.energy_kw, plan.zone_temp
        )
        decision.detail = (f"outlook: {self.outlook_note}" if outlook is not None
                           else f"no outlook ({self.outlook_note}): present values held, every step occupied")
        return decision

    def _outlook(self, conn: psycopg.Connection, now: datetime) -> Outlook | None:
        """The cached outlook, learnt again once a day (a failed try again after an hour): the last
        `ml.outlook_history_days` of every zone at the inference interval, and the site's HVAC meter."""
        ml = self.settings.ml
        if self.outlook_learnt is not None and now >= self.outlook_learnt:
            due = timedelta(days=1) if self.outlook is not None else timedelta(hours=1)
            if now - self.outlook_learnt < due:
                return self.outlook
        self.outlook_learnt = now
        every = timedelta(seconds=ml.interval_s)
        start = now - timedelta(days=ml.outlook_history_days)
        try:
            with conn.transaction():  # a savepoint: a failed read must not abort the round's transaction
                zones = find_zones(conn, self.settings.site.id)
                frames = {z.name: zone_frame(z, start, now, every, self.settings, conn) for z in zones}
                site = hvac_frame(conn, self.settings, start, now, every)
            self.outlook = Outlook.learn(frames, site, every_s=ml.interval_s,
                                         timezone=self.settings.site.timezone, min_days=ml.outlook_min_days)
        except NotEnoughHistory as exc:
            self.outlook, self.outlook_note = None, str(exc)
            return None
        except Exception as exc:  # never let the outlook stop inference: run without it
            log.exception("the MPC outlook could not be learnt")
            self.outlook, self.outlook_note = None, f"outlook failed: {exc}"
            return None
        weights = "HVAC meter" if self.outlook.elec_per_kw is not None else "no HVAC meter, weights 1"
        self.outlook_note = f"{self.outlook.days:.1f} days of history, {weights}"
        log.info("MPC outlook learnt: %s", self.outlook_note)
        return self.outlook

    def _write(self, conn: psycopg.Connection, zone: Zone, model: Loaded, decision: Decision,
               now: datetime) -> Any:
        priority = self.settings.writes.ml_priority
        command_id = insert_command(conn, Command(
            self.settings.site.id, zone.setpoint, decision.setpoint, priority=priority,
            source="ml", created_by=f"ml:{self.settings.ml.model}@{model.version}",
            reason=f"predicted {decision.energy_kw:.1f} kW at {decision.zone_temp:.1f} °C",
            not_after=now + timedelta(seconds=self.settings.ml.interval_s),
        ))
        self.last_good[zone.setpoint] = now
        self.holding.add(zone.setpoint)
        return command_id

    def _release_if_due(self, conn: psycopg.Connection, zone: Zone, model: Loaded | None,
                        now: datetime) -> None:
        if zone.setpoint not in self.holding:
            return
        last = self.last_good.get(zone.setpoint)  # None: stepped back on purpose (A/B baseline period)
        fresh = last is not None and (now - last).total_seconds() < self.settings.ml.release_after_s
        if model and model.mode == "active" and fresh:
            return
        insert_command(conn, Command(
            self.settings.site.id, zone.setpoint, None, priority=self.settings.writes.ml_priority,
            release=True, source="ml", created_by=f"ml:{self.settings.ml.model}",
            reason="ML stepped back: building schedule",
        ))
        self.holding.discard(zone.setpoint)
        log.info("released the ML priority of point %s", zone.setpoint)

    def _log(self, conn: psycopg.Connection, model: Loaded, d: Decision, now: datetime) -> None:
        conn.execute(
            "INSERT INTO inference_log (site_id, at, point_id, model, version, mode, setpoint,"
            " predicted_energy_kw, predicted_zone_temp, command_id, detail)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
            (self.settings.site.id, now, d.point_id, self.settings.ml.model, model.version, model.mode,
             d.setpoint, d.energy_kw, d.zone_temp, d.command_id, d.detail),
        )


def _ab_arm(conn: psycopg.Connection, site_id: str, now: datetime) -> str | None:
    row = conn.execute(
        "SELECT arm FROM ab_schedule WHERE site_id = %s AND period_start <= %s AND period_end > %s",
        (site_id, now, now),
    ).fetchone()
    return row[0] if row else None
