"""Which points play which role for a zone's model, and a zone's readings on a regular grid.

Shared by training (central) and inference (edge), so both read a zone the same way. Roles are found by
the controller's object names (`<AHU>-ZN-T`, `<AHU>-ZN-CLG-SP`, …, the virtual building's and many
vendors' convention) with the site's outdoor air temperature (`…-OA-T`) shared by every zone.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import pandas as pd
import polars as pl
import psycopg

from bacpipes.db import connect
from bacpipes.errors import UserError
from bacpipes.readings import load_readings
from bacpipes.settings import Settings

# the points a zone needs, named as `models.features` expects its input columns (a test keeps them equal)
ROLES = ("zone_temp", "cooling_setpoint", "energy_kw", "occupancy", "outdoor_temp")
SUFFIXES = {
    "zone_temp": "ZN-T", "cooling_setpoint": "ZN-CLG-SP", "energy_kw": "CLG-KW", "occupancy": "OCC-PCT",
}
OUTDOOR_SUFFIX = "OA-T"
SITE_POWER_SUFFIX = "MTR-KW"  # the site's electrical demand meter
HVAC_POWER_SUFFIX = "HVAC-KW"  # the site's HVAC electrical demand, where metered (EnergyPlus: SITE-HVAC-KW)


@dataclass(frozen=True)
class Zone:
    name: str  # the equipment prefix, e.g. AHU1
    points: dict[str, int]  # role -> point_id
    ml_min: float | None
    ml_max: float | None
    ml_max_step: float | None = None
    present_setpoint: float | None = None  # the setpoint's latest reading

    @property
    def setpoint(self) -> int:
        return self.points["cooling_setpoint"]


def find_zones(conn: psycopg.Connection, site_id: str) -> list[Zone]:
    rows = conn.execute(
        "SELECT p.point_id, p.object_name, p.ml_min_value, p.ml_max_value, p.ml_max_step, s.value"
        " FROM point p LEFT JOIN point_state s USING (site_id, point_id)"
        " WHERE p.site_id = %s AND p.object_name IS NOT NULL AND p.missing_since IS NULL",
        (site_id,),
    ).fetchall()
    outdoor = [pid for pid, name, *_ in rows if name.endswith(f"-{OUTDOOR_SUFFIX}")]
    if not outdoor:
        return []
    by_zone: dict[str, dict[str, int]] = {}
    setpoints: dict[str, tuple[float | None, ...]] = {}
    for pid, name, *limits in rows:
        prefix, _, suffix = name.partition("-")
        for role, wanted in SUFFIXES.items():
            if suffix == wanted:
                by_zone.setdefault(prefix, {})[role] = pid
                if role == "cooling_setpoint":
                    setpoints[prefix] = tuple(limits)  # ML min, max, step; present value
    return [
        Zone(prefix, {**points, "outdoor_temp": outdoor[0]}, *setpoints.get(prefix, (None,) * 4))
        for prefix, points in sorted(by_zone.items())
        if len(points) == len(SUFFIXES)
    ]


def zone_frame(
    zone: Zone, start: datetime, end: datetime, every: timedelta, settings: Settings,
    conn: psycopg.Connection | None = None,
) -> pl.DataFrame:
    """One row per `every` with each role's mean; occupancy as a 0..1 fraction."""
    long = load_readings(list(zone.points.values()), start, end, every=every, settings=settings,
                         conn=conn)
    role_of = pl.DataFrame({"point_id": list(zone.points.values()), "role": list(zone.points.keys())})
    wide = long.join(role_of, on="point_id").pivot(on="role", index="time", values="value").sort("time")
    missing = [r for r in ROLES if r not in wide.columns]
    if missing:
        return pl.DataFrame(schema={"time": pl.Datetime("us", settings.site.timezone),
                                    **{r: pl.Float64 for r in ROLES}})
    return wide.with_columns(pl.col("occupancy") / 100.0).select(["time", *ROLES])


def hvac_frame(conn: psycopg.Connection, settings: Settings, start: datetime, end: datetime,
               every: timedelta) -> pl.DataFrame | None:
    """The site's HVAC electrical demand (time, hvac_kw) per `every`, or None without such a meter: the
    MPC's outlook turns the zones' thermal energy into electricity with it (`models.outlook`)."""
    row = conn.execute(
        "SELECT point_id FROM point WHERE site_id = %s AND object_name LIKE %s AND missing_since IS NULL"
        " ORDER BY point_id LIMIT 1",
        (settings.site.id, f"%-{HVAC_POWER_SUFFIX}"),
    ).fetchone()
    if row is None:
        return None
    long = load_readings([row[0]], start, end, every=every, settings=settings, conn=conn)
    return long.select("time", pl.col("value").alias("hvac_kw")).sort("time")


def site_hourly(settings: Settings, start: datetime, end: datetime) -> pd.DataFrame:
    """The baseline's input: per hour the site's energy (mean demand x 1 h), outdoor temperature and
    occupancy (mean over zones, 0..1), indexed by tz-aware hour."""
    with connect(settings.database.dsn) as conn:
        zones = find_zones(conn, settings.site.id)
        meter = conn.execute(
            "SELECT point_id FROM point WHERE site_id = %s AND object_name LIKE %s",
            (settings.site.id, f"%-{SITE_POWER_SUFFIX}"),
        ).fetchone()
    if not zones or meter is None:
        raise UserError(f"site {settings.site.id} has no site meter (*-{SITE_POWER_SUFFIX}) or no zones")
    occupancy = [z.points["occupancy"] for z in zones]
    outdoor = zones[0].points["outdoor_temp"]
    hourly = load_readings([meter[0], outdoor, *occupancy], start, end, every="1h", settings=settings)
    role = (pl.when(pl.col("point_id") == meter[0]).then(pl.lit("energy_kwh"))
            .when(pl.col("point_id") == outdoor).then(pl.lit("outdoor_temp_c"))
            .otherwise(pl.lit("occupancy")))
    wide = (hourly.with_columns(role.alias("role"))
            .group_by("time", "role").agg(pl.col("value").mean())
            .pivot(on="role", index="time", values="value").sort("time")
            .with_columns(pl.col("occupancy") / 100.0))
    return wide.to_pandas().set_index("time")[["energy_kwh", "outdoor_temp_c", "occupancy"]]
