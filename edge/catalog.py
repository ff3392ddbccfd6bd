"""The site's point catalogue in PostgreSQL: what discovery found, what the operator chose to poll."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from bacpipes.db import connect
from bacpipes.tagging import auto_tags, refresh_names

if TYPE_CHECKING:
    from edge.bacnet import PeerInfo


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


@dataclass
class DiscoveredDevice:
    peer: PeerInfo
    name: str
    vendor_name: str | None
    model_name: str | None
    location: str | None = None
    points: list[DiscoveredPoint] = field(default_factory=list)
    trend_logs: list[int] = field(default_factory=list)  # instances: history to import, not points


@dataclass(frozen=True, slots=True)
class PollPoint:
    """Everything the poller and publisher need for one point, loaded once at start."""

    point_id: int
    device_id: int
    object_type: str
    object_instance: int
    units: str | None
    dis: str | None
    haystack_name: str | None
    topic: str
    interval_s: float
    qos: int
    acquisition: str = "poll"  # 'cov': subscribed (edge/cov.py), polled only as a check
    cov_confirmed: bool | None = None  # None: the site default ([cov] confirmed)


@dataclass(frozen=True, slots=True)
class PollDevice:
    device_id: int
    address: str
    max_apdu: int
    segmentation: str


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
                        cov_increment, auto_tags, last_seen, missing_since)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, now(), NULL)
ON CONFLICT (site_id, device_id, object_type, object_instance) DO UPDATE SET
    object_name = EXCLUDED.object_name, description = EXCLUDED.description, units = EXCLUDED.units,
    writable = EXCLUDED.writable, commandable = EXCLUDED.commandable,
    device_min_value = EXCLUDED.device_min_value, device_max_value = EXCLUDED.device_max_value,
    resolution = EXCLUDED.resolution, cov_increment = EXCLUDED.cov_increment,
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


def load_poll_plan(
    dsn: str, site_id: str, default_interval_s: float
) -> tuple[list[PollDevice], list[PollPoint]]:
    """Devices and published points (present, publish on) to poll."""
    with connect(dsn) as conn, conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT device_id, address, coalesce(max_apdu, 480) AS max_apdu,"
            " coalesce(segmentation, 'no-segmentation') AS segmentation"
            " FROM device WHERE site_id = %s AND missing_since IS NULL ORDER BY device_id",
            (site_id,),
        )
        devices = [PollDevice(**row) for row in cur.fetchall()]
        cur.execute(
            "SELECT p.point_id, p.device_id, p.object_type, p.object_instance, p.units, p.dis,"
            " p.haystack_name, p.topic, coalesce(p.interval_s, %s) AS interval_s,"
            " coalesce(p.qos, 1) AS qos, p.acquisition, p.cov_confirmed"
            " FROM point p JOIN device d USING (site_id, device_id)"
            " WHERE p.site_id = %s AND p.publish AND p.missing_since IS NULL"
            " AND d.missing_since IS NULL ORDER BY p.device_id, p.point_id",
            (default_interval_s, site_id),
        )
        points = [PollPoint(**row) for row in cur.fetchall()]
    return devices, points
