"""What a write command must satisfy before it may touch a device, and how its values go on the wire.

Pure functions: the executor (`edge.executor`) feeds them a command and the point as the database knows
it, and writes the returned reason, word for word, into the command's `rejected` event.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from bacpypes3.primitivedata import Null

from bacpipes.commands import LOCAL_SOURCES
from bacpipes.settings import WriteSettings


@dataclass(frozen=True, slots=True)
class Target:
    """A point as the executor needs it: where it is, what it takes, and its limits."""

    point_id: int
    name: str
    device_id: int
    address: str
    object_type: str
    object_instance: int
    writable: bool
    commandable: bool
    min_value: float | None = None
    max_value: float | None = None
    ml_min_value: float | None = None
    ml_max_value: float | None = None
    ml_max_step: float | None = None
    present_value: float | None = None  # latest reading, for the ML step limit

    @property
    def objid(self) -> str:
        return f"{self.object_type},{self.object_instance}"


@dataclass(frozen=True, slots=True)
class Pending:
    """A command row as the executor reads it back."""

    id: Any  # uuid.UUID
    point_id: int | None
    release: bool
    value: float | None
    priority: int | None
    source: str
    created_by: str
    not_after: datetime | None
    arrived: str = "local"  # 'replication': sent by central, so remote whatever `source` says


def refusal(
    command: Pending,
    target: Target | None,
    authority: str,
    now: datetime,
    settings: WriteSettings,
) -> str | None:
    """Why `command` must not run, or None. Checks in the order a person would want to hear them."""
    if command.point_id is None:
        return "the command names no point"
    if target is None:
        return f"unknown point {command.point_id}: not a point of this site"
    if command.not_after is not None and now > command.not_after:
        return f"expired: it had to run by {command.not_after.isoformat(timespec='seconds')}"
    # the site's own ML letting go of its priority is always allowed: with the grant gone, a held ML
    # value must not outlive it (inference stepping back, the edge guard)
    local_ml_release = command.release and command.source == "ml" and command.arrived == "local"
    if authority != "remote" and not local_ml_release:
        # how the row arrived decides, not its own label: central may write any source it likes
        if command.arrived != "local":
            return (
                f"control authority is with the site (edge): commands from central (arrived by "
                f"{command.arrived}, labelled {command.source}) need a remote grant"
            )
        if command.source not in LOCAL_SOURCES:
            return (
                f"control authority is with the site (edge): {command.source} commands need a remote grant"
            )
    priority = command.priority
    if priority is None or not 1 <= priority <= 16:
        return f"priority must be 1 to 16, not {priority}"
    if priority <= 2 and not settings.allow_life_safety:
        return f"priority {priority} is reserved for life safety (writes.allow_life_safety is off)"
    if not target.writable:
        return f"point {target.point_id} ({target.name}) is read-only"
    if command.release:
        if not target.commandable:
            return f"point {target.point_id} ({target.name}) has no priority array to release"
        return None
    return _value_refusal(command, target) or (
        _ml_refusal(command, target, settings) if command.source == "ml" else None
    )


def _value_refusal(command: Pending, target: Target) -> str | None:
    value = command.value
    if value is None:
        return "missing value (a write needs a number; to relinquish, send release)"
    if not math.isfinite(value):
        return f"value is not finite: {value}"
    kind = target.object_type.split("-")[0]
    if kind == "binary" and value not in (0, 1):
        return f"a binary point takes 0 or 1, not {value:g}"
    if kind == "multi" and (value != int(value) or value < 1):
        return f"a multi-state point takes a state number 1, 2, ..., not {value:g}"
    if target.min_value is not None and value < target.min_value:
        return f"value {value:g} is below the point's minimum {target.min_value:g}"
    if target.max_value is not None and value > target.max_value:
        return f"value {value:g} is above the point's maximum {target.max_value:g}"
    return None


def _ml_refusal(command: Pending, target: Target, settings: WriteSettings) -> str | None:
    value = command.value
    assert value is not None  # checked by _value_refusal
    if command.priority != settings.ml_priority:
        return f"ML commands write at priority {settings.ml_priority} only, not {command.priority}"
    if target.ml_min_value is None or target.ml_max_value is None:
        return f"point {target.point_id} ({target.name}) has no ML limits: ML may not write it"
    if not target.ml_min_value <= value <= target.ml_max_value:
        return (
            f"value {value:g} is outside the point's ML limits "
            f"{target.ml_min_value:g} to {target.ml_max_value:g}"
        )
    if target.ml_max_step is not None:
        if target.present_value is None:
            return "no present value to measure the ML step from"
        step = abs(value - target.present_value)
        if step > target.ml_max_step:
            return (
                f"change of {step:g} from the present {target.present_value:g} exceeds the ML "
                f"maximum step {target.ml_max_step:g}"
            )
    return None


def wire_value(target: Target, value: float | None, release: bool = False) -> Any:
    """The BACnet value to write: Null relinquishes; binary and multi-state take their own types.

    A release writes Null whatever value its row carries: a release is validated as a release (no
    limits apply to Null), so a value riding along would reach the device unchecked."""
    if release or value is None:
        return Null(())
    kind = target.object_type.split("-")[0]
    if kind == "binary":
        return "active" if value else "inactive"
    if kind == "multi":
        return int(value)
    return float(value)


def slot_value(slot: Any) -> float | None:
    """One PriorityValue of a priority array as a number, or None for an empty (null) slot."""
    if slot is None or getattr(slot, "null", None) is not None:
        return None
    for choice in ("real", "double", "unsigned", "integer", "enumerated", "boolean"):
        value = getattr(slot, choice, None)
        if value is not None:
            return float(value)
    return None


def same_value(a: float | None, b: float | None) -> bool:
    """Equal as the device stores it: a BACnet Real is 32-bit, so 21.1 reads back as 21.100000381."""
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-6)
