"""A throwaway PostgreSQL cluster a test owns, so it can really stop the database and start it again.

The shared server on 5432 cannot be stopped by one test without breaking the others. The cluster is
`bacpipes.cli.servers.PostgresCluster` (the same code `bacpipes demo` runs its databases with) in a temp
dir: as root the server binaries run as `postgres` (runuser) in a directory that user owns. Extra `-c`
settings (e.g. wal_level=logical for replication tests) go to `settings`.

initdb runs once per test process: every cluster's data directory is a copy of that first one (initdb
took ~2-4 s a cluster, and the replication tests start three per test). A copy is what initdb would have
made, but for the system identifier, which the clusters then share: logical replication does not use it
(the apply worker calls IDENTIFY_SYSTEM and ignores the answer), nor does our code. The clusters live in
/dev/shm where it has room (a RAM disk: initdb 1 s instead of 5 on a loaded CI disk, and an outage test's
writes cost no I/O); the server and its settings are the same either way.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

from bacpipes.cli.servers import SERVER_USER, PostgresCluster, find_pg_bin
from bacpipes.pg_binaries import give_to_server_user

_found = find_pg_bin()
PG_BIN = Path(os.environ.get("BACPIPES_PG_BIN") or (_found[0] if _found else "/usr/lib/postgresql/15/bin"))

__all__ = ["PG_BIN", "SERVER_USER", "PgCluster"]

SHM = Path("/dev/shm")
_template: Path | None = None
_template_lock = threading.Lock()


@contextmanager
def server_user_folder(prefix: str) -> Iterator[Path]:
    """A temporary folder the server's user owns (pgBackRest's repository, a restored data directory),
    outside pytest's tmp_path, which that user cannot reach when we are root; removed afterwards."""
    directory = Path(tempfile.mkdtemp(prefix=prefix))
    give_to_server_user(directory)
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _cluster_dir(prefix: str) -> Path:
    """A new folder for a cluster: in /dev/shm when it has 4 GB free (a container's default 64 MB does not),
    else in the temp dir."""
    try:
        stat = os.statvfs(SHM)
        roomy = os.access(SHM, os.W_OK) and stat.f_bavail * stat.f_frsize >= 4 << 30
    except OSError:
        roomy = False
    return Path(tempfile.mkdtemp(prefix=prefix, dir=SHM if roomy else None))


def _initialised_data(bin_dir: Path) -> Path:
    """The data directory of one cluster initdb'd by this process (made the first time it is asked for)."""
    global _template
    with _template_lock:
        if _template is None:
            root = _cluster_dir("bacpipes-pg-template-")
            atexit.register(shutil.rmtree, root, ignore_errors=True)
            PostgresCluster(root, bin_dir=bin_dir).init(fsync=False)
            _template = root / "data"
        return _template


class PgCluster(PostgresCluster):
    """One cluster in its own temp dir: `start()` (initdb the first time), `stop()`, `start()` again…

    fsync is off: these clusters die with the test, and a stop/start (even `immediate`) keeps the
    data in the OS cache, which is all an outage test needs. Leaving the `with` block deletes it.
    """

    def __init__(self, settings: dict[str, str] | None = None, port: int | None = None) -> None:
        super().__init__(_cluster_dir("bacpipes-pg-"), port=port,
                         settings={"fsync": "off", **(settings or {})}, bin_dir=PG_BIN)

    def init(self, fsync: bool = False) -> PgCluster:
        """A copy of this process's initdb'd data directory (see the module's docstring): never synced, as
        these clusters die with the test."""
        self.check_reachable()
        subprocess.run(["cp", "-a", str(_initialised_data(self.bin_dir)), str(self.data)], check=True,
                       timeout=120)
        if self.hba is not None:
            (self.data / "pg_hba.conf").write_text(self.hba)
            give_to_server_user(self.data / "pg_hba.conf")
        return self

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
