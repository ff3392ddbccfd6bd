"""The write executor: every command, whatever its source, validated, run once, read back and audited.

All sources meet in `write_commands`: the CLI, the UI, central (by replication) and ML insert rows; MQTT
commands are inserted by `intake_mqtt` below. An insert fires NOTIFY, so the executor starts within
milliseconds; a slow poll catches anything a lost notification would miss.

Each command gets an append-only trail in `command_events`. Inserting its `executing` event is the claim
(one row per status per command), so two agents on one site never both run a command. A command found
`executing` by this agent at start-up was cut short by a crash: it is read back, never blindly repeated.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, timedelta
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from bacpipes.clock import Clock, clock_from
from bacpipes.commands import CURRENT_AUTHORITY, INSERT_COMMAND, Command, command_params
from bacpipes.settings import Settings
from edge.bacnet import BacnetClient, BacnetError
from edge.writes import Pending, Target, refusal, same_value, slot_value, wire_value

log = logging.getLogger(__name__)

RECONNECT_MAX_S = 30.0
STARTUP_WAIT_S = 10.0  # how long a command arriving before the first database connection waits for it
RETAINED_REFUSED = "retained commands are refused (send commands with retain off)"
Result = dict[str, Any]

_TARGET = """
SELECT p.point_id, coalesce(p.object_name, p.object_type || ',' || p.object_instance) AS name,
       p.device_id, d.address, p.object_type, p.object_instance, p.writable, p.commandable,
       coalesce(p.min_value, p.device_min_value) AS min_value,
       coalesce(p.max_value, p.device_max_value) AS max_value,
       p.ml_min_value, p.ml_max_value, p.ml_max_step, s.value AS present_value
FROM point p JOIN device d USING (site_id, device_id) LEFT JOIN point_state s USING (site_id, point_id)
WHERE p.site_id = %s AND p.point_id = %s
"""

_COMMAND_COLUMNS = (
    "c.id, c.point_id, c.command_type = 'release_priority' AS release, c.value, c.priority, c.source,"
    " c.created_by, c.not_after, c.arrived"
)

_PENDING = f"""
SELECT {_COMMAND_COLUMNS} FROM write_commands c
WHERE c.site_id = %s AND c.created_at > now() - %s
  AND NOT EXISTS (SELECT 1 FROM command_events e WHERE e.command_id = c.id
                  AND e.status IN ('executing', 'completed', 'failed', 'rejected'))
ORDER BY c.created_at, c.id LIMIT 100
"""

_INTERRUPTED = f"""
SELECT {_COMMAND_COLUMNS} FROM command_events x JOIN write_commands c ON c.id = x.command_id
WHERE x.site_id = %s AND x.status = 'executing' AND x.agent = %s
  AND NOT EXISTS (SELECT 1 FROM command_events e WHERE e.command_id = c.id
                  AND e.status IN ('completed', 'failed', 'rejected'))
ORDER BY x.at
"""

_EVENT = """
INSERT INTO command_events (command_id, site_id, status, agent, detail, value_read, priority_array)
VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING status
"""

# A message repeating a stored command's id: recorded as an attempt (never run again), with whether it is
# the same command or another one reusing the id.
_REPEATED = """
INSERT INTO command_attempts (command_id, site_id, source, created_by, same_content, detail)
SELECT c.id, %(site_id)s, %(source)s, %(created_by)s, s.same,
       CASE WHEN s.same THEN 'arrived again: not run again (a command runs once)'
            ELSE 'command id already used by another command: not run' END
       || coalesce('; ' || %(problem)s::text, '')
FROM write_commands c, LATERAL (
    SELECT (c.point_id, c.command_type, c.value, c.priority) IS NOT DISTINCT FROM
           (%(point_id)s::bigint, %(command_type)s::text, %(value)s::float8, %(priority)s::smallint)
    AS same) s
