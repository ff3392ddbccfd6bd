"""App users: viewers read, operators may also write to devices and change deployments.

Passwords are stored as scrypt hashes (stdlib `hashlib.scrypt`, with a random salt per user) in
`app_users`; there are no default users. `bacpipes users add` creates them; the demo creates its own.

Logins go through `login`: every attempt is recorded (`app_login_attempts`), and after too many failures
in a window the name and/or the client address is locked for a while (`app_login_locks`), whether or not
the name exists, so neither the message nor the lock tells an attacker which users exist.
`bacpipes users unlock` lifts a lock, `bacpipes users disable` takes a user's access away (the app
re-reads the user's role and state on every run, so an open session loses it at its next interaction).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import os
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import NamedTuple

import psycopg

from bacpipes.errors import UserError

ROLES = ("viewer", "operator")
_N, _R, _P = 2**14, 8, 1  # scrypt cost: ~20 ms and 16 MiB per check on this class of machine
_LOGIN_LOCK = 0x6C6F67696E  # pg advisory lock: counting failures and setting locks, one login at a time
_KEEP_ATTEMPTS = timedelta(days=30)


@dataclass(frozen=True)
class LoginPolicy:
    """`failures` wrong passwords for one name (since its last success), or `address_failures` from one
    address (whatever the names), within `window` lock that name or address for `lockout`."""

    failures: int = 5
    address_failures: int = 20
    window: timedelta = timedelta(minutes=15)
    lockout: timedelta = timedelta(minutes=15)


class Login(NamedTuple):
    role: str | None  # the user's role when the login is accepted
    locked_until: datetime | None = None  # set when refused because the name or the address is locked


def hash_password(password: str) -> str:
    if len(password) < 8:
        raise UserError("a password needs at least 8 characters")
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P)
    return f"scrypt${_N}${_R}${_P}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def check_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
    except ValueError:
        return False
    if scheme != "scrypt":
        return False
    expected = base64.b64decode(digest)
    got = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p),
                         dklen=len(expected))
    return hmac.compare_digest(got, expected)


def add_user(conn: psycopg.Connection, username: str, password: str, role: str) -> None:
    """Create a user, or set a new password and role for an existing one."""
    if role not in ROLES:
        raise UserError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    if not username.strip():
        raise UserError("a username cannot be empty")
    conn.execute(
        "INSERT INTO app_users (username, password_hash, role) VALUES (%s, %s, %s)"
        " ON CONFLICT (username) DO UPDATE SET password_hash = EXCLUDED.password_hash,"
        " role = EXCLUDED.role, disabled_at = NULL",
        (username.strip(), hash_password(password), role),
    )
    conn.commit()


def authenticate(conn: psycopg.Connection, username: str, password: str) -> str | None:
    """The user's role when the password is right and the user is enabled, else None (no hint why)."""
    row = conn.execute(
        "SELECT password_hash, role FROM app_users WHERE username = %s AND disabled_at IS NULL",
        (username.strip(),),
    ).fetchone()
    conn.commit()
    if row is None:
        check_password(password, _dummy_hash())  # the same cost for an unknown user
        return None
    return row[1] if check_password(password, row[0]) else None


@functools.cache
def _dummy_hash() -> str:
    return hash_password(os.urandom(12).hex())


def login(conn: psycopg.Connection, username: str, password: str, address: str,
          policy: LoginPolicy = LoginPolicy()) -> Login:
    """A login attempt from `address`, throttled: the role when accepted; otherwise no role, and
    `locked_until` when the name or the address is locked (then the password is not even checked).

    The attempt is recorded as failed before the password is checked, so parallel guesses are counted
    before any of them finishes; a right one is then marked ok."""
    name = username.strip()
    conn.commit()
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOGIN_LOCK,))
        conn.execute("DELETE FROM app_login_attempts WHERE at < now() - %s", (_KEEP_ATTEMPTS,))
        until = _locked_until(conn, name, address) or _lock_if_due(conn, name, address, policy)
        if until is not None:
            conn.execute("INSERT INTO app_login_attempts (username, address, outcome)"
                         " VALUES (%s, %s, 'locked')", (name, address))
            return Login(None, until)
        attempt = conn.execute("INSERT INTO app_login_attempts (username, address, outcome)"
                               " VALUES (%s, %s, 'failed') RETURNING id", (name, address)).fetchone()[0]
    role = authenticate(conn, name, password)
    with conn.transaction():
        if role is not None:
            conn.execute("UPDATE app_login_attempts SET outcome = 'ok' WHERE id = %s", (attempt,))
            return Login(role)
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOGIN_LOCK,))
        return Login(None, _lock_if_due(conn, name, address, policy))


