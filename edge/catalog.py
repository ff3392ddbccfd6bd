"""The site's poll plan from PostgreSQL: the devices and the points the operator chose to poll
(what discovery records is `bacpipes.catalogue`)."""

from __future__ import annotations

from dataclasses import dataclass

from psycopg.rows import dict_row

from bacpipes.db import connect


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