WHERE c.id = %(id)s
"""

_INSERT_REJECTED = f"""
WITH c AS ({INSERT_COMMAND} RETURNING id, site_id)
INSERT INTO command_events (command_id, site_id, status, agent, detail)
SELECT id, site_id, 'rejected', %(agent)s, %(detail)s FROM c
"""


class Executor:
    """Runs on the agent's event loop (bacpypes3 lives there); `run(stop)` until stop is set."""

    def __init__(
        self, settings: Settings, client: BacnetClient, on_result: Callable[[Result], None] | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.settings = settings
        self.site_id = settings.site.id
        self.agent = settings.mqtt.client_id  # unique per agent: brokers insist on it
        self.client = client
        self.on_result = on_result
        self.clock = clock or clock_from(settings.clock)  # what a command's not_after is judged by
        self.completed = 0
        self.rejected = 0
        self.failed = 0
        self._conn: psycopg.AsyncConnection | None = None
        self._wake = asyncio.Event()
        self.ready = threading.Event()  # listening, and interrupted commands dealt with

    async def run(self, stop: asyncio.Event) -> None:
        """Execute pending commands as they come; the database going away only pauses this."""
        delay = 1.0
        while not stop.is_set():
            try:
                await self._serve(stop)
            except psycopg.OperationalError as exc:
                log.warning("write executor: database unavailable (%s); retrying in %.0f s", exc, delay)
                await self._close()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                delay = min(delay * 2, RECONNECT_MAX_S)
            else:
                delay = 1.0
        await self._close()

    def stats(self) -> dict[str, int]:
        return {"completed": self.completed, "rejected": self.rejected, "failed": self.failed}

    async def _serve(self, stop: asyncio.Event) -> None:
        self._conn = await psycopg.AsyncConnection.connect(
            self.settings.database.dsn, autocommit=True, connect_timeout=5, row_factory=dict_row
        )
        listener = await psycopg.AsyncConnection.connect(
            self.settings.database.dsn, autocommit=True, connect_timeout=5
        )
        try:
            await listener.execute("LISTEN write_commands")
            await self.recover()
            self.ready.set()
            notified = asyncio.create_task(self._forward_notifies(listener))
            try:
                while not stop.is_set():
                    self._wake.clear()  # before the scan: a notify during it wakes the next round
                    while await self.run_pending():
                        pass
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(
                            _first(self._wake.wait(), stop.wait(), notified),
                            self.settings.writes.poll_interval_s,
                        )
                    if notified.done():
                        notified.result()  # the listener died: raise its error to reconnect
            finally:
                notified.cancel()
        finally:
            await listener.close()

    async def _forward_notifies(self, listener: psycopg.AsyncConnection) -> None:
        async for notify in listener.notifies():
            if notify.payload == self.site_id:
                self._wake.set()

    async def _close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    # --- one command ------------------------------------------------------------------------------

    async def run_pending(self) -> int:
        window = timedelta(hours=self.settings.writes.pending_window_h)
        rows = await self._fetch(_PENDING, self.site_id, window)
        for row in rows:
            command = Pending(**row)
            try:
                await self.execute(command)
            except psycopg.OperationalError:
                raise  # the database is away: reconnect, the command is still pending
            except Exception as exc:  # a bug must not stop every later command, nor retry this one forever
                log.exception("command %s: unexpected error", command.id)
                await self._finish(command, "failed", f"internal error in the executor: {exc!r:.200}")
        return len(rows)

    async def execute(self, command: Pending) -> None:
        target = await self._target(command.point_id)
        reason = refusal(command, target, await self._authority(), self.clock.now(UTC), self.settings.writes)
        if reason is None and command.release:
            assert target is not None
            reason = await self._empty_slot(target, command.priority or 0)
        if reason is not None:
            await self._finish(command, "rejected", reason)
            return
        assert target is not None
        if not await self._claim(command):
            return  # another agent has it
        try:
            await self.client.write(  # a priority means nothing to a point without a priority array
                target.address, target.objid, "presentValue",
                wire_value(target, command.value, command.release),  # Null for any release
                command.priority if target.commandable else None,
            )
        except (BacnetError, TimeoutError) as exc:
            await self._finish(command, "failed", f"write to device {target.device_id} failed: {_plain(exc)}")
            return
        value_read, slots = await self._read_back(target)
        await self._finish(command, "completed", None, value_read, slots)

    async def recover(self) -> int:
        """Commands this agent was running when it stopped: the device says whether they took effect."""
        rows = await self._fetch(_INTERRUPTED, self.site_id, self.agent)
        for row in rows:
            command = Pending(**row)
            target = await self._target(command.point_id)
            if target is None:
                await self._finish(command, "failed", "interrupted by an agent restart; the point is gone")
                continue
            value_read, slots = await self._read_back(target)
            if value_read is None:
                await self._finish(
                    command, "failed", "interrupted by an agent restart; no answer to the read-back"
                )
                continue
            held = value_read if slots is None else slots[command.priority - 1] if command.priority else None
            wanted = None if command.release else command.value
            if same_value(held, wanted):
                await self._finish(
                    command, "completed", "confirmed by read-back after an agent restart", value_read, slots
                )
            else:
                await self._finish(
                    command, "failed",
                    f"interrupted by an agent restart: priority {command.priority} holds {held}, not "
                    f"{wanted}; not repeated",
                    value_read, slots,
                )
        return len(rows)

    # --- helpers ----------------------------------------------------------------------------------

    async def _fetch(self, query: str, *params: Any) -> list[dict[str, Any]]:
        assert self._conn is not None
        cur = await self._conn.execute(query, params)
        return await cur.fetchall()

    async def _target(self, point_id: int | None) -> Target | None:
        if point_id is None:
            return None
        rows = await self._fetch(_TARGET, self.site_id, point_id)
        return Target(**rows[0]) if rows else None

    async def _authority(self) -> str:
        assert self._conn is not None
        cur = await self._conn.execute(CURRENT_AUTHORITY, (self.site_id,))
        row = await cur.fetchone()
        return next(iter(row.values())) if row else "edge"

    async def _empty_slot(self, target: Target, priority: int) -> str | None:
        try:
            slot = await self.client.read(target.address, target.objid, "priorityArray", priority)
        except (BacnetError, TimeoutError) as exc:
            return f"could not read priority {priority} of the device before releasing it: {exc}"
        if slot_value(slot) is None:
            return f"priority {priority} of point {target.point_id} ({target.name}) holds no value to release"
        return None

    async def _read_back(self, target: Target) -> tuple[float | None, list[float | None] | None]:
        """The device's present value, and its priority array where the point has one."""
        try:
            value = float(await self.client.read(target.address, target.objid, "presentValue"))
            if not target.commandable:
                return value, None
            array = await self.client.read(target.address, target.objid, "priorityArray")
            return value, [slot_value(s) for s in array]
        except (BacnetError, TypeError, ValueError) as exc:
            log.warning("read-back of point %s failed: %s", target.point_id, exc)
            return None, None

    async def _claim(self, command: Pending) -> bool:
        assert self._conn is not None
        cur = await self._conn.execute(
            "INSERT INTO command_events (command_id, site_id, status, agent) VALUES"
            " (%(id)s, %(site)s, 'accepted', %(agent)s), (%(id)s, %(site)s, 'executing', %(agent)s)"
            " ON CONFLICT DO NOTHING RETURNING status",
            {"id": command.id, "site": self.site_id, "agent": self.agent},
        )
        return any(r["status"] == "executing" for r in await cur.fetchall())

    async def _finish(
        self,
        command: Pending,
        status: str,
        detail: str | None,
        value_read: float | None = None,
        slots: list[float | None] | None = None,
    ) -> None:
        assert self._conn is not None
        cur = await self._conn.execute(
            _EVENT,
            (command.id, self.site_id, status, self.agent, detail, value_read,
             Jsonb(slots) if slots is not None else None),
        )
        if await cur.fetchone() is None:
            return  # another agent recorded the outcome first
        self._report(command, status, detail, value_read, slots)

    def _report(
        self,
        command: Pending,
        status: str,
        detail: str | None,
        value_read: float | None = None,
        slots: list[float | None] | None = None,
    ) -> None:
        """Count, log and publish an outcome this agent recorded."""
        setattr(self, status, getattr(self, status) + 1)
        log.log(logging.INFO if status == "completed" else logging.WARNING,
                "command %s on point %s: %s%s", command.id, command.point_id, status,
                f" ({detail})" if detail else "")
        if self.on_result:
            self.on_result({
                "commandId": str(command.id), "pointId": command.point_id, "status": status,
                "error": detail if status != "completed" else None, "value": command.value,
                "priority": command.priority, "release": command.release, "source": command.source,
                "valueRead": value_read, "priorityArray": slots,
            })

    # --- MQTT intake ------------------------------------------------------------------------------

    async def intake_mqtt(self, payload: bytes, created_by: str) -> None:
        """Store one `bacnet/write/command` message as a command (a malformed one as a rejected command).

        With the database away nothing can be stored or run: the sender gets a `failed` result at once.
        A message published retained (`payload.retained`, see `edge.command_mqtt`) is stored rejected:
        the broker hands a retained command to every new subscription, so it would run again at each
        agent restart, long after whoever sent it stopped watching.
        """
        bare = Command(self.site_id, None, None, priority=None, source="mqtt", created_by=created_by,
                       id=uuid.uuid4())  # all that is sure of a message that cannot be stored as sent
        try:
            command, problem = parse_mqtt_command(self.site_id, payload, created_by)
        except (ValueError, OverflowError) as exc:  # e.g. an integer too large for a float
            command, problem = bare, f"unreadable command: {exc}"
        if getattr(payload, "retained", False):
            problem = RETAINED_REFUSED + (f"; {problem}" if problem else "")
        deadline = asyncio.get_running_loop().time() + STARTUP_WAIT_S
        while self._conn is None and not self.ready.is_set() and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)  # at start-up (a retained message comes at once): wait to store it
        try:
            if self._conn is None:
                raise psycopg.OperationalError("no connection")
            try:
                await self._store(command, problem)
            except psycopg.DataError as exc:  # a NUL in a text, a number past its column's range
                command, problem = bare, f"unstorable command: {str(exc).strip()}"
                await self._store(command, problem)
        except psycopg.errors.UniqueViolation:
            log.info("command %s arrived again; it runs once (attempt recorded)", command.id)
            await self._conn.execute(_REPEATED, {**command_params(command), "problem": problem})
            return
        except psycopg.OperationalError as exc:
            log.warning("MQTT command %s not stored: database unavailable (%s)", command.id, exc)
            if self.on_result:
                self.on_result({"commandId": str(command.id), "pointId": command.point_id, "status": "failed",
                                "error": "database unavailable: command not stored, not run"})
            return
        if problem is None:
            self._wake.set()
        else:
            self._report(_as_pending(command), "rejected", problem)

    async def _store(self, command: Command, problem: str | None) -> None:
        """Insert the command; a refused one with its `rejected` event in the same statement, so no
        executor's scan (this agent's or another's) ever finds it pending: a release that carried a
        value is stored as a plain release, and would run."""
        assert self._conn is not None
        if problem is None:
            await self._conn.execute(INSERT_COMMAND, command_params(command))
        else:
            await self._conn.execute(_INSERT_REJECTED, {**command_params(command), "agent": self.agent,
                                                        "detail": problem})


