"""Change-of-value acquisition: points subscribed with SubscribeCOV, polling as the check and the fallback.

A point whose `acquisition` is 'cov' is subscribed on its device (confirmed or unconfirmed notifications,
per point or the site default) and each notification becomes the same `PointOutcome`/`Reading` a poll
produces, delivered to the same sink. Why each piece is here:

- The point is still polled, at max(its interval, [cov] check_interval_s): a check on the value, and how a
  device that went silent and came back (a restart: it forgot its subscriptions) is noticed.
- A subscription lives `lifetime_s` on the device and is renewed at `renew_fraction` of it, so a restart
  that no poll noticed costs at most that long without notifications.
- A device that answers SubscribeCOV with an Error, Reject or Abort (no COV at all, not for this object,
  out of resources) has its point polled at the point's own interval again; the reason is logged and
  recorded in point_state.last_error, and the subscription is tried again after `retry_refused_s`.

Notifications reach us through bacpypes3's client side: its Application looks up
`_cov_contexts[(device address, subscriber process id)]` and awaits `put(PropertyValue)` for each value,
acknowledging confirmed notifications itself. A `_Subscription` stands in that table for each point;
the subscriber process id is the point id, so an agent that restarts renews its own earlier
subscriptions rather than adding a second one on the device.

A fallback (or a return to COV) changes the point's interval in the device's poller (`set_interval`),
and the subscriber watches that poller's outcomes: a device that stops answering has lost its
subscriptions by the time it answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from bacpypes3.apdu import SimpleAckPDU, SubscribeCOVRequest
from bacpypes3.constructeddata import Array
from bacpypes3.pdu import Address
from bacpypes3.vendor import get_vendor_info

from bacpipes.settings import CovSettings, Settings
from edge.bacnet import BacnetClient, BacnetError, BadAnswer, NoResponse, describe_error, object_id
from edge.catalog import PollDevice, PollPoint
from edge.polling import DevicePoller, PointOutcome, point_outcome

log = logging.getLogger(__name__)

_ASHRAE = get_vendor_info(0)
_SUBSCRIBE_CONCURRENCY = 4  # SubscribeCOV requests in flight per device
_MAX_RETRY_S = 60.0  # a device that stopped answering is asked again at most this far apart
_UNSUBSCRIBE_WAIT_S = 2.0  # on shutdown, cancelling subscriptions is best effort


@dataclass
class CovStats:
    subscribed: int = 0  # subscriptions accepted (first time, or again after a loss)
    renewed: int = 0
    refused: int = 0
    resubscribed: int = 0  # subscriptions made again because the device had gone silent (restart)
    notifications: int = 0
    bad_notifications: int = 0
    requests: int = 0  # SubscribeCOV requests sent


def polled_as(point: PollPoint, settings: CovSettings) -> PollPoint:
    """How the poller sees a point: a COV point is polled only as a check."""
    if point.acquisition != "cov":
        return point
    return replace(point, interval_s=max(point.interval_s, settings.check_interval_s))


class _Subscription:
    """One point's subscription, and its entry in bacpypes3's table of COV contexts."""

    def __init__(self, owner: CovSubscriber, point: PollPoint, confirmed: bool) -> None:
        self.owner = owner
        self.point = point
        self.confirmed = confirmed
        self.proc_id = point.point_id & 0xFFFFFFFF
        self.monitored_object_identifier = object_id(f"{point.object_type},{point.object_instance}")
        self.state = "new"  # new | active | lost | refused
        self.due = 0.0  # monotonic time of the next SubscribeCOV (subscribe, renew, or retry)
        self.values: dict[str, Any] = {}  # this notification's values, by property name
        self.flags: Any = None  # the latest status flags (a notification may omit them)

    async def put(self, property_value: Any) -> None:
        """Called by bacpypes3 for each value of a notification; never raises (it would answer an Error)."""
        try:
            self.owner._notified(self, property_value)
        except Exception as exc:  # whatever a device sent is that point's problem
            self.owner._bad_notification(self, exc)


class CovSubscriber:
    """The COV points of one device, plus that device's poller (checks, fallback, poll points)."""

    def __init__(
        self,
        client: BacnetClient,
        device: PollDevice,
        points: list[PollPoint],
        sink: Callable[[list[PointOutcome]], None],
        tz: ZoneInfo,
        settings: CovSettings,
        poller: DevicePoller | None = None,
    ) -> None:
        self.client = client
        self.device = device
        self.address = Address(device.address)
        self.sink = sink
        self.tz = tz
        self.settings = settings
        self.poller = poller
        self.stats = CovStats()
        default = settings.confirmed
        self.subs = {
            p.point_id: _Subscription(self, p, default if p.cov_confirmed is None else p.cov_confirmed)
            for p in points
        }
        self.device_down = False
        self._failures = 0
        self._kick = asyncio.Event()  # something is due now (device back, a new loss)
        self._pending: list[PointOutcome] = []
        self._flush_scheduled = False
        if poller is not None:
            downstream = poller.sink
            poller.sink = lambda outcomes: (self.observe(outcomes), downstream(outcomes))

    # --- running ------------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Subscribe, renew and re-subscribe until stopped (the device's poller runs on its own)."""
        relay = asyncio.create_task(self._relay_stop(stop))
        try:
            await self._maintain(stop)
        finally:
            relay.cancel()
            await self._unsubscribe_all()

    async def _relay_stop(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self._kick.set()

    async def _maintain(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            self._kick.clear()
            now = loop.time()
            due = [s for s in self.subs.values() if s.due <= now]
            if due:
                try:
                    await self._subscribe_round(due)
                except Exception:  # never let one device's trouble end its acquisition
                    log.exception("device %s: COV round failed; retrying", self.device.device_id)
                    for s in due:
                        s.due = max(s.due, loop.time() + _MAX_RETRY_S)
            wake = min((s.due for s in self.subs.values()), default=now + 3600.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), timeout=max(0.0, wake - loop.time()))

    async def _subscribe_round(self, due: list[_Subscription]) -> None:
        """SubscribeCOV for each due point, a few at a time; once the device is silent, the rest wait."""
        semaphore = asyncio.Semaphore(_SUBSCRIBE_CONCURRENCY)
        retry_at: float | None = None  # set once the device did not answer

        async def one(sub: _Subscription) -> None:
            nonlocal retry_at
            async with semaphore:
                if retry_at is not None:  # no point asking a silent device 1,000 times: retry together
                    sub.due = retry_at
                    if sub.state == "active":
                        sub.state = "lost"
                    return
                if not await self._subscribe(sub):
                    retry_at = sub.due

        await asyncio.gather(*(one(s) for s in due))

    async def _subscribe(self, sub: _Subscription) -> bool:
        """One SubscribeCOV (or its renewal); False when the device did not answer."""
        loop = asyncio.get_running_loop()
        previous = sub.state
        request = SubscribeCOVRequest(
            subscriberProcessIdentifier=sub.proc_id,
            monitoredObjectIdentifier=sub.monitored_object_identifier,
            issueConfirmedNotifications=sub.confirmed,
            lifetime=self.settings.lifetime_s,
        )
        # registered before asking: the device sends the current value right after its acknowledgement
        self.client.app._cov_contexts[(self.address, sub.proc_id)] = sub
        try:
            await self._send(request)
        except NoAnswer as exc:
            self._lost_device(str(exc))
            self._failures += 1
            retry = min(_MAX_RETRY_S, 2.0 ** min(self._failures, 6))
            sub.state = "lost" if previous != "refused" else previous
            sub.due = loop.time() + retry
            return False
        except BacnetError as exc:
            self._refused(sub, str(exc))
            return True
        self._failures = 0
        if self.device_down:
            self.device_down = False
            log.info("device %s answers again: subscribing its COV points again", self.device.device_id)
        sub.state = "active"
        sub.due = loop.time() + self.settings.lifetime_s * self.settings.renew_fraction
        if previous == "active":
            self.stats.renewed += 1
        else:
            self.stats.subscribed += 1
            self.stats.resubscribed += previous == "lost"
            if previous == "refused":
                log.info("device %s accepts COV for point %s now", self.device.device_id, sub.point.point_id)
                self._set_poll_interval(sub.point, polled_as(sub.point, self.settings).interval_s)
        return True

    async def _send(self, request: SubscribeCOVRequest) -> Any:
        """One confirmed request; `NoAnswer` when the device is silent or its answer unusable (ask again
        later), `BacnetError` when it said no."""
        self.stats.requests += 1
        try:
            response = await self.client.request(self.device.address, request)
        except (NoResponse, BadAnswer) as exc:
            raise NoAnswer(str(exc)) from None
        if not isinstance(response, SimpleAckPDU) or response.apduService != request.apduService:
            raise NoAnswer(f"answer discarded: {type(response).__name__} to a SubscribeCOV")
        return response

    def _refused(self, sub: _Subscription, reason: str) -> None:
        loop = asyncio.get_running_loop()
        first = sub.state != "refused"
        sub.state = "refused"
        sub.due = loop.time() + self.settings.retry_refused_s
        self.client.app._cov_contexts.pop((self.address, sub.proc_id), None)
        self.stats.refused += 1
        if not first:
            return
        point = sub.point
        log.warning(
            "device %s refused COV for point %s (%s %s): %s; polling it every %g s instead",
            self.device.device_id, point.point_id, point.object_type, point.object_instance, reason,
            point.interval_s,
        )  # fmt: skip
        error = f"COV refused ({reason}); polled every {point.interval_s:g} s instead"
        self._emit(PointOutcome(point.point_id, datetime.now(self.tz), error=error))
        self._set_poll_interval(point, point.interval_s)

    def _set_poll_interval(self, point: PollPoint, interval_s: float) -> None:
        if self.poller is not None:
            self.poller.set_interval(point.point_id, interval_s)

    # --- a device that went away and came back --------------------------------------------------------

    def observe(self, outcomes: list[PointOutcome]) -> None:
        """The device's poll outcomes: silence marks its subscriptions lost, an answer after it renews them.

        A restarted device has forgotten every subscription; its points' polls time out while it is down.
        """
        for o in outcomes:
            if o.no_response:
                self._lost_device(o.error or "no answer")
                return
        if self.device_down and any(o.reading is not None for o in outcomes):
            self.device_down = False
            self._failures = 0
            loop = asyncio.get_running_loop()
            for s in self.subs.values():
                if s.state == "lost":
                    s.due = loop.time()
            log.info("device %s answers polls again: subscribing its COV points again", self.device.device_id)
            self._kick.set()

    def _lost_device(self, reason: str) -> None:
        if not self.device_down:
            log.warning("device %s not answering (%s): its COV subscriptions count as lost",
                        self.device.device_id, reason)
        self.device_down = True
        for s in self.subs.values():
            if s.state == "active":
                s.state = "lost"

    # --- notifications --------------------------------------------------------------------------------

    def _notified(self, sub: _Subscription, property_value: Any) -> None:
        """Collect a notification's values; they arrive one by one, so emit them together on the next turn."""
        pid = property_value.propertyIdentifier
        name = str(pid)
        object_class = _ASHRAE.get_object_class(sub.monitored_object_identifier[0])
        datatype = object_class.get_property_type(pid) if object_class else None
        indexed = property_value.propertyArrayIndex is not None
        if datatype is None or (indexed and issubclass(datatype, Array)):
            return  # a value we neither asked for nor know: not an error
        value = property_value.value.cast_out(datatype)
        if name == "status-flags":
            sub.flags = value
        sub.values[name] = value
        if name == "present-value":
            self.stats.notifications += 1
            self._schedule_flush(sub)

    def _bad_notification(self, sub: _Subscription, exc: Exception) -> None:
        self.stats.bad_notifications += 1
        text = f"undecodable COV notification ({describe_error(exc)})"
        log.warning("device %s point %s: %s", self.device.device_id, sub.point.point_id, text)
        self._emit(PointOutcome(sub.point.point_id, datetime.now(self.tz), error=text))

    def _schedule_flush(self, sub: _Subscription) -> None:
        loop = asyncio.get_running_loop()
        loop.call_soon(self._reading, sub)

    def _reading(self, sub: _Subscription) -> None:
        values, sub.values = sub.values, {}
        if "present-value" not in values:
            return
        outcome = point_outcome(sub.point, values["present-value"], values.get("status-flags", sub.flags),
                                datetime.now(self.tz))
        if sub.state == "lost":  # a notification: the subscription is alive after all
            sub.state = "active"
        self._emit(outcome)

    def _emit(self, outcome: PointOutcome) -> None:
        """Outcomes go to the sink in one batch per loop turn, as a poll's do."""
        self._pending.append(outcome)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        outcomes, self._pending = self._pending, []
        if outcomes:
            try:
                self.sink(outcomes)
            except Exception:
                log.exception("device %s: COV readings not delivered", self.device.device_id)

    # --- shutdown -------------------------------------------------------------------------------------

    async def _unsubscribe_all(self) -> None:
        """Cancel what we subscribed (best effort: the lifetime ends them anyway)."""
        active = [s for s in self.subs.values() if s.state in ("active", "lost")]
        for s in self.subs.values():
            self.client.app._cov_contexts.pop((self.address, s.proc_id), None)
        if not active or self.device_down:
            return

        async def cancel(sub: _Subscription) -> None:
            request = SubscribeCOVRequest(
                subscriberProcessIdentifier=sub.proc_id,
                monitoredObjectIdentifier=sub.monitored_object_identifier,
            )
            with contextlib.suppress(BacnetError, NoAnswer):
                await self._send(request)

        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(cancel(s) for s in active)), _UNSUBSCRIBE_WAIT_S)

    def health(self) -> dict[str, Any]:
        states = [s.state for s in self.subs.values()]
        return {**self.stats.__dict__, **{k: states.count(k) for k in ("active", "lost", "refused")}}


class NoAnswer(Exception):
    """The device did not answer: it is down (or restarting), which is not a refusal."""


def cov_subscribers(
    client: BacnetClient,
    pollers: list[DevicePoller],
    points: dict[int, PollPoint],
    sink: Callable[[list[PointOutcome]], None],
    settings: Settings,
) -> dict[int, CovSubscriber]:
    """A subscriber for each device with COV points, owning that device's poller (built with `polled_as`)."""
    out: dict[int, CovSubscriber] = {}
    for poller in pollers:
        cov = [points[pid] for pid in poller.points if points[pid].acquisition == "cov"]
        if cov:
            out[poller.device.device_id] = CovSubscriber(
                client, poller.device, cov, sink, settings.site.tz, settings.cov, poller
            )
    return out
