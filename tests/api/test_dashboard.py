"""The dashboard end to end in headless Chromium (Debian's package) driven by Playwright.

Open the page, give the token, open a bot, start it, see its status change and a log line arrive
over the WebSocket, and approve a reply waiting for approval. Connect a bot's X account: through the
fake X's consent page and the callback, back to the dashboard.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from temporalio.testing import WorkflowEnvironment

from api.app import create_app
from tests.api.conftest import API_TOKEN
from tests.api.test_connect import connect_settings
from tests.fakes.fake_x import FakeX
from tests.support.factories import insert_bot, insert_reply, insert_task
from tests.support.servers import serve, serve_address

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = [
    pytest.mark.system,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)",
    ),
    pytest.mark.usefixtures("worker"),
]


@pytest.fixture
async def page(live_server: str) -> AsyncIterator[object]:
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = await browser.new_context()
            tab = await context.new_page()
            tab.set_default_timeout(30_000)
            yield tab
        finally:
            await browser.close()


async def test_dashboard_start_live_log_and_approve(
    page: object, live_server: str, pool: asyncpg.Pool, bot_id: str
) -> None:
    from playwright.async_api import Page, expect

    assert isinstance(page, Page)
    await insert_bot(pool, bot_id, approval_required=True)
    await insert_task(
        pool, bot_id, "noop", interval_seconds=1, next_planned_run_at=datetime.now(UTC) + timedelta(seconds=1)
    )
    reply_id = await insert_reply(pool, bot_id, "555", mention="@demo is this thing on?", text="It is!")

    await page.goto(f"http://{live_server}/")
    await page.fill("#token-input", API_TOKEN)
    await page.click("#token-save")
    row = page.locator(f'tr[data-bot-id="{bot_id}"]')
    await expect(row).to_contain_text("Stopped")
    assert await page.evaluate("sessionStorage.getItem('xbot.apiToken')") == API_TOKEN

    await row.locator("a").click()
    await expect(page.locator("#feed-state")).to_have_text("live")
    await expect(page.locator("#bot-status")).to_have_text("Stopped")
    await expect(page.locator("[data-reply-id] blockquote")).to_contain_text("is this thing on?")

    await page.click("#start-btn")
    await expect(page.locator("#bot-status")).to_have_text("Running")
    # A log line pushed over the WebSocket (not loaded by the initial fetch).
    await expect(page.locator("#logs li[data-live]").filter(has_text="Scheduler started")).to_have_count(1)

    await page.locator(f'[data-reply-id="{reply_id}"] button.approve').click()
    await expect(page.locator(f'[data-reply-id="{reply_id}"]')).to_have_count(0)
    assert await pool.fetchval("SELECT status FROM post_replies WHERE id = $1", reply_id) == "approved"

    await page.click("#stop-btn")
    await expect(page.locator("#bot-status")).to_have_text("Stopped")


async def test_dashboard_connects_an_x_account_through_x_and_back(
    pool: asyncpg.Pool, dev_server_env: WorkflowEnvironment, task_queue: str, bot_id: str
) -> None:
    """Click Connect X account: X's (fake) consent page sends the browser to the callback, which stores
    the tokens and returns to the dashboard, where the bot shows its account connected."""
    from playwright.async_api import async_playwright, expect

    await insert_bot(pool, bot_id)
    x = FakeX()
    async with serve(x.app()) as x_url:
        settings = connect_settings(task_queue, x_url)
        app = create_app(settings, pool=pool, temporal_client=dev_server_env.client)
        async with app.router.lifespan_context(app), serve_address(app) as address:
            # The callback's address is known only now: X sends the browser back to this server.
            redirect = f"http://{address}/oauth/x/callback"
            app.state.api.settings = settings.model_copy(update={"x_redirect_uri": redirect})
            async with async_playwright() as playwright:
                browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
                try:
                    page = await (await browser.new_context()).new_page()
                    page.set_default_timeout(30_000)
                    await page.goto(f"http://{address}/")
                    await page.fill("#token-input", API_TOKEN)
                    await page.click("#token-save")
                    row = page.locator(f'tr[data-bot-id="{bot_id}"]')
                    await expect(row.locator(".x-account")).to_have_text("not connected")

                    await row.locator("button.connect").click()  # to X, and back through the callback
                    await page.wait_for_url(f"http://{address}/#/bots/{bot_id}")
                    await expect(page.locator("#notice")).to_have_text("X account connected.")
                    await expect(page.locator("#x-account-state")).to_have_text("@helperbot")
                    await expect(page.locator("#x-connection")).to_contain_text("offline.access")
                    await expect(page.locator("#connect-btn")).to_have_text("Reconnect")
                finally:
                    await browser.close()
    assert [r.endpoint for r in x.requests if r.endpoint in ("authorize", "token")] == ["authorize", "token"]
    assert await pool.fetchval("SELECT x_username FROM bots WHERE id = $1", bot_id) == "helperbot"
    assert await pool.fetchval("SELECT auth_state FROM bots WHERE id = $1", bot_id) == "ok"


async def test_dashboard_shows_and_edits_the_reply_policy_and_skipped_mentions(
    page: object, live_server: str, pool: asyncpg.Pool, bot_id: str
) -> None:
    from playwright.async_api import Page, expect

    assert isinstance(page, Page)
    await insert_bot(pool, bot_id)
    await pool.execute(
        "INSERT INTO x_users (x_user_id, username) VALUES ('4242', 'persistent') ON CONFLICT DO NOTHING"
    )
    await pool.execute(
        "INSERT INTO pulled_posts (bot_id, x_post_id, author_x_user_id, text, skipped_reason, skipped_code)"
        " VALUES ($1, '901', '4242', '@demo again and again', 'already 5 replies to this author today', 'author_cap')",
        bot_id,
    )

    await page.goto(f"http://{live_server}/")
    await page.fill("#token-input", API_TOKEN)
    await page.click("#token-save")
    await page.locator(f'tr[data-bot-id="{bot_id}"] a').click()

    skipped = page.locator('#skipped-body tr[data-post-id="901"]')
    await expect(skipped).to_contain_text("author_cap")
    await expect(skipped).to_contain_text("@persistent")
    await expect(page.locator("#policy-opt_out_words")).to_have_value("stop, unsubscribe")
    await expect(page.locator("#spend")).to_contain_text("LLM tokens")

    await page.fill("#policy-max_replies_per_author_per_day", "2")
    await page.fill("#policy-deny_keywords", "giveaway, airdrop")
    await page.check("#policy-gate_enabled")
    await page.click("#policy-save")
    await expect(page.locator("#notice")).to_have_text("Reply policy saved.")
    stored = await pool.fetchval("SELECT policy FROM bot_reply_policies WHERE bot_id = $1", bot_id)
    assert stored["max_replies_per_author_per_day"] == 2 and stored["gate_enabled"] is True
    assert stored["deny_keywords"] == ["giveaway", "airdrop"]

    # A bad value is refused with the API's message, and what was saved stays.
    await page.fill("#policy-languages", "english")
    await page.click("#policy-save")
    await expect(page.locator("#notice")).to_contain_text("languages")
    await expect(page.locator("#policy-languages")).to_have_value("english")  # what was typed is kept
    stored = await pool.fetchval("SELECT policy FROM bot_reply_policies WHERE bot_id = $1", bot_id)
    assert stored["languages"] == []


async def test_dashboard_lists_llm_configurations_templates_and_each_drafts_provenance(
    page: object, live_server: str, pool: asyncpg.Pool, bot_id: str
) -> None:
    from playwright.async_api import Page, expect

    assert isinstance(page, Page)
    await insert_bot(pool, bot_id, approval_required=True)
    config_id = await pool.fetchval(
        "INSERT INTO llm_configs (name, model, api_key_enc) VALUES ($1, 'gpt-dash', '\\x00'::bytea) RETURNING id",
        f"dash-{bot_id}",
    )
    template_id = await pool.fetchval(
        "INSERT INTO prompt_templates (name, system_text, version) VALUES ($1, 'Be {persona}', 4) RETURNING id",
        f"kind-{bot_id}",
    )
    reply_id = await insert_reply(pool, bot_id, "777", mention="@demo what is this?", text="A cat!")
    await pool.execute(
        "UPDATE post_replies SET prompt_template_id = $2, prompt_version = 3, llm_model = 'gpt-dash',"
        " llm_config_id = $3 WHERE id = $1",
        reply_id,
        template_id,
        config_id,
    )
    await pool.execute(
        "UPDATE pulled_posts SET image_description = 'A cat on a sofa.' WHERE bot_id = $1 AND x_post_id = '777'",
        bot_id,
    )

    await page.goto(f"http://{live_server}/")
    await page.fill("#token-input", API_TOKEN)
    await page.click("#token-save")
    config_row = page.locator(f'#llm-configs-body tr[data-llm-config-id="{config_id}"]')
    await expect(config_row).to_contain_text("gpt-dash")
    await expect(config_row).to_contain_text("stored")
    template_row = page.locator(f'#prompts-body tr[data-prompt-id="{template_id}"]')
    await expect(template_row).to_contain_text("v4")
    await expect(template_row).to_contain_text("{persona}")

    await page.locator(f'tr[data-bot-id="{bot_id}"] a').click()
    card = page.locator(f'[data-reply-id="{reply_id}"]')
    await expect(card.locator(".provenance")).to_have_text(
        f"draft #{reply_id} · kind-{bot_id} v3 · gpt-dash (config #{config_id})"
    )
    await expect(card.locator(".image-description")).to_have_text("Images: A cat on a sofa.")
