"""Keyset pages, newest first, for the API's lists: a page ends at a (time, id) pair and the next one
starts below it, so rows added meanwhile neither repeat nor shift a page."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg


class Where:
    """Conditions ANDed together, with their numbered arguments."""

    def __init__(self, *conditions: str, args: tuple[Any, ...] = ()) -> None:
        self.conditions = list(conditions)
        self.args = list(args)

    def equal(self, expression: str, value: Any) -> None:
        """`expression = value`, unless `value` is None (no filter)."""
        self.add(f"{expression} = {{}}", value)

    def add(self, template: str, value: Any) -> None:
        """`template` with `{}` standing for `value`, unless `value` is None (no filter)."""
        if value is not None:
            self.args.append(value)
            self.conditions.append(template.format(f"${len(self.args)}"))


async def newest_first(
    db: asyncpg.Pool | asyncpg.Connection,
    select: str,
    where: Where,
    *,
    order: tuple[str, str],
    before: tuple[datetime, int] | None,
    limit: int,
) -> list[asyncpg.Record]:
    """`select` (no WHERE) ordered by the `order` (time, id) columns, descending; `before`: the pair
    the previous page ended with."""
    conditions, args = list(where.conditions), list(where.args)
    time_column, id_column = order
    if before is not None:
        args += list(before)
        conditions.append(f"({time_column}, {id_column}) < (${len(args) - 1}, ${len(args)})")
    return list(
        await db.fetch(
            f"{select} WHERE {' AND '.join(conditions)}"
            f" ORDER BY {time_column} DESC, {id_column} DESC LIMIT {int(limit)}",
            *args,
        )
    )
