"""The live feed behind `GET /bots/{botId}/ws`: one shared poller per bot, fanned out to its clients.

The workflow's `status` query carries a bounded, sequence-numbered `recentEvents` buffer. One poller
per bot (started by its first client, stopped after its last) reads it, forwards each event once in
order (by `seq`), and sends `resync` when the buffer no longer covers what was missed. Each client has
a bounded queue: a client that cannot keep up loses its backlog and gets `resync` instead of slowing
the poller or the other clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from workflows.models import SchedulerEvent, SchedulerStatus

log = logging.getLogger(__name__)

Event = dict[str, Any]
# Returns the bot's status, or None when its workflow is not running (never started or closed).
StatusSource = Callable[[str], Awaitable[SchedulerStatus | None]]
# (bot id, last log id seen or None at first) -> (new last id, log events after the old one).
LogSource = Callable[[str, int | None], Awaitable[tuple[int, list[Event]]]]

# The seed's entity_update actions; the workflow reports finer changes, kept in `change`.
_SEED_ACTIONS = {"created", "updated", "deleted"}
_CREATED = {"started", "created"}


def iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def now_iso() -> str:
    return iso(datetime.now(UTC)) or ""


def status_update(bot_id: str, is_running: bool, alarm: datetime | str | None) -> Event:
    return {
        "type": "scheduler_status_update",
        "botId": bot_id,
        "isRunning": is_running,
        "currentAlarmTime": iso(alarm) if isinstance(alarm, datetime) else alarm,
        "timestamp": now_iso(),
    }


def entity_update(
    bot_id: str, entity_type: str, change: str, entity_id: object, timestamp: str | None = None
) -> Event:
    """The seed's entity_update; `action` is created/updated/deleted, `change` says exactly what."""
    action = change if change in _SEED_ACTIONS else "created" if change in _CREATED else "updated"
    return {
        "type": "entity_update",
        "entityType": entity_type,
        "action": action,
        "change": change,
        "entityId": entity_id,
        "botId": bot_id,
        "timestamp": timestamp or now_iso(),
    }


def log_event(bot_id: str, log_id: object, at: datetime | str | None, level: str, content: str) -> Event:
    return {
        "type": "log",
        "id": log_id,
        "timestamp": iso(at) if isinstance(at, datetime) else at,
        "level": level,
        "content": content,
        "botId": bot_id,
    }


def resync_event(bot_id: str, reason: str) -> Event:
    return {"type": "resync", "botId": bot_id, "reason": reason, "timestamp": now_iso()}


def _normalized(value: object) -> str | None:
    """One spelling of an instant, so a status poll and an event agree when they mean the same."""
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, str):
        try:
            return iso(datetime.fromisoformat(value))
        except ValueError:
            return value
    return None


def wire_event(bot_id: str, event: SchedulerEvent) -> Event:
    """The seed's camelCase event shape for one buffered workflow event (plus its `seq`)."""
    data = event.data
    timestamp = iso(event.timestamp)
    if event.type == "scheduler_status_update":
        alarm = _normalized(data.get("currentAlarmTime", data.get("nextAlarmTime")))
        return {
            "type": event.type,
            "botId": bot_id,
            "isRunning": bool(data.get("isRunning")),
            "currentAlarmTime": alarm,
            "timestamp": timestamp,
            "seq": event.seq,
        }
    if event.type == "entity_update":
        change = str(data.get("action") or "updated")
        wire = entity_update(
            bot_id, str(data.get("entityType")), change, data.get("entityId"), timestamp=timestamp
        )
        wire["seq"] = event.seq
        if data.get("taskId") is not None:
            wire["taskId"] = data["taskId"]
        return wire
    wire = log_event(
        bot_id, data.get("id"), timestamp, str(data.get("level", "info")), str(data.get("content", ""))
    )
    wire["seq"] = event.seq
    return wire


@dataclass(eq=False)
class FeedClient:
    """One WebSocket's bounded queue of events waiting to be sent."""

    bot_id: str
    queue_size: int
    queue: asyncio.Queue[Event] = field(init=False)
    resyncs: int = 0

    def __post_init__(self) -> None:
        self.queue = asyncio.Queue(maxsize=self.queue_size)

    def offer(self, event: Event) -> None:
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            # Fell behind: drop the backlog and tell the client to reload state from the REST API.
            while not self.queue.empty():
                self.queue.get_nowait()
            self.resyncs += 1
            self.queue.put_nowait(resync_event(self.bot_id, "client fell behind the live feed"))


