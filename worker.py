"""`python worker.py`: run the Temporal worker (the same as `xbot worker`)."""

from __future__ import annotations

import asyncio
import logging
import sys

from xbot.settings import settings_or_exit
from xbot.worker_app import run_worker


def main() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    asyncio.run(run_worker(settings_or_exit()))


if __name__ == "__main__":
    main()
