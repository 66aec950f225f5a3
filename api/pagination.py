"""Opaque keyset cursors over (timestamp, id) in descending order."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from datetime import datetime
from typing import TypeVar

from api.errors import ApiError


def encode_cursor(at: datetime, row_id: int) -> str:
    return base64.urlsafe_b64encode(f"{at.isoformat()}|{row_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, int]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        at_text, _, id_text = base64.urlsafe_b64decode(padded.encode()).decode().partition("|")
        at = datetime.fromisoformat(at_text)
        row_id = int(id_text)
        if at.tzinfo is None or not 0 < row_id < 2**63:
            raise ValueError
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise ApiError(422, "cursor: invalid cursor") from None
    return at, row_id


Row = TypeVar("Row")


def cut_page(
    rows: list[Row], limit: int, key: Callable[[Row], tuple[datetime, int]]
) -> tuple[list[Row], str | None]:
    """The page from `limit + 1` rows fetched newest first, and the next page's cursor (None: the last)."""
    items = rows[:limit]
    return items, encode_cursor(*key(items[-1])) if len(rows) > limit else None