class BotPoller:
    def __init__(
        self, bot_id: str, source: StatusSource, interval: float, log_source: LogSource | None = None
    ) -> None:
        self.bot_id = bot_id
        self._source = source
        self._log_source = log_source
        self.last_log_id: int | None = None
        self._interval = interval
        self.clients: set[FeedClient] = set()
        self.last_seq: int | None = None
        self.is_running = False
        self.alarm: str | None = None
        self.ready = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        # The last status polled, and when (loop time): GET /status serves it while it is fresh.
        self.latest: SchedulerStatus | None = None
        self.latest_at = 0.0

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name=f"feed-poller-{self.bot_id}")

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    def broadcast(self, event: Event) -> None:
        for client in list(self.clients):
            client.offer(event)

    async def _run(self) -> None:
        while True:
            try:
                status = await self._source(self.bot_id)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.debug("feed poll for %s failed: %s", self.bot_id, error)
            else:
                self.latest, self.latest_at = status, asyncio.get_running_loop().time()
                self.apply(status)
            await self._tail_logs()
            self.ready.set()
            await asyncio.sleep(self._interval)

    async def _tail_logs(self) -> None:
        """Log rows written by handlers and the API since the last poll (each row once, by id)."""
        if self._log_source is None:
            return
        try:
            last, events = await self._log_source(self.bot_id, self.last_log_id)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            log.debug("feed log tail for %s failed: %s", self.bot_id, error)
            return
        self.last_log_id = last
        for event in events:
            self.broadcast(event)

    def apply(self, status: SchedulerStatus | None) -> None:
        """Forward what is new in one polled status; the first poll only sets the cursor."""
        if status is None:
            # Not running: whatever run starts next numbers its events afresh, all of them new to us.
            if self.last_seq is None:
                self.last_seq = 0
            self._report(False, None)
            return
        if self.last_seq is None:
            self.last_seq = status.lastEventSeq
            self.is_running, self.alarm = status.isRunning, iso(status.nextAlarmTime)
            return
        if status.lastEventSeq < self.last_seq:
            # A new workflow run numbered its events afresh: deliver its buffer from the start.
            self.last_seq = 0
        fresh = sorted(
            (event for event in status.recentEvents if event.seq > self.last_seq), key=lambda e: e.seq
        )
        if fresh and fresh[0].seq > self.last_seq + 1:
            self.broadcast(resync_event(self.bot_id, "events were missed"))
        for event in fresh:
            if event.type == "log" and event.data.get("id") is not None and self._log_source is not None:
                continue  # a stored log row: the log tail delivers it
            wire = wire_event(self.bot_id, event)
            if wire["type"] == "scheduler_status_update":
                self.is_running, self.alarm = wire["isRunning"], wire["currentAlarmTime"]
            self.broadcast(wire)
        self.last_seq = max(self.last_seq, status.lastEventSeq)
        self._report(status.isRunning, iso(status.nextAlarmTime))

    def _report(self, is_running: bool, alarm: str | None) -> None:
        # Status changes that no buffered event told (e.g. the workflow was terminated).
        if (is_running, alarm) != (self.is_running, self.alarm):
            self.is_running, self.alarm = is_running, alarm
            self.broadcast(status_update(self.bot_id, is_running, alarm))


class FeedHub:
    """Owns the pollers; `subscribe` and `unsubscribe` start and stop them."""

    def __init__(
        self,
        source: StatusSource,
        *,
        log_source: LogSource | None = None,
        poll_interval: float = 0.5,
        queue_size: int = 256,
        first_poll_timeout: float = 5.0,
    ) -> None:
        self._source = source
        self._log_source = log_source
        self.poll_interval = poll_interval
        self.queue_size = queue_size
        self.first_poll_timeout = first_poll_timeout
        self.pollers: dict[str, BotPoller] = {}
        self.pollers_started = 0
        self._lock = asyncio.Lock()

    def set_log_source(self, log_source: LogSource) -> None:
        self._log_source = log_source

    async def subscribe(self, bot_id: str) -> FeedClient:
        """A new client whose queue starts with `connection_ack`; events follow from this moment."""
        async with self._lock:
            poller = self.pollers.get(bot_id)
            if poller is None:
                poller = BotPoller(bot_id, self._source, self.poll_interval, self._log_source)
                self.pollers[bot_id] = poller
                self.pollers_started += 1
                poller.start()
            client = FeedClient(bot_id, self.queue_size)
            # Counted now, so a poller is never stopped while a client is still waiting to join.
            poller.clients.add(client)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(poller.ready.wait(), self.first_poll_timeout)
        # No await between reading the state and queueing the ack: later events follow it in order.
        while not client.queue.empty():
            client.queue.get_nowait()
        client.offer(
            {
                "type": "connection_ack",
                "message": "Connected to bot scheduler",
                "botId": bot_id,
                "initialSchedulerStatus": {"isRunning": poller.is_running, "currentAlarmTime": poller.alarm},
            }
        )
        return client

    async def unsubscribe(self, client: FeedClient) -> None:
        async with self._lock:
            poller = self.pollers.get(client.bot_id)
            if poller is None:
                return
            poller.clients.discard(client)
            if poller.clients:
                return
            del self.pollers[client.bot_id]
        await poller.stop()

    def snapshot(self, bot_id: str) -> SchedulerStatus | None:
        """The bot's status as its poller last saw it, if it has one polled within two intervals."""
        poller = self.pollers.get(bot_id)
        if poller is None or poller.latest is None:
            return None
        if asyncio.get_running_loop().time() - poller.latest_at > 2 * self.poll_interval + 0.1:
            return None
        return poller.latest

    def publish(self, bot_id: str, event: Event) -> None:
        """Send an event that did not come from the workflow (e.g. an API change while it is stopped)."""
        poller = self.pollers.get(bot_id)
        if poller is not None:
            poller.broadcast(event)

    async def close(self) -> None:
        async with self._lock:
            pollers = list(self.pollers.values())
            self.pollers.clear()
        for poller in pollers:
            await poller.stop()
