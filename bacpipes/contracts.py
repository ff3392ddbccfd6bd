"""Wire contracts shared by the edge publisher, the ingester and central: topics and payloads."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import orjson

Quality = Literal["good", "uncertain", "bad"]

_TOPIC_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def topic_segment(text: str) -> str:
    """MQTT wildcards and separators must never leak into a topic level."""
    return _TOPIC_UNSAFE.sub("_", text.strip()).strip("_") or "_"


def object_type_token(object_type: str) -> str:
    """'analog-input' -> 'analogInput' (the BACnet identifier spelling used in topics).

    A vendor's own type is known by its number: '513' -> 'proprietary513_', so instance 5 of it is
    'proprietary513_5', never confused with instance 135 of type 5.
    """
    if object_type.isdigit():
        return f"proprietary{object_type}_"
    head, *rest = object_type.split("-")
    return head + "".join(part.capitalize() for part in rest)


def reading_topic(site_id: str, equip: str, object_type: str, instance: int) -> str:
    return (
        f"{topic_segment(site_id)}/{topic_segment(equip)}/"
        f"{object_type_token(object_type)}{instance}/presentValue"
    )


def reading_filter(site_id: str) -> str:
    """Subscription filter matching every reading of a site (and nothing of the agent's own)."""
    return f"{topic_segment(site_id)}/+/+/presentValue"


def batch_topic(site_id: str, equip: str) -> str:
    """One message per equipment and poll, for consumers that prefer fewer, larger messages."""
    return f"{topic_segment(site_id)}/{topic_segment(equip)}/batch"


def status_topic(site_id: str) -> str:
    return f"{topic_segment(site_id)}/_bacpipes/status"


def health_topic(site_id: str) -> str:
    return f"{topic_segment(site_id)}/_bacpipes/health"


@dataclass(frozen=True, slots=True)
class Reading:
    """One polled value, as published on the point's topic."""

    point_id: int
    value: float | int | str | None
    timestamp: datetime  # aware, in the site's zone: consumers see local time with its offset
    units: str | None
    quality: Quality
    dis: str | None
    haystack_name: str | None

    def as_dict(self) -> dict:
        value = self.value
        if isinstance(value, float) and not math.isfinite(value):
            value = None  # JSON has no NaN; quality already says it is bad
        return {
            "value": value,
            "timestamp": self.timestamp.isoformat(timespec="milliseconds"),
            "units": self.units,
            "quality": self.quality,
            "dis": self.dis,
            "haystackName": self.haystack_name,
            "pointId": self.point_id,
        }

    def payload(self) -> bytes:
        return _dumps(self.as_dict())


def batch_payload(readings: list[Reading]) -> bytes:
    return _dumps({"readings": [r.as_dict() for r in readings]})


def _dumps(body: dict[str, Any]) -> bytes:
    """Compact JSON by orjson, the parser the ingester uses too (a 100-reading batch: ~5x faster).

    It decodes to what `json.dumps(body, separators=(",", ":"))` wrote, value for value; the bytes differ
    only where JSON allows two spellings: text as UTF-8 rather than \\u escapes, and small floats (1e-05
    is 0.00001, 1e-07 is 1e-7). What orjson refuses (an integer past 64 bits, a lone surrogate) is left to
    `json`, as before.
    """
    try:
        return orjson.dumps(body)
    except orjson.JSONEncodeError:
        return json.dumps(body, separators=(",", ":")).encode()
