"""Starting, stopping, querying and signalling a bot's BotScheduler workflow, with the seed's semantics.

Start and stop are Workflow Updates (start is update-with-start): the call returns the workflow's own
answer once it has acted, so there is no polling. The `start`/`stop` signals stay for CLI users.

One owner of the desired state: the workflow's running flag, published as the `SchedulerRunning`
search attribute (no extra activity, no extra history event). `bots.scheduler_enabled` mirrors it: the
API writes it on start/stop and reconciles it whenever a read sees the attribute disagree (e.g. after
a CLI `stop` signal), and `status` heals a bot whose last run says it should run but whose workflow is
gone. Status is served without a query: DescribeWorkflowExecution (search attributes, read from the
execution's mutable state by the history service, so never stale and never queued behind the
workflow) plus the task rows in PostgreSQL, or the live feed's snapshot when one is fresh.
"""

from xbot.bot_control.commands import (
    CONTROL_TIMEOUT_SECONDS,
    QUERY_TIMEOUT,
    Listed,
    SchedulerConflict,
    StartResult,
    StopResult,
    Stored,
    WorkerUnavailable,
    describe,
    list_running,
    pause_task,
    query_status,
    reload_tasks,
    resume_task,
    run_task,
    shut_down_for_delete,
    signal_start,
    start,
    stop,
    workflow_status,
)
from xbot.bot_control.status import BotNotFound, Snapshot, StatusResult, mirror_enabled, should_run, status

__all__ = [
    "CONTROL_TIMEOUT_SECONDS",
    "QUERY_TIMEOUT",
    "BotNotFound",
    "Listed",
    "SchedulerConflict",
    "Snapshot",
    "StartResult",
    "StatusResult",
    "StopResult",
    "Stored",
    "WorkerUnavailable",
    "describe",
    "list_running",
    "mirror_enabled",
    "pause_task",
    "query_status",
    "reload_tasks",
    "resume_task",
    "run_task",
    "should_run",
    "shut_down_for_delete",
    "signal_start",
    "start",
    "status",
    "stop",
    "workflow_status",
]
