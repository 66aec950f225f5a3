"""`GET /metrics` in the Prometheus text format, computed from the database and Temporal per scrape.

Counting from the database (not in-process counters) keeps the numbers right with several API
processes and across restarts: executions by task type and outcome, a start-lateness histogram
(started_at - due_at of first attempts), and bots whose scheduler runs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from datetime import timedelta

from fastapi import APIRouter, Depends, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from api.auth import require_token
from api.deps import COMMON_ERRORS, Pool, State
from workflows.models import WORKFLOW_NAME
from xbot.storage import llm_usage, posts, replies
from xbot.storage import metrics as aggregates

log = logging.getLogger(__name__)

router = APIRouter(tags=["metrics"], dependencies=[Depends(require_token)], responses=COMMON_ERRORS)

LATENESS_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class _Snapshot:
    """A collector that returns metric families computed before the scrape."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families


async def _execution_families(pool: Pool) -> list[Metric]:
    executions = CounterMetricFamily(
        "xbot_task_executions",
        "Task execution attempts by task type and outcome",
        labels=["task_type", "status"],
    )
    for row in await aggregates.executions_by_type_and_status(pool):
        executions.add_metric([row["task_type"], row["status"]], row["n"])
    lateness = HistogramMetricFamily(
        "xbot_task_start_lateness_seconds",
        "How late first attempts started after their due time",
        labels=["task_type"],
    )
    for row in await aggregates.start_lateness(pool, LATENESS_BUCKETS):
        counts = list(row.values())[1 : 1 + len(LATENESS_BUCKETS)]
        buckets = [(str(bound), count) for bound, count in zip(LATENESS_BUCKETS, counts, strict=True)]
        buckets.append(("+Inf", row["total"]))
        lateness.add_metric([row["task_type"]], buckets, row["total_seconds"])
    enabled = GaugeMetricFamily(
        "xbot_bots_scheduler_enabled", "Bots whose operator asked the scheduler to run"
    )
    enabled.add_metric([], await aggregates.count_bots(pool, scheduler_enabled_only=True))
    total = GaugeMetricFamily("xbot_bots", "Bots")
    total.add_metric([], await aggregates.count_bots(pool))
    return [executions, lateness, enabled, total, *await _reply_policy_families(pool)]


async def _reply_policy_families(pool: Pool) -> list[Metric]:
    """Mentions not answered, by reason (the policy's rule, or `backlog`), and drafts by status."""
    skipped = CounterMetricFamily(
        "xbot_mentions_skipped", "Mentions a bot will not answer, by reason", labels=["bot_id", "reason"]
    )
    for bot_id, reason, count in await posts.skipped_counts(pool):
        skipped.add_metric([bot_id, reason], count)
    filtered = CounterMetricFamily(
        "xbot_replies_rejected_by_filter", "Drafts the output filter refused", labels=["bot_id"]
    )
    tokens = CounterMetricFamily(
        "xbot_llm_tokens", "LLM tokens spent on replies and gate calls", labels=["bot_id", "direction"]
    )
    for bot_id, count in await replies.filtered_counts(pool):
        filtered.add_metric([bot_id], count)
    for spent in await llm_usage.tokens_by_bot(pool):
        tokens.add_metric([spent.bot_id, "in"], spent.tokens_in)
        tokens.add_metric([spent.bot_id, "out"], spent.tokens_out)
    return [skipped, filtered, tokens]


async def _running_bots(state: State) -> list[Metric]:
    up = GaugeMetricFamily("xbot_temporal_up", "Whether Temporal answered this scrape")
    try:
        client = await state.temporal.get()
        count = await asyncio.wait_for(
            client.count_workflows(
                f'WorkflowType = "{WORKFLOW_NAME}" AND ExecutionStatus = "Running"'
                f' AND TaskQueue = "{state.task_queue}" AND SchedulerRunning = true',
                rpc_timeout=timedelta(seconds=2),
            ),
            3,
        )
    except Exception as error:
        log.warning("metrics: cannot count running bots: %s", error)
        up.add_metric([], 0)
        return [up]
    up.add_metric([], 1)
    running = GaugeMetricFamily("xbot_running_bots", "Bots whose scheduler workflow is running")
    running.add_metric([], count.count)
    return [up, running]


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}, "description": "Metrics"}
    },
)
async def metrics(pool: Pool, state: State) -> Response:
    """Prometheus metrics."""
    families = await _execution_families(pool) + await _running_bots(state)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(families))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
