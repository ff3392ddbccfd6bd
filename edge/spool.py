"""A durable FIFO of outgoing MQTT messages in SQLite.

Every reading is written here before it is handed to MQTT and deleted only once the broker has
acknowledged it, so neither a broker outage nor a crash of the agent loses data. SQLite in WAL mode
gives atomic batches and crash safety without a service to run.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spool (
    -- AUTOINCREMENT: ids are never reused after the table empties, so a reader's "after_id" cursor
    -- cannot skip rows written later with a smaller id
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    topic       TEXT    NOT NULL,
    payload     BLOB    NOT NULL,
    qos         INTEGER NOT NULL,
    retain      INTEGER NOT NULL,
    enqueued_at REAL    NOT NULL
)
"""


class SpoolMessage(NamedTuple):
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False


class Spool:
    """Thread-safe: the poller thread appends while the publisher's drain thread reads and deletes.

    One connection behind a lock rather than a connection per thread: SQLite serialises writers
    anyway, and one connection keeps the in-memory row count exact.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # sqlite3's default transaction handling: DML opens a transaction, `with conn:` commits it (or
        # rolls back), so each batch is exactly one commit
        self._conn = sqlite3.connect(self.path, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        # FULL (fsync per commit) also survives power loss, which edge boxes in plant rooms see;
        # commits are per batch, so the cost is small
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute(_SCHEMA)
        self._count: int = self._conn.execute("SELECT count(*) FROM spool").fetchone()[0]

    def put_many(self, messages: Iterable[SpoolMessage]) -> int:
        """Append all messages atomically (all or none); returns how many."""
        now = time.time()
        rows = [(m.topic, bytes(m.payload), int(m.qos), int(bool(m.retain)), now) for m in messages]
        if not rows:
            return 0
        with self._lock:
            with self._conn:
                self._conn.executemany(
                    "INSERT INTO spool (topic, payload, qos, retain, enqueued_at)"
                    " VALUES (?, ?, ?, ?, ?)",
                    rows,
                )
            self._count += len(rows)
        return len(rows)

    def peek(self, limit: int, after_id: int = 0) -> list[tuple[int, SpoolMessage]]:
        """The oldest `limit` rows with id > after_id, oldest first; nothing is removed."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT id, topic, payload, qos, retain FROM spool WHERE id > ? ORDER BY id LIMIT ?",
                (after_id, limit),
            ).fetchall()
        return [(r[0], SpoolMessage(r[1], r[2], r[3], bool(r[4]))) for r in rows]

    def delete(self, ids: Iterable[int]) -> int:
        """Remove rows (missing ids are ignored: an ack may arrive for a row already deleted)."""
        params = [(i,) for i in ids]
        if not params:
            return 0
        with self._lock:
            with self._conn:
                deleted = self._conn.executemany("DELETE FROM spool WHERE id = ?", params).rowcount
            self._count -= deleted
        return deleted

    def oldest_age_s(self) -> float | None:
        """Age of the oldest row: how far behind the broker is, for health reporting."""
        with self._lock:
            row = self._conn.execute("SELECT min(enqueued_at) FROM spool").fetchone()
        return None if row[0] is None else max(0.0, time.time() - row[0])

    def __len__(self) -> int:
        return self._count

    def close(self) -> None:
        with self._lock:
            self._conn.close()
