"""Connecting to Temporal, and the custom search attributes the scheduler keeps current."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.client import Client
from temporalio.common import SearchAttributeKey

from workflows.models import BOT_ID, NEXT_DUE_AT, SCHEDULER_RUNNING, SEARCH_ATTRIBUTES
from xbot.crypto.codec import data_converter
from xbot.settings import Settings

# The keys live in the workflow's contract; re-exported for the tests and tools that import them here.
__all__ = [
    "BOT_ID",
    "DEV_SERVER_DYNAMIC_CONFIG",
    "NEXT_DUE_AT",
    "SCHEDULER_RUNNING",
    "SEARCH_ATTRIBUTES",
    "connect_temporal",
    "dev_server_args",
    "ensure_search_attributes",
]


# Server settings the scheduler relies on, for every dev server this project starts (the compose
# stack sets the same in deploy/temporal/dynamicconfig). Eager activity execution hands an attempt
# scheduled by a workflow task straight back to the worker that completed it: no matching round trip
# between "due" and "running". New tasks go to one partition of each task queue: a single-process
# server gains nothing from four, and a backlog spread over them (thousands of bots started at once)
# reached the worker through forwarding between partitions at ~45 workflow tasks/s with both cores
# half idle; written to one, ~115/s, as fast as the CPU allows (3,000 bots settled in 37 s, not 58 s).
# Reads still cover all four, so tasks a server wrote before this setting are never stranded.
# Visibility calls (`GET /bots` makes one list call per page, the Web UI one per view) are limited
# to 10 per second per namespace by default; past it the server answers RESOURCE_EXHAUSTED and the
# client retries a second later: four clients walking `GET /bots` stalled for ~1 s every ~1.7 s.
# This server serves one stack, so the limit is set beyond what its store can answer anyway.
VISIBILITY_RPS = 1000
# `start-dev` turns on re-reading the search-attribute definitions from the store on every use (so
# that ones just added apply at once): 9 cluster-metadata and 4 namespace reads per execution of a
# bot, ~6% of the server's CPU. Off, as on any production server; `ensure_search_attributes` waits
# until attributes it adds are in use instead.
DEV_SERVER_DYNAMIC_CONFIG = {
    "system.enableActivityEagerExecution": "true",
    "matching.numTaskqueueWritePartitions": "1",
    "frontend.namespaceRPS.visibility": str(VISIBILITY_RPS),
    "system.forceSearchAttributesCacheRefreshOnRead": "false",
}
# How long a server may take to use search attributes just added (its cache refreshes; ~2 s seen).
SEARCH_ATTRIBUTES_READY_SECONDS = 90.0


def _indexed_type(attribute: SearchAttributeKey[Any]) -> IndexedValueType.ValueType:
    return IndexedValueType.ValueType(attribute.indexed_value_type)


def dev_server_args() -> list[str]:
    """`temporal server start-dev` flags: the search attributes (registered at start) and the
    dynamic config above."""
    args: list[str] = []
    for attribute in SEARCH_ATTRIBUTES:
        # INDEXED_VALUE_TYPE_DATETIME -> Datetime, the CLI's spelling
        kind = IndexedValueType.Name(_indexed_type(attribute)).removeprefix("INDEXED_VALUE_TYPE_").title()
        args += ["--search-attribute", f"{attribute.name}={kind}"]
    for key, value in DEV_SERVER_DYNAMIC_CONFIG.items():
        args += ["--dynamic-config-value", f"{key}={value}"]
    return args


async def connect_temporal(settings: Settings) -> Client:
    api_key = settings.temporal_api_key.get_secret_value() if settings.temporal_api_key else None
    return await Client.connect(
        settings.temporal_address,
        namespace=settings.temporal_namespace,
        data_converter=data_converter(settings),
        tls=settings.temporal_tls or api_key is not None,
        api_key=api_key,
    )


async def ensure_search_attributes(client: Client) -> list[str]:
    """Register the custom search attributes that are missing; return the names added.

    `start-dev --search-attribute` only registers them when its database is new, so a dev server
    restarted on an older SQLite file (or a real cluster) gets them here.
    """
    from temporalio.api.operatorservice.v1 import (
        AddSearchAttributesRequest,
        ListSearchAttributesRequest,
    )

    kinds = {attribute.name: _indexed_type(attribute) for attribute in SEARCH_ATTRIBUTES}
    existing = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=client.namespace)
    )
    missing = {name: kind for name, kind in kinds.items() if name not in existing.custom_attributes}
    if missing:
        await client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(namespace=client.namespace, search_attributes=missing)
        )
        await _until_usable(client, sorted(missing))
    return sorted(missing)


async def _until_usable(client: Client, names: list[str]) -> None:
    """Wait until the server accepts a query on `names`: a server caches the definitions, and a
    workflow upserting an attribute it does not know yet would fail its workflow task."""
    from temporalio.api.workflowservice.v1 import CountWorkflowExecutionsRequest
    from temporalio.service import RPCError

    query = " AND ".join(f"{name} IS NULL" for name in names)
    request = CountWorkflowExecutionsRequest(namespace=client.namespace, query=query)
    deadline = time.monotonic() + SEARCH_ATTRIBUTES_READY_SECONDS
    while True:
        try:
            await client.workflow_service.count_workflow_executions(request, retry=False)
            return
        except RPCError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.25)
