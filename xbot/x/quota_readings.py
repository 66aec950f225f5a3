"""What one answer of X says about the quota ledger's windows: X's 24-hour headers and, for a 429,
which window refused and until when (`Retry-After`, X's `usage-capped` problem).

Pure parsing, no database: `read_response` turns an answer into an `Observation`, and the ledger
(xbot.x.quota) settles a reservation with it. Kept apart from the ledger's transactions so each reads
on its own.
"""

from __future__ import annotations

import email.utils
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from xbot.storage.quota_windows import Scope, Source, WindowKind
from xbot.x.rate_limits import FIFTEEN_MINUTES, ONE_DAY, StaticLimit, parse_rate_limit_headers

USAGE_CAPPED = "https://api.twitter.com/2/problems/usage-capped"


def first_of_next_month(now: datetime) -> datetime:
    now = now.astimezone(UTC)
    year, month = (now.year + 1, 1) if now.month == 12 else (now.year, now.month + 1)
    return datetime(year, month, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Reading:
    """One ledger window (not the endpoint window) as an answer of X describes it."""

    scope: Scope
    window: WindowKind
    limit: int | None
    remaining: int
    reset_at: datetime
    source: Source
    reason: str | None = None


@dataclass(frozen=True)
class Observation:
    """What one answer of X says about the windows; `retry_at` is set when X refused (429)."""

    endpoint_window: tuple[int, int, datetime] | None = None
    readings: tuple[Reading, ...] = ()
    retry_at: datetime | None = None
    reason: str | None = None


def _parse_24h(headers: Mapping[str, str], who: str) -> tuple[int, int, datetime] | None:
    prefix = f"x-{who}-limit-24hour-"
    try:
        limit = int(headers[prefix + "limit"])
        remaining = int(headers[prefix + "remaining"])
        reset_at = datetime.fromtimestamp(int(headers[prefix + "reset"]), UTC)
    except (KeyError, ValueError, OverflowError):
        return None
    return max(limit, 0), max(remaining, 0), reset_at


def _retry_after(headers: Mapping[str, str], now: datetime) -> datetime | None:
    """`Retry-After` as seconds or an HTTP date; X sometimes sends it with a 429."""
    value = headers.get("retry-after", "").strip()
    if not value:
        return None
    if value.isdigit():
        return now + timedelta(seconds=int(value))
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _usage_cap(body: Any) -> dict[str, Any] | None:
    """X's usage-capped problem, at the top level or in `errors`."""
    candidates = [body] if isinstance(body, dict) else []
    if isinstance(body, dict) and isinstance(body.get("errors"), list):
        candidates += [item for item in body["errors"] if isinstance(item, dict)]
    for candidate in candidates:
        if candidate.get("type") == USAGE_CAPPED:
            return candidate
    return None


def read_response(
    status: int, headers: Mapping[str, str], body: Any, *, static: StaticLimit, now: datetime
) -> Observation:
    """Every window X's answer describes, and for a 429 which window refused and until when."""
    endpoint = parse_rate_limit_headers(headers)
    readings: list[Reading] = []
    user_day = _parse_24h(headers, "user")
    app_day = _parse_24h(headers, "app")
    if user_day is not None:
        readings.append(Reading("bot", "24h", *user_day, source="x-user-limit-24hour"))
    if app_day is not None:
        readings.append(Reading("app", "24h", *app_day, source="x-app-limit-24hour"))
    if status != 429:
        return Observation(endpoint, tuple(readings))

    retry_after = _retry_after(headers, now)
    cap = _usage_cap(body)
    if cap is not None:
        return _capped(cap, endpoint, readings, retry_after, now)
    spent = {f"the {r.scope}'s 24-hour allowance": r.reset_at for r in readings if r.remaining == 0}
    if endpoint is not None and endpoint[1] == 0:
        spent["the bot's x-rate-limit window"] = endpoint[2]
    if spent:
        return Observation(endpoint, tuple(readings), max(spent.values()), f"{' and '.join(spent)} spent")
    if endpoint is None and not readings:
        # No headers at all: assume the endpoint window, as the plan defines it, is spent.
        reset_at = retry_after or now + static.window
        return Observation((static.requests, 0, reset_at), (), reset_at, "no rate-limit headers")
    # The bot's own windows had room, so an app-wide 15-minute window refused.
    reset_at = retry_after or now + FIFTEEN_MINUTES
    reason = "the bot's windows had room: the app's 15-minute window is spent"
    readings.append(Reading("app", "15m", None, 0, reset_at, "429", reason))
    return Observation(endpoint, tuple(readings), reset_at, reason)


def _capped(
    cap: dict[str, Any],
    endpoint: tuple[int, int, datetime] | None,
    readings: list[Reading],
    retry_after: datetime | None,
    now: datetime,
) -> Observation:
    """A usage cap: closed until the period's reset (the next day, or the first of next month)."""
    detail = cap.get("detail") or cap.get("title") or "usage cap exceeded"
    period = str(cap.get("period", ""))
    reason = f"X usage cap ({period or 'unknown period'}, {cap.get('scope', 'unknown scope')}): {detail}"
    days = [reading for reading in readings if reading.window == "24h"]
    user_spent = any(r.scope == "bot" and r.remaining == 0 for r in days)
    app_spent = any(r.scope == "app" and r.remaining == 0 for r in days)
    # X's caps are per project (Product/Account scope), except when only the user's day is spent.
    scope: Scope = "bot" if user_spent and not app_spent else "app"
    kind: WindowKind
    if period == "Monthly":
        kind, reset_at = "month", retry_after or first_of_next_month(now)
    else:  # "Daily", or a period X did not name: the shorter wait, X will say again if it is longer
        kind = "24h"
        spent_resets = [r.reset_at for r in days if r.remaining == 0]
        any_resets = [r.reset_at for r in days]
        reset_at = retry_after or max(spent_resets or any_resets or [now + ONE_DAY])
    limit = next((r.limit for r in days if r.scope == scope and kind == "24h"), None)
    closed = Reading(scope, kind, limit, 0, reset_at, "usage-capped", str(reason)[:300])
    others = [r for r in readings if (r.scope, r.window) != (scope, kind)]
    return Observation(endpoint, (*others, closed), reset_at, closed.reason)
