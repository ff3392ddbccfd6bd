"""What discovery records: the contract between whatever finds devices (the edge agent over BACnet, the
simulator's backfill) and the site's `device`/`point` tables.

The writable/commandable rule lives here so that both sides store the same answer for the same object.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from psycopg.types.json import Jsonb

from bacpipes.db import connect
from bacpipes.tagging import auto_tags, refresh_names

# trend logs are history to import (edge.trendlog), not points to poll
SKIP_TYPES = frozenset({"device", "network-port", "trend-log", "trend-log-multiple"})
# value objects take writes without a priority array; inputs never do
VALUE_TYPES = frozenset({"analog-value", "binary-value", "multi-state-value"})


def is_writable(object_type: str, commandable: bool) -> bool:
    """A point may be written when it has a priority array, or is a value object (written directly)."""
    return commandable or object_type in VALUE_TYPES


@dataclass(frozen=True, slots=True)
class PeerInfo:
    """What an I-Am tells us about a device: where it is and how big a request it takes."""

    device_id: int
    address: str
    max_apdu: int
    segmentation: str
    vendor_id: int


@dataclass
class DiscoveredPoint:
    object_type: str
    object_instance: int
    object_name: str | None
    description: str | None
    units: str | None
    commandable: bool
    writable: bool
    device_min_value: float | None = None  # minPresValue, maxPresValue, resolution, covIncrement
    device_max_value: float | None = None
    resolution: float | None = None
    cov_increment: float | None = None
    # what operators read instead of the number: a multi-state object's state-text (state N is the Nth), a
    # binary object's inactive-text / active-text; and the value a commandable object relinquishes to
    state_text: list[str] | None = None
    inactive_text: str | None = None
    active_text: str | None = None
    relinquish_default: float | None = None


@dataclass
class DiscoveredDevice:
    peer: PeerInfo
    name: str
    vendor_name: str | None
    model_name: str | None
    location: str | None = None
    points: list[DiscoveredPoint] = field(default_factory=list)
    trend_logs: list[int] = field(default_factory=list)  # instances: history to import, not points


_UPSERT_DEVICE = """
INSERT INTO device (site_id, device_id, address, name, vendor_name, vendor_id, model_name,
                    max_apdu, segmentation, last_seen, missing_since)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, now(), NULL)
ON CONFLICT (site_id, device_id) DO UPDATE SET
    address = EXCLUDED.address, name = EXCLUDED.name, vendor_name = EXCLUDED.vendor_name,
    vendor_id = EXCLUDED.vendor_id, model_name = EXCLUDED.model_name, max_apdu = EXCLUDED.max_apdu,
    segmentation = EXCLUDED.segmentation, last_seen = now(), missing_since = NULL
"""

# operator columns (publish, interval_s, qos, user_tags, acquisition, cov_confirmed) are deliberately absent
# from the UPDATE
_UPSERT_POINT = """
INSERT INTO point AS p (site_id, device_id, object_type, object_instance, object_name, description,
                        units, writable, commandable, device_min_value, device_max_value, resolution,
                        cov_increment, state_text, inactive_text, active_text, relinquish_default,
                        auto_tags, last_seen, missing_since)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, now(), NULL)
ON CONFLICT (site_id, device_id, object_type, object_instance) DO UPDATE SET
    object_name = EXCLUDED.object_name, description = EXCLUDED.description, units = EXCLUDED.units,
    writable = EXCLUDED.writable, commandable = EXCLUDED.commandable,
    device_min_value = EXCLUDED.device_min_value, device_max_value = EXCLUDED.device_max_value,
    resolution = EXCLUDED.resolution, cov_increment = EXCLUDED.cov_increment,
    state_text = EXCLUDED.state_text, inactive_text = EXCLUDED.inactive_text,
    active_text = EXCLUDED.active_text, relinquish_default = EXCLUDED.relinquish_default,
    auto_tags = EXCLUDED.auto_tags, last_seen = now(), missing_since = NULL
RETURNING (xmax = 0) AS inserted
"""


def record_discovery(
    dsn: str, site_id: str, devices: list[DiscoveredDevice], answered: list[int]
) -> tuple[int, int]:
    """Upsert devices and points; mark what no longer answers missing. Returns (new, missing).

    `answered` lists every device that sent an I-Am, including ones whose objects could not be read:
    those keep their points as they were rather than being marked missing.
    """
    new = 0
    with connect(dsn) as conn, conn.cursor() as cur:
        for dev in devices:
            peer = dev.peer
            cur.execute(
                _UPSERT_DEVICE,
                (
                    site_id,
                    peer.device_id,
                    peer.address,
                    dev.name,
                    dev.vendor_name,
                    peer.vendor_id,
                    dev.model_name,
                    peer.max_apdu,
                    peer.segmentation,
                ),
            )
            rows = [
                (
                    site_id,
                    peer.device_id,
                    p.object_type,
                    p.object_instance,
                    p.object_name,
                    p.description,
                    p.units,
                    p.writable,
                    p.commandable,
                    p.device_min_value,
                    p.device_max_value,
                    p.resolution,
                    p.cov_increment,
                    p.state_text,
                    p.inactive_text,
                    p.active_text,
                    p.relinquish_default,
                    Jsonb(
                        auto_tags(
                            site_id,
                            dev.name,
                            peer.device_id,
                            p.object_type,
                            p.object_name,
                            p.units,
                            location=dev.location,
                        )
                    ),
                )
                for p in dev.points
            ]
            cur.executemany(_UPSERT_POINT, rows, returning=True)
            while True:
                new += bool(cur.fetchone()[0])
                if not cur.nextset():
                    break
        seen = [d.peer.device_id for d in devices]
        cur.execute(
            "UPDATE point SET missing_since = now() WHERE site_id = %s AND device_id = ANY(%s)"
            " AND missing_since IS NULL AND last_seen < now()",
            (site_id, seen),
        )
        missing = cur.rowcount
        cur.execute(
            "UPDATE device SET missing_since = now() WHERE site_id = %s AND NOT device_id = ANY(%s)"
            " AND missing_since IS NULL",
            (site_id, answered),
        )
        refresh_names(cur, site_id)
    return new, missing
