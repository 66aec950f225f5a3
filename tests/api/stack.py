"""The API and an in-process worker on a real uvicorn server, in a thread with its own event loop.

For clients that are synchronous (schemathesis) or must not share the test's loop. The app opens its
own pool and Temporal client from settings, as `xbot api` does.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import AsyncExitStack, contextmanager

import httpx

from api.app import create_app
from tests.support.servers import serve_address
from xbot.settings import Settings
from xbot.storage.pool import create_pool
from xbot.temporal import connect_temporal


async def _run(settings: Settings, started: asyncio.Future[str], stop: asyncio.Event) -> None:
    try:
        await _serve_until_stopped(settings, started, stop)
    except BaseException as error:
        if not started.done():
            started.set_exception(error)
        raise


async def _serve_until_stopped(settings: Settings, started: asyncio.Future[str], stop: asyncio.Event) -> None:
    from launch.worker import build_worker

    assert settings.database_url is not None
    async with AsyncExitStack() as stack:
        pool = await create_pool(settings.database_url)
        stack.push_async_callback(pool.close)
        client = await connect_temporal(settings)
        http = await stack.enter_async_context(httpx.AsyncClient(timeout=10))
        worker = build_worker(client, pool, settings, settings.temporal_task_queue, http)
        await stack.enter_async_context(worker)
        app = create_app(settings, pool=pool, temporal_client=client)
        await stack.enter_async_context(app.router.lifespan_context(app))
        address = await stack.enter_async_context(serve_address(app))
        started.set_result(address)
        await stop.wait()


@contextmanager
def threaded_stack(settings: Settings) -> Iterator[str]:
    """Yields the base URL of the API; the worker polls `settings.temporal_task_queue`."""
    loop = asyncio.new_event_loop()
    started: asyncio.Future[str] = loop.create_future()
    stop = asyncio.Event()
    errors: list[BaseException] = []

    def main() -> None:
        try:
            loop.run_until_complete(_run(settings, started, stop))
        except BaseException as error:  # reported to the test thread
            errors.append(error)
        finally:
            loop.close()

    thread = threading.Thread(target=main, name="api-stack", daemon=True)
    thread.start()
    address = asyncio.run_coroutine_threadsafe(_wait(started), loop).result(timeout=60)
    try:
        yield f"http://{address}"
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=60)
        if errors:
            raise errors[0]


async def _wait(started: asyncio.Future[str]) -> str:
    return await started
