"""Dependencies between a bot's task definitions: same bot only, and no cycles (checked when saved,
so the scheduler never meets a cycle at run time)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import asyncpg

from xbot.storage.task_definitions import dependency_graph


def find_cycle(graph: Mapping[int, Iterable[int]]) -> list[int] | None:
    """A dependency cycle in `graph` (id -> ids it depends on) as a path, or None."""
    visiting: set[int] = set()
    done: set[int] = set()
    path: list[int] = []

    def visit(node: int) -> list[int] | None:
        if node in done:
            return None
        if node in visiting:
            return [*path[path.index(node) :], node]
        visiting.add(node)
        path.append(node)
        for neighbour in graph.get(node, ()):
            found = visit(neighbour)
            if found:
                return found
        path.pop()
        visiting.discard(node)
        done.add(node)
        return None

    for start in graph:
        found = visit(start)
        if found:
            return found
    return None


async def dependency_problem(
    connection: asyncpg.Connection, bot_id: str, task_id: int | None, dependencies: list[int]
) -> str | None:
    """Why these dependencies cannot be saved for `task_id` (None: a new definition), or None."""
    graph = await dependency_graph(connection, bot_id)
    missing = [item for item in dependencies if item not in graph]
    if missing:
        return f"dependencies: {', '.join(map(str, missing))} not a task definition of bot {bot_id}"
    node = task_id if task_id is not None else 0  # 0 stands for the definition being created
    graph[node] = dependencies
    cycle = find_cycle(graph)
    if cycle:
        names = " -> ".join("new" if item == 0 else str(item) for item in cycle)
        return f"dependencies: cycle {names}"
    return None
