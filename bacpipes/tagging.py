"""Haystack-style tags for a BACnet point, and the names and topic derived from them.

Tags are guessed from the device name, the object name's tokens, the object type and the units;
an operator's own tags (point.user_tags) always win over the guess.
"""

from __future__ import annotations

import re
from typing import Any

from bacpipes.contracts import object_type_token, reading_topic, topic_segment

_EQUIP = re.compile(r"^\s*([A-Za-z]+)[-_ ]?(\d+)")

_UNIT_QUANTITY = {
    "degrees-celsius": "temp",
    "degrees-fahrenheit": "temp",
    "percent": "percent",
    "percent-relative-humidity": "humidity",
    "kilowatts": "power",
    "watts": "power",
    "kilowatt-hours": "energy",
    "parts-per-million": "co2",
    "liters-per-second": "flow",
    "cubic-meters-per-hour": "flow",
    "pascals": "pressure",
}

# object-name token -> (tag, value); the first matching token of each tag wins
_TOKENS: dict[str, tuple[str, str]] = {
    "ZN": ("subject", "zone-air"),
    "ZONE": ("subject", "zone-air"),
    "SA": ("subject", "discharge-air"),
    "DA": ("subject", "discharge-air"),
    "RA": ("subject", "return-air"),
    "OA": ("subject", "outside-air"),
    "CHLR": ("subject", "chiller"),
    "CHW": ("subject", "chilled-water"),
    "SITE": ("subject", "site-elec"),
    "FAN": ("subject", "fan"),
    "VLV": ("subject", "valve"),
    "DPR": ("subject", "damper"),
    "OCC": ("subject", "occupancy"),
    "MODE": ("subject", "mode"),
    "CLG": ("qualifier", "cooling"),
    "HTG": ("qualifier", "heating"),
    "SP": ("function", "sp"),
    "STS": ("function", "sensor"),
    "CMD": ("function", "cmd"),
}

_FUNCTION_BY_TYPE = {
    "analog-input": "sensor",
    "binary-input": "sensor",
    "multi-state-input": "sensor",
    "analog-output": "cmd",
    "binary-output": "cmd",
    "multi-state-output": "cmd",
}


def auto_tags(
    site_id: str,
    device_name: str | None,
    device_id: int,
    object_type: str,
    object_name: str | None,
    units: str | None,
    location: str | None = None,
) -> dict[str, Any]:
    tags: dict[str, Any] = {"site": site_id}
    if location:
        tags["location"] = location  # the controller's BACnet location property
    match = _EQUIP.match(device_name or "")
    if match:
        tags["equipType"] = match.group(1).lower()
        tags["equipId"] = match.group(2)
    for token in re.split(r"[-_ .]+", (object_name or "").upper()):
        if token in _TOKENS:
            key, value = _TOKENS[token]
            tags.setdefault(key, value)
    if units in _UNIT_QUANTITY:
        tags["quantity"] = _UNIT_QUANTITY[units]
    tags.setdefault(
        "function", _FUNCTION_BY_TYPE.get(object_type, "sp" if "SP" in (object_name or "") else "point")
    )
    tags["deviceId"] = device_id
    return tags


def equip_label(tags: dict[str, Any], device_name: str | None, device_id: int) -> str:
    """`{equipType}_{equipId}` for tagged points; otherwise the device's name."""
    if tags.get("equipType") and tags.get("equipId"):
        return f"{tags['equipType']}_{tags['equipId']}"
    return topic_segment(device_name or f"device_{device_id}")


def describe(
    tags: dict[str, Any],
    *,
    device_name: str | None,
    device_id: int,
    object_type: str,
    object_instance: int,
    object_name: str | None,
    description: str | None,
) -> tuple[str, str, str]:
    """(haystack_name, dis, topic) for a point, from its merged tags."""
    equip = equip_label(tags, device_name, device_id)
    parts = [tags.get(k) for k in ("subject", "qualifier", "quantity", "function")]
    body = ".".join(p for p in parts if p) or topic_segment(object_name or f"{object_type}{object_instance}")
    haystack_name = f"{tags.get('site', '')}.{equip}.{body}"
    dis = f"{device_name or equip} {description or object_name or body}"
    topic = reading_topic(str(tags.get("site", "")), equip, object_type, object_instance)
    return haystack_name, dis, topic


def refresh_names(cur: Any, site_id: str) -> None:
    """Recompute haystack name, display name and topic from auto tags overlaid by user tags.

    Two points with the same tags would share a haystack name; the later ones get their BACnet
    object id appended, so the name stays a unique handle for people and models.
    """
    cur.execute(
        "SELECT p.point_id, p.device_id, d.name AS device_name, p.object_type, p.object_instance,"
        " p.object_name, p.description, p.auto_tags || p.user_tags AS tags,"
        " p.haystack_name, p.dis, p.topic"
        " FROM point p JOIN device d USING (site_id, device_id)"
        " WHERE p.site_id = %s ORDER BY p.device_id, p.object_type, p.object_instance",
        (site_id,),
    )
    updates = []
    taken: set[str] = set()
    for pid, device_id, device_name, otype, inst, oname, desc, tags, *current in cur.fetchall():
        haystack, dis, topic = describe(
            tags,
            device_name=device_name,
            device_id=device_id,
            object_type=otype,
            object_instance=inst,
            object_name=oname,
            description=desc,
        )
        if haystack in taken:
            haystack = f"{haystack}.{object_type_token(otype)}{inst}"
        taken.add(haystack)
        if [haystack, dis, topic] != current:
            updates.append((haystack, dis, topic, site_id, pid))
    cur.executemany(
        "UPDATE point SET haystack_name = %s, dis = %s, topic = %s WHERE site_id = %s AND point_id = %s",
        updates,
    )
