"""A WHERE clause built from optional filters, with numbered parameters (the history pages)."""

from __future__ import annotations


class Conditions:
    """Accumulates SQL conditions with numbered parameters."""

    def __init__(self, first: str, value: object) -> None:
        self.parts = [first]
        self.args: list[object] = [value]

    def add(self, template: str, *values: object) -> None:
        numbers = [f"${len(self.args) + index}" for index in range(1, len(values) + 1)]
        self.parts.append(template.format(*numbers))
        self.args.extend(values)

    @property
    def sql(self) -> str:
        return " AND ".join(self.parts)
