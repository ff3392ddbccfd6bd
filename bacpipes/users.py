"""App users: viewers read, operators may also write to devices and change deployments.

Passwords are stored as scrypt hashes (stdlib `hashlib.scrypt`, with a random salt per user) in
`app_users`; there are no default users. `bacpipes users add` creates them; the demo creates its own.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import os

import psycopg

ROLES = ("viewer", "operator")
_N, _R, _P = 2**14, 8, 1  # scrypt cost: ~20 ms and 16 MiB per check on this class of machine


def hash_password(password: str) -> str:
    if len(password) < 8:
        raise ValueError("a password needs at least 8 characters")
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
        raise ValueError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    if not username.strip():
        raise ValueError("a username cannot be empty")
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