def _plain(exc: BaseException) -> str:
    text = str(exc)
    return "the device did not answer (offline or unreachable)" if "no-response" in text else text


def _as_pending(command: Command) -> Pending:
    return Pending(command.id, command.point_id, command.release, command.value, command.priority,
                   command.source, command.created_by, command.not_after)


def parse_mqtt_command(site_id: str, payload: bytes, created_by: str) -> tuple[Command, str | None]:
    """A command message -> the command to store, and why it must be rejected (None: it may run).

    Never raises: even an unreadable message becomes a command row with a rejected event, so the audit
    trail shows every attempt.
    """
    base = Command(site_id, None, None, priority=None, source="mqtt", created_by=created_by, id=uuid.uuid4())
    try:
        body = json.loads(payload)
    except (ValueError, RecursionError) as exc:
        return base, f"malformed JSON: {exc}"
    if not isinstance(body, dict):
        return base, f"a command is a JSON object, not a {type(body).__name__}"
    fields: dict[str, Any] = {}
    problems: list[str] = []
    raw_id = body.get("commandId")
    if raw_id is not None:
        try:
            fields["id"] = uuid.UUID(str(raw_id))
        except ValueError:
            problems.append(f"commandId is not a UUID: {raw_id!r:.60}")
    point = body.get("pointId")
    if isinstance(point, int) and not isinstance(point, bool):
        fields["point_id"] = point
    else:
        problems.append(f"pointId must be an integer, not {point!r:.60}")
    release = body.get("release", False)
    if not isinstance(release, bool):
        problems.append(f"release must be true or false, not {release!r:.60}")
        release = False
    fields["release"] = release
    value = body.get("value")
    if release and value is not None:  # stored as a release without it: a release row has no value
        problems.append(f"a release carries no value: send \"release\": true or a value, not both "
                        f"(value {value!r:.60})")
    elif isinstance(value, (int, float)):  # JSON true/false count as 1/0 for binary points
        fields["value"] = float(value)
    elif value is not None:
        problems.append(f"value is not a number: {value!r:.60}")
    elif not release:
        problems.append("missing value (to relinquish, send \"release\": true)")
    priority = body.get("priority", 8)
    if isinstance(priority, int) and not isinstance(priority, bool):
        fields["priority"] = priority if -32768 <= priority <= 32767 else None  # a smallint column
        if fields["priority"] is None:
            problems.append(f"priority must be 1 to 16, not {priority}")
    else:
        problems.append(f"priority must be an integer 1 to 16, not {priority!r:.60}")
    created_by = body.get("createdBy")
    if isinstance(created_by, str) and created_by.strip():
        fields["created_by"] = f"mqtt:{created_by.strip()[:100]}"
    reason = body.get("reason")
    if isinstance(reason, str):
        fields["reason"] = reason[:500]
    return dataclasses.replace(base, **fields), "; ".join(problems) or None


async def _first(*waitables: Any) -> None:
    """Return as soon as any of the coroutines/tasks finishes; cancel the coroutines we started."""
    tasks = [w if isinstance(w, asyncio.Future) else asyncio.ensure_future(w) for w in waitables]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task, w in zip(tasks, waitables, strict=True):
            if task is not w:
                task.cancel()
