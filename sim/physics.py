"""The building's physics: RC thermal zones, AHUs under PI control, a chiller plant and a meter.

Integration uses a fixed step of building time, so a seed and a start time give one trajectory
whatever the wall clock does; the server only decides *when* to catch up (``advance_to``). No
value here is noise added at read time: every output follows from the energy balances, which is
what makes the data worth training on (a lower cooling setpoint really costs kWh).

Units: temperatures °C, heat flows kW, capacitance kJ/K, airflow m³/s, energy kWh.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import IntEnum

import numpy as np

from sim.occupancy import OCCUPIED_THRESHOLD, occupancy_fraction
from sim.weather import Weather, humidity_ratio, relative_humidity

STEP_S = 10.0
RHO_CP = 1.206  # kJ/(m³·K), air
RHO = 1.2  # kg/m³
H_FG = 2450.0  # kJ/kg, latent heat of water
INDOOR_W = 0.0105  # design indoor humidity ratio (24 °C, ~55 %RH)
OUTDOOR_CO2 = 420.0  # ppm
KP = 0.6  # PI gain, valve fraction per K
TI_S = 900.0  # PI integral time


class AhuMode(IntEnum):
    """States of the AHU mode multi-state value (BACnet states are 1-based)."""

    OFF = 1
    COOL = 2
    HEAT = 3
    AUTO = 4


@dataclass(frozen=True)
class ZoneParams:
    """One zone and its AHU, drawn per seed within ranges seen on large casino floors."""

    area_m2: float
    ua_kw_k: float  # envelope + infiltration conductance (1/R)
    cap_kj_k: float  # effective thermal capacitance (air, furnishings, inner mass)
    people_per_m2: float  # at peak occupancy
    plug_w_m2: float  # gaming machines, lighting
    glazing_m2: float  # effective solar aperture (area × SHGC)
    oa_m3s: float  # minimum outdoor air when the fan runs
    occ_scale: float  # this floor relative to the site schedule
    airflow_m3s: float  # design supply airflow
    sfp_kw_m3s: float  # specific fan power at design flow
    cool_cap_kw: float
    heat_cap_kw: float
    volume_m3: float

    @classmethod
    def draw(cls, rng: np.random.Generator) -> ZoneParams:
        area = float(rng.uniform(1200, 3000))
        ua = area * float(rng.uniform(1.2, 2.2)) / 1000.0
        people = float(rng.uniform(0.15, 0.30))
        plug = float(rng.uniform(18, 30))
        glazing = area * float(rng.uniform(0.01, 0.03))
        oa = area * float(rng.uniform(1.5, 2.5)) / 1000.0  # casino: 62.1 people + area rates
        # Size the coil for a 33 °C / 65 %RH design day at full house, with a seeded margin.
        internal = area * (people * 0.075 + plug / 1000.0)
        sensible = internal + glazing * 0.9 + ua * 9.0 + oa * RHO_CP * 9.0
        latent = oa * RHO * H_FG * (humidity_ratio(33.0, 0.65) - INDOOR_W) + area * people * 0.055
        airflow = (internal + glazing * 0.9 + ua * 9.0) / (RHO_CP * 10.0)
        cool_cap = (sensible + latent) * float(rng.uniform(1.15, 1.35))
        return cls(
            area_m2=area,
            ua_kw_k=ua,
            cap_kj_k=area * float(rng.uniform(60, 120)),
            people_per_m2=people,
            plug_w_m2=plug,
            glazing_m2=glazing,
            oa_m3s=oa,
            occ_scale=float(rng.uniform(0.85, 1.1)),
            airflow_m3s=airflow,
            sfp_kw_m3s=float(rng.uniform(1.2, 2.0)),
            cool_cap_kw=cool_cap,
            heat_cap_kw=0.25 * cool_cap,
            volume_m3=area * 4.5,
        )


@dataclass
class ZoneInputs:
    """What an operator (over BACnet) can change; the physics reads these every step."""

    cooling_setpoint: float = 24.0
    heating_setpoint: float = 20.0
    occupancy_override: bool = False
    mode: AhuMode = AhuMode.AUTO
    valve_override: float | None = None  # % when commanded, else the PI loop drives the valve


@dataclass
class Zone:
    """State of one zone and its AHU after the last step."""

    params: ZoneParams
    inputs: ZoneInputs = field(default_factory=ZoneInputs)
    temp_c: float = 24.5
    co2_ppm: float = 600.0
    rh_pct: float = 55.0
    occupancy: float = 0.0
    occupied_mode: bool = True
    fan_on: bool = True
    fan_speed: float = 0.0
    fan_kw: float = 0.0
    airflow_m3s: float = 0.0
    supply_air_c: float = 14.0
    valve_pct: float = 0.0  # actual valve position
    valve_auto_pct: float = 0.0  # what the PI loop asks for
    heat_pct: float = 0.0
    cooling_kw: float = 0.0  # coil load, thermal
    latent_kwh: float = 0.0  # moisture the coil has removed so far (latent heat)
    heating_kw: float = 0.0  # electric reheat
    plug_kw: float = 0.0
    _i_cool: float = 0.0
    _i_heat: float = 0.0

    def step(self, dt: float, sched_occ: float, weather: Weather) -> None:
        p, u = self.params, self.inputs
        self.occupancy = min(1.0, sched_occ * p.occ_scale)
        self.occupied_mode = sched_occ >= OCCUPIED_THRESHOLD or u.occupancy_override
        cool_sp = u.cooling_setpoint
        heat_sp = min(u.heating_setpoint, cool_sp - 1.0)
        cooling_on = u.mode in (AhuMode.COOL, AhuMode.AUTO)
        heating_on = u.mode in (AhuMode.HEAT, AhuMode.AUTO)
        t = self.temp_c

        # Fan: always in occupied mode, otherwise cycled by zone demand with 0.5 K hysteresis.
        if u.mode == AhuMode.OFF:
            fan = False
        elif self.occupied_mode:
            fan = True
        else:
            band = -0.5 if self.fan_on else 0.5
            fan = (cooling_on and t > cool_sp + band) or (heating_on and t < heat_sp - band)

        # PI loops with clamped integrators (anti-windup); reset when the fan stops.
        if fan and cooling_on:
            err = t - cool_sp
            self._i_cool = min(1.0, max(0.0, self._i_cool + KP * err * dt / TI_S))
            u_cool = min(1.0, max(0.0, KP * err + self._i_cool))
        else:
            self._i_cool, u_cool = 0.0, 0.0
        if fan and heating_on:
            err = heat_sp - t
            self._i_heat = min(1.0, max(0.0, self._i_heat + KP * err * dt / TI_S))
            u_heat = min(1.0, max(0.0, KP * err + self._i_heat))
        else:
            self._i_heat, u_heat = 0.0, 0.0
        self.valve_auto_pct = 100.0 * u_cool
        if u.valve_override is not None:
            u_cool = min(1.0, max(0.0, u.valve_override / 100.0))
        self.valve_pct = 100.0 * u_cool
        self.heat_pct = 100.0 * u_heat

        # Airflow and fan power (cube law); the fan's power ends up as heat in the air stream.
        self.fan_on = fan
        self.fan_speed = min(1.0, 0.35 + 0.65 * max(u_cool, u_heat)) if fan else 0.0
        self.airflow_m3s = p.airflow_m3s * self.fan_speed
        self.fan_kw = p.airflow_m3s * p.sfp_kw_m3s * self.fan_speed**3
        oa = min(self.airflow_m3s, p.oa_m3s) if fan else 0.0

        people = self.occupancy * p.people_per_m2 * p.area_m2
        self.plug_kw = p.area_m2 * p.plug_w_m2 / 1000.0 * (0.55 + 0.45 * self.occupancy)
        internal = people * 0.075 + self.plug_kw
        solar = p.glazing_m2 * weather.solar_w_m2 / 1000.0

        # Coil: total capacity follows the valve; it first meets the latent load (SHR >= 0.6).
        self.cooling_kw = p.cool_cap_kw * u_cool if fan else 0.0
        self.heating_kw = p.heat_cap_kw * u_heat if fan else 0.0
        latent_demand = (
            oa * RHO * H_FG * max(0.0, weather.humidity_ratio - INDOOR_W) + people * 0.055
        )
        latent_removed = min(latent_demand, 0.4 * self.cooling_kw)
        self.latent_kwh += latent_removed * dt / 3600.0
        if fan:
            t_mix = t + (oa / self.airflow_m3s) * (weather.temp_c - t)
            self.supply_air_c = t_mix + (
                self.fan_kw + self.heating_kw - (self.cooling_kw - latent_removed)
            ) / (RHO_CP * self.airflow_m3s)
            supply_kw = RHO_CP * self.airflow_m3s * (self.supply_air_c - t)
        else:
            self.supply_air_c += (t - self.supply_air_c) * min(1.0, dt / 600.0)
            supply_kw = 0.0

        # Zone energy balance: C dT/dt = (T_out - T)/R + gains + supply air.
        gains = p.ua_kw_k * (weather.temp_c - t) + internal + solar + supply_kw
        self.temp_c = t + gains * dt / p.cap_kj_k

        # CO2: people generate ~0.005 L/s each; outdoor air (or infiltration) dilutes it.
        dilution = oa if fan else p.volume_m3 * 0.2 / 3600.0
        generation = people * 0.005e-3 * 1e6  # ppm·m³/s
        self.co2_ppm += (
            (generation - dilution * (self.co2_ppm - OUTDOOR_CO2)) * dt / p.volume_m3
        )

        # Humidity: what the coil leaves unremoved shows up in the room air.
        if fan:
            w = INDOOR_W + (latent_demand - latent_removed) / (RHO * H_FG * self.airflow_m3s)
        else:
            w = 0.5 * (INDOOR_W + weather.humidity_ratio)
        self.rh_pct = 100.0 * relative_humidity(self.temp_c, w)


@dataclass
class Plant:
    """Chiller, meter and energy accumulator shared by every zone."""

    capacity_kw: float
    load_kw: float = 0.0
    cop: float = 0.0
    chiller_kw: float = 0.0
    fans_kw: float = 0.0
    lighting_plug_kw: float = 0.0
    heating_kw: float = 0.0
    site_kw: float = 0.0
    site_kwh: float = 0.0

    def step(self, dt: float, zones: list[Zone], outdoor_c: float) -> None:
        self.load_kw = sum(z.cooling_kw for z in zones)
        # Condenser heat rejection gets harder as it gets hotter; part load costs efficiency.
        cop_full = max(3.0, 6.0 - 0.12 * (outdoor_c - 26.0))
        if self.load_kw > 0.0:
            plr = max(0.1, self.load_kw / self.capacity_kw)
            self.cop = cop_full * plr / (0.15 + 0.85 * plr)
            self.chiller_kw = self.load_kw / self.cop
        else:
            self.cop, self.chiller_kw = 0.0, 0.0
        self.fans_kw = sum(z.fan_kw for z in zones)
        self.lighting_plug_kw = sum(z.plug_kw for z in zones)
        self.heating_kw = sum(z.heating_kw for z in zones)
        self.site_kw = self.chiller_kw + self.fans_kw + self.lighting_plug_kw + self.heating_kw
        self.site_kwh += self.site_kw * dt / 3600.0


class Building:
    """A whole site: weather, one zone per AHU, the plant; stepped in fixed building time."""

    def __init__(
        self,
        n_zones: int,
        seed: int = 0,
        start: datetime | None = None,
        step_s: float = STEP_S,
    ) -> None:
        if n_zones < 1:
            raise ValueError("a building needs at least one zone")
        self.seed = seed
        self.step_s = step_s
        self.start = start or datetime.now().replace(microsecond=0)
        weather_seq, zone_seq = np.random.SeedSequence(seed).spawn(2)
        # Weather depends on the seed only, not on how many zones there are.
        self.weather = Weather(np.random.default_rng(weather_seq), step_s)
        zone_rng = np.random.default_rng(zone_seq)
        self.zones = [Zone(ZoneParams.draw(zone_rng)) for _ in range(n_zones)]
        self.plant = Plant(capacity_kw=1.1 * sum(z.params.cool_cap_kw for z in self.zones))
        self.steps = 0
        self.time = self.start
        self._step()  # so every output is defined before the first read

    def _step(self) -> None:
        self.steps += 1
        self.time = self.start + timedelta(seconds=self.steps * self.step_s)
        self.weather.step(self.time)
        occ = occupancy_fraction(self.time)
        for zone in self.zones:
            zone.step(self.step_s, occ, self.weather)
        self.plant.step(self.step_s, self.zones, self.weather.temp_c)

    def advance_to(self, t: datetime) -> int:
        """Step until building time t (never backwards); returns the number of steps taken."""
        n = math.floor((t - self.time).total_seconds() / self.step_s)
        for _ in range(max(0, n)):
            self._step()
        return max(0, n)

    def advance(self, seconds: float) -> int:
        return self.advance_to(self.time + timedelta(seconds=seconds))
