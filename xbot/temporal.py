"""Connecting to Temporal, and the custom search attributes the scheduler keeps current."""

from __future__ import annotations

from temporalio.client import Client
from temporalio.common import SearchAttributeKey
from temporalio.contrib.pydantic import pydantic_data_converter

from xbot.settings import Settings

BOT_ID = SearchAttributeKey.for_keyword("BotId")
SCHEDULER_RUNNING = SearchAttributeKey.for_bool("SchedulerRunning")
NEXT_DUE_AT = SearchAttributeKey.for_datetime("NextDueAt")
SEARCH_ATTRIBUTES = (BOT_ID, SCHEDULER_RUNNING, NEXT_DUE_AT)


def dev_server_search_attribute_args() -> list[str]:
    """`temporal server start-dev` flags that register the search attributes at start."""
    kinds = {BOT_ID: "Keyword", SCHEDULER_RUNNING: "Bool", NEXT_DUE_AT: "Datetime"}
    args: list[str] = []
    for key, kind in kinds.items():
        args += ["--search-attribute", f"{key.name}={kind}"]
    return args


async def connect_temporal(settings: Settings) -> Client:
    api_key = settings.temporal_api_key.get_secret_value() if settings.temporal_api_key else None
    return await Client.connect(
        settings.temporal_address,
        namespace=settings.temporal_namespace,
        data_converter=pydantic_data_converter,
        tls=settings.temporal_tls or api_key is not None,
        api_key=api_key,
    )
