"""Task definitions of a bot: CRUD, run now, pause and resume. Every change tells the workflow."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from fastapi import APIRouter, Depends, Response
from pydantic import BaseModel
from temporalio.client import Client

from api.auth import require_token
from api.deps import COMMON_ERRORS, ExistingBotId, NotFound, Pool, State, TaskIdPath, Temporal, error_docs
from api.errors import ApiError
from api.feed import entity_update
from xbot import bot_control
from xbot.task_definitions import (
    BotNotFound,
    TaskDefinition,
    TaskDefinitionConflict,
    TaskDefinitionCreate,
    TaskDefinitionError,
    TaskDefinitionPatch,
    create_task_definition,
    delete_task_definition,
    get_task_definition,
    list_task_definitions,
    set_paused,
    update_task_definition,
)

log = logging.getLogger(__name__)

router = APIRouter(tags=["tasks"], dependencies=[Depends(require_token)], responses=COMMON_ERRORS)


class RunRequested(BaseModel):
    message: str
    taskId: int


async def _tell_workflow(state: State, bot_id: str, signal: Callable[[Client], Awaitable[bool]]) -> bool:
    """Best effort: the change is saved, and a (re)started workflow loads it from the database.
    True when a workflow received the signal."""
    state.status_flights.forget(bot_id)
    try:
        return await signal(await state.temporal.get())
    except Exception as error:
        log.warning("could not signal the scheduler of %s: %s", bot_id, error)
        return False


async def _changed(state: State, bot_id: str, task_id: int, action: str) -> None:
    """Tell the workflow to reload, and the feed's clients what changed (the workflow reports
    only its own changes to definitions: pause, resume, deactivation)."""
    await _tell_workflow(state, bot_id, lambda client: bot_control.reload_tasks(client, bot_id))
    state.hub.publish(bot_id, entity_update(bot_id, "task_definition", action, task_id))


@router.get("/bots/{botId}/tasks", response_model=list[TaskDefinition], responses=error_docs(404))
async def list_all(bot_id: ExistingBotId, pool: Pool) -> list[TaskDefinition]:
    return await list_task_definitions(pool, bot_id)


@router.post(
    "/bots/{botId}/tasks", status_code=201, response_model=TaskDefinition, responses=error_docs(400, 404)
)
async def create(
    bot_id: ExistingBotId, body: TaskDefinitionCreate, pool: Pool, state: State
) -> TaskDefinition:
    """Validated: known task type, one schedule, ranges, known endpoint, same-bot acyclic dependencies;
    a webhook URL the outbound URL policy refuses is a 400. Secret-looking headers are shown masked."""
    try:
        definition = await create_task_definition(
            pool, bot_id, body, allow_private_urls=state.settings.allow_private_urls
        )
    except TaskDefinitionError as error:
        raise ApiError(422, str(error)) from None
    except BotNotFound:
        raise NotFound(f"bot {bot_id} not found") from None
    await _changed(state, bot_id, definition.id, "created")
    return definition


@router.get("/bots/{botId}/tasks/{taskId}", response_model=TaskDefinition, responses=error_docs(404))
async def read(bot_id: ExistingBotId, task_id: TaskIdPath, pool: Pool) -> TaskDefinition:
    definition = await get_task_definition(pool, bot_id, task_id)
    if definition is None:
        raise NotFound(f"task definition {task_id} not found")
    return definition


@router.patch("/bots/{botId}/tasks/{taskId}", response_model=TaskDefinition, responses=error_docs(400, 404))
async def patch(
    bot_id: ExistingBotId, task_id: TaskIdPath, body: TaskDefinitionPatch, pool: Pool, state: State
) -> TaskDefinition:
    """Masked values sent back unchanged (`****` headers, the masked URL) keep the stored secrets."""
    try:
        definition = await update_task_definition(
            pool, bot_id, task_id, body, allow_private_urls=state.settings.allow_private_urls
        )
    except TaskDefinitionError as error:
        raise ApiError(422, str(error)) from None
    except BotNotFound:
        raise NotFound(f"bot {bot_id} not found") from None
    if definition is None:
        raise NotFound(f"task definition {task_id} not found")
    await _changed(state, bot_id, task_id, "updated")
    return definition


@router.delete(
    "/bots/{botId}/tasks/{taskId}", status_code=204, response_class=Response, responses=error_docs(404, 409)
)
async def delete(bot_id: ExistingBotId, task_id: TaskIdPath, pool: Pool, state: State) -> Response:
    """Refused (409) while other definitions depend on it."""
    try:
        deleted = await delete_task_definition(pool, bot_id, task_id)
    except TaskDefinitionConflict as error:
        raise ApiError(409, str(error)) from None
    except BotNotFound:
        raise NotFound(f"bot {bot_id} not found") from None
    if not deleted:
        raise NotFound(f"task definition {task_id} not found")
    await _changed(state, bot_id, task_id, "deleted")
    return Response(status_code=204)


@router.post(
    "/bots/{botId}/tasks/{taskId}/run",
    status_code=202,
    response_model=RunRequested,
    responses=error_docs(400, 404),
)
async def run_now(
    bot_id: ExistingBotId, task_id: TaskIdPath, pool: Pool, client: Temporal, state: State
) -> RunRequested:
    """Run the definition now (its dependencies first when stale); the scheduler must be running."""
    if await get_task_definition(pool, bot_id, task_id) is None:
        raise NotFound(f"task definition {task_id} not found")
    try:
        await bot_control.run_task(client, bot_id, task_id)
    except bot_control.SchedulerConflict as error:
        raise ApiError(400, str(error)) from None
    finally:
        state.status_flights.forget(bot_id)
    return RunRequested(message="Task run requested", taskId=task_id)


async def _set_paused(state: State, pool: Pool, bot_id: str, task_id: int, paused: bool) -> TaskDefinition:
    definition = await set_paused(pool, bot_id, task_id, paused)
    if definition is None:
        raise NotFound(f"task definition {task_id} not found")
    signal = bot_control.pause_task if paused else bot_control.resume_task
    if not await _tell_workflow(state, bot_id, lambda client: signal(client, bot_id, task_id)):
        # No workflow to report it: tell the feed's clients ourselves.
        state.hub.publish(
            bot_id, entity_update(bot_id, "task_definition", "paused" if paused else "resumed", task_id)
        )
    return definition


@router.post("/bots/{botId}/tasks/{taskId}/pause", response_model=TaskDefinition, responses=error_docs(404))
async def pause(bot_id: ExistingBotId, task_id: TaskIdPath, pool: Pool, state: State) -> TaskDefinition:
    """The definition stops being scheduled until resumed; a run in progress finishes."""
    return await _set_paused(state, pool, bot_id, task_id, True)


@router.post("/bots/{botId}/tasks/{taskId}/resume", response_model=TaskDefinition, responses=error_docs(404))
async def resume(bot_id: ExistingBotId, task_id: TaskIdPath, pool: Pool, state: State) -> TaskDefinition:
    return await _set_paused(state, pool, bot_id, task_id, False)
