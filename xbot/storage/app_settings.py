"""The `app_settings` table: operator-tunable values by key, read by the worker."""

from __future__ import annotations

from typing import Any

from xbot.storage.pool import Executor


async def get_setting(db: Executor, key: str) -> Any:
    """The stored value of `key` (as the column holds it), or None."""
    return await db.fetchval("SELECT value FROM app_settings WHERE key = $1", key)