def _locked_until(conn: psycopg.Connection, name: str, address: str) -> datetime | None:
    return conn.execute(
        "SELECT max(locked_until) FROM app_login_locks WHERE locked_until > now()"
        " AND ((kind = 'user' AND key = %s) OR (kind = 'address' AND key = %s))", (name, address),
    ).fetchone()[0]


def _lock_if_due(conn: psycopg.Connection, name: str, address: str, policy: LoginPolicy) -> datetime | None:
    """Lock the name and/or the address when their recent failures reach the policy's limits."""
    user_failures = conn.execute(
        "SELECT count(*) FROM app_login_attempts WHERE username = %(key)s AND outcome = 'failed'"
        " AND at > greatest(now() - %(window)s,"
        "  (SELECT count_from FROM app_login_locks WHERE kind = 'user' AND key = %(key)s),"
        "  (SELECT max(at) FROM app_login_attempts WHERE username = %(key)s AND outcome = 'ok'))",
        {"key": name, "window": policy.window}).fetchone()[0]
    address_failures = conn.execute(
        "SELECT count(*) FROM app_login_attempts WHERE address = %(key)s AND outcome = 'failed'"
        " AND at > greatest(now() - %(window)s,"
        "  (SELECT count_from FROM app_login_locks WHERE kind = 'address' AND key = %(key)s))",
        {"key": address, "window": policy.window}).fetchone()[0]
    until = None
    for kind, key, due in (("user", name, user_failures >= policy.failures),
                           ("address", address, address_failures >= policy.address_failures)):
        if due:
            until = conn.execute(
                "INSERT INTO app_login_locks (kind, key, locked_until, count_from)"
                " VALUES (%s, %s, now() + %s, now()) ON CONFLICT (kind, key) DO UPDATE"
                " SET locked_until = EXCLUDED.locked_until, count_from = EXCLUDED.count_from"
                " RETURNING locked_until", (kind, key, policy.lockout)).fetchone()[0]
    return until


def current_role(conn: psycopg.Connection, username: str) -> str | None:
    """The user's role now; None when there is no such user or the user is disabled."""
    row = conn.execute("SELECT role FROM app_users WHERE username = %s AND disabled_at IS NULL",
                       (username,)).fetchone()
    return row[0] if row else None


def unlock(conn: psycopg.Connection, *, username: str | None = None, address: str | None = None) -> int:
    """Lift the lock on a name and/or an address (its past failures no longer count); how many were
    locked."""
    lifted = 0
    for kind, key in (("user", username), ("address", address)):
        if key is None:
            continue
        lifted += conn.execute(
            "INSERT INTO app_login_locks (kind, key, locked_until, count_from) VALUES (%s, %s, NULL, now())"
            " ON CONFLICT (kind, key) DO UPDATE SET locked_until = NULL, count_from = now()"
            " RETURNING (SELECT locked_until > now() FROM app_login_locks WHERE kind = %s AND key = %s)",
            (kind, key.strip(), kind, key.strip())).fetchone()[0] or 0
    conn.commit()
    return lifted


def disable(conn: psycopg.Connection, username: str) -> bool:
    """Take a user's access away (an open session loses it at its next interaction); `users add` with
    a new password enables the user again. False when there is no such user."""
    done = conn.execute("UPDATE app_users SET disabled_at = coalesce(disabled_at, now()) WHERE username = %s",
                        (username.strip(),)).rowcount
    conn.commit()
    return done > 0


def list_users(conn: psycopg.Connection) -> list[tuple[str, str, datetime | None, datetime | None]]:
    """(name, role, disabled_at, locked_until if locked now) of every user."""
    rows = conn.execute(
        "SELECT u.username, u.role, u.disabled_at, l.locked_until FROM app_users u"
        " LEFT JOIN app_login_locks l ON l.kind = 'user' AND l.key = u.username AND l.locked_until > now()"
        " ORDER BY u.username").fetchall()
    conn.commit()
    return rows
