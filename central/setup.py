"""`bacpipes central init`: a central database ready to receive sites.

The same schema as a site (replication needs the same tables on both ends), a DEFAULT partition so a
replicated reading never waits for a missing day, and central's own, longer retention; with an outbox
(`[central] outbox_dsn`), its schema and its subscription to central. Last, the server settings that grow
with the number of sites (`bacpipes.capacity`: raised for `sites`, else checked) and central's slots bounded.
"""

from __future__ import annotations

from bacpipes.capacity import size_central
from bacpipes.db import DatabaseSetup, connect, prepare_database
from bacpipes.partitions import RetentionReport, apply_retention
from bacpipes.replication import link_outbox
from bacpipes.settings import Settings


def init_central(settings: Settings, sites: int | None = None
                 ) -> tuple[DatabaseSetup, RetentionReport, list[str]]:
    setup = prepare_database(settings.database.dsn)
    with connect(settings.database.dsn, autocommit=True) as conn:
        report = apply_retention(conn, days=settings.central.retention_days)
    if settings.central.outbox_dsn:  # what central sends its sites leaves from there (issue 19)
        prepare_database(settings.central.outbox_dsn)
        link_outbox(settings)
    return setup, report, size_central(settings, sites)
