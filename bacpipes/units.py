"""Unit symbols for BACnet engineering units: what an operator reads (°C, kW, %) instead of the standard's
enumeration name (`degrees-celsius`).

Discovery stores a point's units as bacpypes3 spells them (`degrees-celsius`); the simulator's backfill and
older rows use the standard's camel case (`degreesCelsius`). Both are looked up in one table, keyed by the
name with case and punctuation dropped. A unit not in the table reads as its name in words, never blank.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

# The units buildings use, by the standard's name (ASHRAE 135 BACnetEngineeringUnits).
_SYMBOLS = {
    # temperature
    "degrees-celsius": "°C", "degrees-fahrenheit": "°F", "degrees-kelvin": "K",
    "delta-degrees-fahrenheit": "Δ°F", "delta-degrees-kelvin": "ΔK",
    "degrees-celsius-per-hour": "°C/h", "degrees-celsius-per-minute": "°C/min",
    "degrees-fahrenheit-per-hour": "°F/h", "degrees-fahrenheit-per-minute": "°F/min",
    # power and energy
    "watts": "W", "kilowatts": "kW", "megawatts": "MW", "milliwatts": "mW", "horsepower": "hp",
    "btus-per-hour": "BTU/h", "kilo-btus-per-hour": "kBTU/h", "tons-refrigeration": "TR",
    "watt-hours": "Wh", "kilowatt-hours": "kWh", "megawatt-hours": "MWh", "joules": "J",
    "kilojoules": "kJ", "megajoules": "MJ", "btus": "BTU", "kilo-btus": "kBTU", "therms": "thm",
    "ton-hours": "TRh", "volt-amperes": "VA", "kilovolt-amperes": "kVA",
    "volt-amperes-reactive": "var", "kilovolt-amperes-reactive": "kvar", "kilovolt-ampere-hours": "kVAh",
    "power-factor": "PF", "watts-per-square-meter": "W/m²", "watts-per-square-foot": "W/ft²",
    # electricity
    "volts": "V", "millivolts": "mV", "kilovolts": "kV", "amperes": "A", "milliamperes": "mA",
    "ohms": "Ω", "kilohms": "kΩ", "hertz": "Hz", "kilohertz": "kHz",
    # ratios
    "percent": "%", "percent-relative-humidity": "%RH", "percent-per-second": "%/s",
    "parts-per-million": "ppm", "parts-per-billion": "ppb", "no-units": "",
    # pressure
    "pascals": "Pa", "kilopascals": "kPa", "hectopascals": "hPa", "bars": "bar", "millibars": "mbar",
    "pounds-force-per-square-inch": "psi", "inches-of-water": "inH₂O", "inches-of-mercury": "inHg",
    "millimeters-of-water": "mmH₂O", "centimeters-of-water": "cmH₂O", "millimeters-of-mercury": "mmHg",
    # flow
    "liters-per-second": "L/s", "liters-per-minute": "L/min", "liters-per-hour": "L/h",
    "cubic-meters-per-second": "m³/s", "cubic-meters-per-minute": "m³/min", "cubic-meters-per-hour": "m³/h",
    "cubic-feet-per-minute": "cfm", "cubic-feet-per-second": "ft³/s", "us-gallons-per-minute": "gpm",
    "us-gallons-per-hour": "gph", "kilograms-per-second": "kg/s", "kilograms-per-hour": "kg/h",
    "pounds-mass-per-hour": "lb/h",
    # speed, length, area, volume
    "meters-per-second": "m/s", "kilometers-per-hour": "km/h", "feet-per-second": "ft/s",
    "feet-per-minute": "fpm", "miles-per-hour": "mph", "meters": "m", "millimeters": "mm",
    "centimeters": "cm", "kilometers": "km", "feet": "ft", "inches": "in", "square-meters": "m²",
    "square-feet": "ft²", "cubic-meters": "m³", "cubic-feet": "ft³", "liters": "L", "us-gallons": "gal",
    # time, rotation
    "seconds": "s", "minutes": "min", "hours": "h", "days": "d", "milliseconds": "ms",
    "revolutions-per-minute": "rpm", "per-hour": "/h", "per-minute": "/min", "per-second": "/s",
    # light, humidity, mass
    "luxes": "lx", "foot-candles": "fc", "candelas": "cd", "lumens": "lm",
    "watts-per-square-meter-degree-kelvin": "W/(m²·K)", "grams-of-water-per-kilogram-dry-air": "g/kg",
    "kilojoules-per-kilogram-dry-air": "kJ/kg", "btus-per-pound-dry-air": "BTU/lb",
    "kilograms": "kg", "grams": "g", "pounds-mass": "lb", "tons": "t",
    "micrograms-per-cubic-meter": "µg/m³", "decibels": "dB", "decibels-a": "dBA",
}  # fmt: skip


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


_BY_KEY = {_key(name): symbol for name, symbol in _SYMBOLS.items()}


def symbol(units: str | None) -> str:
    """The symbol for a BACnet unit name in either spelling; '' for none or no-units; an unknown name in
    words (`foot-pounds` -> 'foot pounds'), so a reading never loses its unit."""
    if not isinstance(units, str) or not units:  # None, or a missing value from a data frame
        return ""
    found = _BY_KEY.get(_key(units))
    if found is not None:
        return found
    return re.sub(r"(?<=[a-z])(?=[A-Z])", " ", units).replace("-", " ").lower()


def with_unit(value: str, units: str | None) -> str:
    """'23.4 °C', '45 %', '3 kW': the symbol after the value ('%' and '°C' spaced like the rest)."""
    unit = symbol(units)
    return f"{value} {unit}" if unit else value


MULTI_STATE_TYPES = frozenset({"multi-state-input", "multi-state-output", "multi-state-value"})
BINARY_TYPES = frozenset({"binary-input", "binary-output", "binary-value"})


def states(object_type: str | None, state_text: Sequence[str] | None, inactive_text: str | None,
           active_text: str | None) -> dict[int, str] | None:
    """A state point's values and their names ({1: 'Off', 2: 'Cool', ...}; {0: 'Off', 1: 'On'}); None for
    an analog point. Without texts from the device, the standard's words: 'inactive'/'active', 'state N'."""
    if object_type in BINARY_TYPES:
        return {0: _text(inactive_text) or "inactive", 1: _text(active_text) or "active"}
    if object_type in MULTI_STATE_TYPES:
        names = state_text if isinstance(state_text, (list, tuple)) else []
        return {n: str(name) for n, name in enumerate(names, start=1)}
    return None


def _text(value: object) -> str | None:
    """A text, or None for none (also pandas' NaN standing for a missing one)."""
    return value if isinstance(value, str) and value else None


def reading_text(value: float | None, units: str | None, object_type: str | None = None,
                 state_text: Sequence[str] | None = None, inactive_text: str | None = None,
                 active_text: str | None = None) -> str:
    """A value as an operator reads it: 'Occupied' for a state point, '23.40 °C' for an analog one,
    '' for no value."""
    if value is None or value != value:  # NaN: no reading
        return ""
    named = states(object_type, state_text, inactive_text, active_text)
    if named is not None:
        return named.get(int(value), f"state {int(value)}")
    return with_unit(f"{value:,.2f}", units)
