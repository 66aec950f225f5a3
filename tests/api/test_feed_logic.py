"""The feed's bookkeeping on plain status values: each event once, gaps and slow clients resync.

The end-to-end feed (real workflow, real WebSocket) is in test_live_feed.py; these cases need
buffers and timings that a real workflow would only produce by accident.
"""

from __future__ import annotations

from datetime import UTC, datetime

from api.feed import BotPoller, FeedClient
from workflows.models import SchedulerEvent, SchedulerStatus

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _status(seqs: range | list[int], running: bool = True, last: int | None = None) -> SchedulerStatus:
    events = [
        SchedulerEvent(
            seq=seq, type="log", timestamp=NOW, data={"id": seq, "level": "info", "content": f"e{seq}"}
        )
        for seq in seqs
    ]
    return SchedulerStatus(
        botId="b",
        isRunning=running,
        nextAlarmTime=None,
        runningTasks=[],
        tasks=[],
        recentEvents=events,
        lastEventSeq=last if last is not None else (max(seqs) if seqs else 0),
    )


async def _source(_: str) -> SchedulerStatus | None:  # never called: apply() is driven directly
    raise AssertionError


def _poller_with_client(queue_size: int = 100) -> tuple[BotPoller, FeedClient]:
    poller = BotPoller("b", _source, 1.0)
    client = FeedClient("b", queue_size)
    poller.clients.add(client)
    return poller, client


def _drain(client: FeedClient) -> list[dict[str, object]]:
    events = []
    while not client.queue.empty():
        events.append(client.queue.get_nowait())
    return events


async def test_each_event_once_in_order_across_overlapping_buffers() -> None:
    poller, client = _poller_with_client()
    poller.apply(_status(range(1, 4)))  # first poll: sets the cursor, delivers nothing old
    assert _drain(client) == []
    poller.apply(_status(range(2, 7)))
    poller.apply(_status(range(2, 7)))  # same buffer again: nothing new
    poller.apply(_status(range(4, 9)))
    events = _drain(client)
    assert [event["seq"] for event in events] == [4, 5, 6, 7, 8]
    assert events[0] == {
        "type": "log", "id": 4, "timestamp": "2026-01-01T00:00:00Z", "level": "info",
        "content": "e4", "botId": "b", "seq": 4,
    }  # fmt: skip


async def test_gap_beyond_the_buffer_sends_resync_then_continues() -> None:
    poller, client = _poller_with_client()
    poller.apply(_status(range(1, 3)))
    poller.apply(_status(range(10, 13)))  # 3..9 fell out of the buffer between polls
    events = _drain(client)
    assert events[0]["type"] == "resync"
    assert [event["seq"] for event in events[1:]] == [10, 11, 12]


async def test_a_new_run_numbers_afresh_and_is_delivered() -> None:
    poller, client = _poller_with_client()
    poller.apply(_status(range(40, 51)))
    poller.apply(None)  # workflow closed
    poller.apply(_status(range(1, 4)))  # a new run
    events = _drain(client)
    assert events[0]["type"] == "scheduler_status_update" and events[0]["isRunning"] is False
    assert [event.get("seq") for event in events[1:4]] == [1, 2, 3]


async def test_a_slow_client_gets_resync_and_does_not_hold_up_others() -> None:
    poller, fast = _poller_with_client(queue_size=1000)
    slow = FeedClient("b", 5)
    poller.clients.add(slow)
    poller.apply(_status([0], last=0))
    poller.apply(_status(range(1, 21)))
    assert [event["seq"] for event in _drain(fast)] == list(range(1, 21))
    backlog = _drain(slow)
    assert backlog[0]["type"] == "resync"  # lost its backlog, told so
    assert len(backlog) <= 5 and slow.resyncs >= 1


async def test_status_change_without_event_is_reported_once() -> None:
    poller, client = _poller_with_client()
    poller.apply(_status([], running=True, last=0))
    poller.apply(_status([], running=False, last=0))
    poller.apply(_status([], running=False, last=0))
    updates = _drain(client)
    assert [(event["type"], event["isRunning"]) for event in updates] == [("scheduler_status_update", False)]
