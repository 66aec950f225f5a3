"""The five scenarios. Each module has NAME, DESCRIPTION, `estimate_seconds(quick)` and
`async run(ctx, result)`, which fills the result dict (see `bench.report`)."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from bench.env import Postgres
from bench.progress import Progress

SCENARIO_NAMES = ("precision", "throughput", "idle", "history", "api_feed", "crash_recovery")


@dataclass
class RunContext:
    postgres: Postgres
    workdir: Path
    quick: bool
    progress: Progress
    machine: dict[str, Any]
    options: dict[str, Any] = field(default_factory=dict)


def load(name: str) -> ModuleType:
    return importlib.import_module(f"bench.scenarios.{name}")


def missing_module(*modules: str) -> str | None:
    """The first of the given modules that is not there yet (other parts land concurrently)."""
    for module in modules:
        if importlib.util.find_spec(module) is None:
            return module
    return None


PROJECT_MODULES = ("workflows.bot_scheduler", "launch.worker", "activities.handlers.registry")
