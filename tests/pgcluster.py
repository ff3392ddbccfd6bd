"""A throwaway PostgreSQL cluster a test owns, so it can really stop the database and start it again.

The shared server on 5432 cannot be stopped by one test without breaking the others. The cluster is
`bacpipes.cli.servers.PostgresCluster` (the same code `bacpipes demo` runs its databases with) in a temp
dir: as root the server binaries run as `postgres` (runuser) in a directory that user owns. Extra `-c`
settings (e.g. wal_level=logical for replication tests) go to `settings`.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from types import TracebackType

from bacpipes.cli.servers import SERVER_USER, PostgresCluster, find_pg_bin

_found = find_pg_bin()
PG_BIN = Path(os.environ.get("BACPIPES_PG_BIN") or (_found[0] if _found else "/usr/lib/postgresql/15/bin"))

__all__ = ["PG_BIN", "SERVER_USER", "PgCluster"]


class PgCluster(PostgresCluster):
    """One cluster in its own temp dir: `start()` (initdb the first time), `stop()`, `start()` again…

    fsync is off: these clusters die with the test, and a stop/start (even `immediate`) keeps the
    data in the OS cache, which is all an outage test needs. Leaving the `with` block deletes it.
    """

    def __init__(self, settings: dict[str, str] | None = None, port: int | None = None) -> None:
        super().__init__(Path(tempfile.mkdtemp(prefix="bacpipes-pg-")), port=port,
                         settings={"fsync": "off", **(settings or {})}, bin_dir=PG_BIN)

    def __enter__(self) -> PgCluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()
