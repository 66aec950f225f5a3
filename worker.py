"""`python worker.py`: run the Temporal worker (the same as `xbot worker`)."""

from __future__ import annotations

import asyncio

from launch.worker import run_worker
from xbot.log_setup import configure_process_logging
from xbot.settings import settings_or_exit


def main() -> None:
    configure_process_logging()
    asyncio.run(run_worker(settings_or_exit()))


if __name__ == "__main__":
    main()
