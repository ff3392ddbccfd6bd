"""Outdoor conditions for a hot, humid coastal site (Macau, 22.2 °N).

Temperature is a diurnal cosine plus a seeded AR(1) deviation, so days differ the way real weather
does while a seed still reproduces them exactly. Solar irradiance follows the sun's elevation for
the site's latitude and date (so it is zero at night and peaks near solar noon), dimmed by a slow
seeded cloud process.
"""

from __future__ import annotations

import math
from datetime import datetime

import numpy as np

LATITUDE_DEG = 22.2
LONGITUDE_DEG = 113.55
UTC_OFFSET_H = 8.0

MEAN_TEMP_C = 26.0
DIURNAL_AMPLITUDE_K = 4.0
PEAK_HOUR = 15.0
DEVIATION_TAU_S = 3 * 3600.0
DEVIATION_SIGMA_K = 1.2
CLOUD_TAU_S = 45 * 60.0


def hour_of_day(t: datetime) -> float:
    return t.hour + t.minute / 60.0 + t.second / 3600.0


def clear_sky_irradiance(t: datetime) -> float:
    """Global horizontal irradiance (W/m²) under a clear sky, from the sun's elevation.

    Meinel's air-mass attenuation keeps mornings and evenings weak, as they are, rather than a
    plain sine that would over-heat the zones at 07:00.
    """
    doy = t.timetuple().tm_yday
    declination = math.radians(23.45) * math.sin(2 * math.pi * (284 + doy) / 365.0)
    solar_hour = hour_of_day(t) + (LONGITUDE_DEG - 15.0 * UTC_OFFSET_H) / 15.0
    hour_angle = math.radians(15.0 * (solar_hour - 12.0))
    lat = math.radians(LATITUDE_DEG)
    sin_alt = math.sin(lat) * math.sin(declination) + math.cos(lat) * math.cos(
        declination
    ) * math.cos(hour_angle)
    if sin_alt <= 0.01:
        return 0.0
    air_mass = 1.0 / sin_alt
    return 1353.0 * sin_alt * 0.7 ** (air_mass**0.678)


def humidity_ratio(temp_c: float, rh: float) -> float:
    """kg water per kg dry air at sea level (Magnus saturation pressure)."""
    p_sat = 0.61094 * math.exp(17.625 * temp_c / (temp_c + 243.04))
    p_v = max(0.0, min(1.0, rh)) * p_sat
    return 0.622 * p_v / (101.325 - p_v)


def relative_humidity(temp_c: float, w: float) -> float:
    """Fraction 0..1 for a humidity ratio at a temperature (inverse of humidity_ratio)."""
    p_v = w * 101.325 / (0.622 + w)
    p_sat = 0.61094 * math.exp(17.625 * temp_c / (temp_c + 243.04))
    return max(0.0, min(1.0, p_v / p_sat))


class Weather:
    """Seeded outdoor state, advanced in the building's fixed steps."""

    def __init__(self, rng: np.random.Generator, step_s: float) -> None:
        self._rng = rng
        self._phi_t = math.exp(-step_s / DEVIATION_TAU_S)
        self._phi_c = math.exp(-step_s / CLOUD_TAU_S)
        self._deviation = float(rng.normal(0.0, DEVIATION_SIGMA_K))
        self._cloud_state = float(rng.normal(0.0, 1.0))
        self.temp_c = MEAN_TEMP_C
        self.rh = 0.8
        self.solar_w_m2 = 0.0
        self.cloud = 0.0

    def step(self, t: datetime) -> None:
        """Advance the random processes one step and recompute conditions at building time t."""
        noise_t, noise_c = self._rng.standard_normal(2)
        self._deviation = self._phi_t * self._deviation + DEVIATION_SIGMA_K * math.sqrt(
            1 - self._phi_t**2
        ) * float(noise_t)
        self._cloud_state = self._phi_c * self._cloud_state + math.sqrt(
            1 - self._phi_c**2
        ) * float(noise_c)
        self.cloud = 1.0 / (1.0 + math.exp(-2.0 * (self._cloud_state - 0.3)))
        diurnal = DIURNAL_AMPLITUDE_K * math.cos(2 * math.pi * (hour_of_day(t) - PEAK_HOUR) / 24.0)
        self.temp_c = MEAN_TEMP_C + diurnal + self._deviation - 1.0 * self.cloud
        self.rh = min(0.99, max(0.45, 0.80 - 0.035 * (self.temp_c - MEAN_TEMP_C) + 0.05 * self.cloud))
        self.solar_w_m2 = clear_sky_irradiance(t) * (1.0 - 0.75 * self.cloud)

    @property
    def humidity_ratio(self) -> float:
        return humidity_ratio(self.temp_c, self.rh)
