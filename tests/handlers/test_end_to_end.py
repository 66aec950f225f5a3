"""Mentions -> drafts -> posts -> Discord through the real BotScheduler workflow, a real worker and the
Temporal dev server, with the registry's handlers talking to the loopback fakes."""

from __future__ import annotations

import pytest
from temporalio.testing import WorkflowEnvironment

from tests.handlers.conftest import World
from tests.handlers.scheduling import add_task, completed_results, run_until_completed
from tests.support.factories import new_bot_id

pytestmark = [pytest.mark.devserver, pytest.mark.system]


async def test_mentions_are_answered_once_and_announced(
    world: World, dev_server_env: WorkflowEnvironment, task_queue: str
) -> None:
    client = dev_server_env.client
    bot = await world.add_bot(
        new_bot_id(), discord_webhook_url=world.discord_url, persona_prompt="You are Helper."
    )
    for user_id, name in (("2001", "alice"), ("2002", "bob"), ("2003", "carol")):
        world.x.add_user(user_id, name)
    mentions = [world.x.mention(u, f"@helperbot question from {u}") for u in ("2001", "2002", "2003")]
    pull = await add_task(world.pool, bot, "pull_mentions", priority=3, rate_limit_endpoint="mentions")
    draft = await add_task(world.pool, bot, "generate_replys", priority=2, dependencies=[pull])
    reply = await add_task(
        world.pool,
        bot,
        "reply_to_mentions",
        priority=1,
        dependencies=[draft],
        rate_limit_endpoint="create_post",
        min_rate_limit_remaining=1,
    )

    handle = await run_until_completed(world, client, bot, task_queue, reply)

    assert await completed_results(world.pool, pull) == [{"mentions_pulled": 3}]
    assert await completed_results(world.pool, draft) == [{"replies_generated": 3, "replies_failed": 0}]
    assert await completed_results(world.pool, reply) == [
        {"replies_sent": 3, "replies_failed": 0, "replies_recovered": 0}
    ]
    assert world.x.posts_per_mention == dict.fromkeys(mentions, 1)
    rows = await world.pool.fetch(
        "SELECT in_reply_to_x_post_id, status, posted_x_post_id, discord_notified_at FROM post_replies"
        " WHERE bot_id = $1",
        bot,
    )
    assert {r["in_reply_to_x_post_id"] for r in rows} == set(mentions)
    for row in rows:
        assert row["status"] == "posted" and row["discord_notified_at"] is not None
        assert [p["id"] for p in world.x.replies_by_bot(row["in_reply_to_x_post_id"])] == [
            row["posted_x_post_id"]
        ]
    assert sorted(m["content"].split(":", 1)[0] for m in world.discord.messages) == sorted(
        f"**Bot {bot}** replied to @{name} (post {mention})"
        for name, mention in zip(("alice", "bob", "carol"), mentions, strict=True)
    )

    # Tokens, post text and LLM output never enter the workflow history.
    # (Raw event bytes: payloads are plain JSON there, base64 in the JSON rendering.)
    history = await handle.fetch_history()
    raw = b"".join(event.SerializeToString() for event in history.events)
    assert bot.encode() in raw and b"reply_to_mentions" in raw  # payloads are readable here
    for secret in ("secretvalue", "question from", "Thanks for the mention", "You are Helper"):
        assert secret.encode() not in raw


async def test_stored_configurations_and_vision_keep_keys_out_of_the_history(
    world: World, dev_server_env: WorkflowEnvironment, task_queue: str
) -> None:
    """A definition choosing a stored configuration, template and vision: the workflow carries only
    their ids; keys, the template's text and the image description stay out of its history."""
    from tests.fakes.fake_llm import API_KEY
    from xbot.storage import llm_configs, prompt_templates
    from xbot.storage.llm_configs import LlmConfigCreate
    from xbot.storage.prompt_templates import PromptTemplateCreate

    keys = {"sk-e2e-reply-config-key", "sk-e2e-vision-config-key"}
    world.llm.accepted_keys = {API_KEY, *keys}
    base = world.settings.openai_base_url
    reply_config = await llm_configs.create_config(
        world.pool,
        LlmConfigCreate(
            name="e2e-reply", model="e2e-model", base_url=base, api_key="sk-e2e-reply-config-key"
        ),
        world.cipher,
    )
    vision_config = await llm_configs.create_config(
        world.pool,
        LlmConfigCreate(
            name="e2e-eyes", model="e2e-vision", base_url=base, api_key="sk-e2e-vision-config-key"
        ),
        world.cipher,
    )
    template = await prompt_templates.create_template(
        world.pool, PromptTemplateCreate(name="e2e", system_text="Template text: {persona}")
    )
    client = dev_server_env.client
    bot = await world.add_bot(new_bot_id())
    world.x.add_user("2001", "alice")
    world.x.mention(
        "2001",
        "@helperbot look at this",
        media=[{"type": "photo", "url": "https://pbs.twimg.com/media/a.jpg"}],
    )
    pull = await add_task(world.pool, bot, "pull_mentions", priority=2)
    config = {
        "llm_config_id": reply_config.id,
        "prompt_id": template.id,
        "vision_config": {"vision_llm_config_id": vision_config.id},
    }
    draft = await add_task(
        world.pool, bot, "generate_replies", priority=1, dependencies=[pull], config=config
    )

    handle = await run_until_completed(world, client, bot, task_queue, draft)

    assert await completed_results(world.pool, draft) == [
        {"replies_generated": 1, "replies_failed": 0, "images_described": 1}
    ]
    assert {call.model for call in world.llm.calls} == {"e2e-model", "e2e-vision"}
    raw = b"".join(event.SerializeToString() for event in (await handle.fetch_history()).events)
    assert b"generate_replies" in raw
    for secret in (*keys, "Template text", "A photo of a cat", "look at this"):
        assert secret.encode() not in raw
