"""`bacpipes central init`: a central database ready to receive sites.

The same schema as a site (replication needs the same tables on both ends), a DEFAULT partition so a
replicated reading never waits for a missing day, and central's own, longer retention.
"""

from __future__ import annotations

from bacpipes.db import DatabaseSetup, connect, prepare_database
from bacpipes.partitions import RetentionReport, apply_retention
from bacpipes.settings import Settings


def init_central(settings: Settings) -> tuple[DatabaseSetup, RetentionReport]:
    setup = prepare_database(settings.database.dsn)
    with connect(settings.database.dsn, autocommit=True) as conn:
        report = apply_retention(conn, days=settings.central.retention_days)
    return setup, report
