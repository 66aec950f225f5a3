"""Reply drafts from any OpenAI-compatible chat completions endpoint, through the `openai` client.

Base URL, model and sampling come from the bot's `llm_*` columns, falling back to the settings. The
API key: the bot's own (`llm_api_key`, stored encrypted) when it has one; else, for a bot with its
own `llm_base_url`, no key at all (never the global OPENAI_API_KEY, which belongs to OPENAI_BASE_URL);
else OPENAI_API_KEY.

A stored LLM configuration (`xbot.storage.llm_configs`, chosen by a task definition's
`config.llm_config_id`) comes first: its base URL, model, sampling and its own key (`options_for_config`).

The messages are built in `xbot.llm.prompts` (everything from X as JSON data, never inside the system
instructions); `should_respond` is the reply policy's optional RESPOND/IGNORE gate and `describe`
asks a vision model what a mention's images show.

Failures split three ways (HTTP statuses as the `openai` client maps them to exception types):
- `LlmReplyRejected`: nothing postable for this one mention (empty, refused, content filter); it is
  recorded as failed and the batch goes on.
- `LlmUnavailableError` (retryable): timeouts, connection failures, 429, 5xx, 408/409.
- `LlmConfigurationError` (non-retryable): unknown model (404), refused parameter (400/422), refused
  or missing key (401/403), no quota left (429 `insufficient_quota`). Retrying cannot fix these and
  marking every mention failed would lose them, so the task fails with a message for the operator
  and the mentions stay as they were.

An answer cut off at the token limit (`finish_reason == "length"`) is asked for once more with a
shorter limit in the instruction; if that is cut off too, it is cut at its last whole sentence.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import openai
from openai import AsyncOpenAI
from openai.types.chat import ChatCompletion, ChatCompletionMessageParam

from xbot import url_policy
from xbot.errors import NonRetryableTaskError, TaskError
from xbot.llm.prompts import (
    ContextPost,
    MentionPrompt,
    build_gate_messages,
    build_messages,
    build_vision_messages,
    parse_gate_answer,
)
from xbot.settings import Settings
from xbot.storage.llm_configs import StoredLlmConfig
from xbot.x.text import fit_to_post

_QUOTES = "\"'\u201c\u201d"
# The instruction's limit when an answer was cut off at the token limit and is asked for again.
SHORTER_REPLY_CHARS = 160
# Errors of a 400 that are about this mention's content, not the configuration.
_CONTENT_CODES = {"content_filter", "content_policy_violation"}
# Placeholder the openai client needs when no key is sent; the Authorization header is then omitted.
_NO_KEY = "no-key"


class LlmReplyRejected(Exception):
    """The LLM gave nothing postable for this mention; record it as failed and move on."""

    def __init__(self, message: str, usage: Usage | None = None) -> None:
        super().__init__(message)
        self.usage = usage or Usage()


class LlmUnavailableError(TaskError):
    """The LLM could not be reached or is overloaded; retry the task later."""


class LlmConfigurationError(NonRetryableTaskError):
    """The LLM refuses the bot's configuration (model, parameters, key); an operator must fix it."""


@dataclass(frozen=True)
class LlmOptions:
    model: str
    base_url: str | None
    temperature: float | None
    max_tokens: int | None
    api_key: str | None = field(default=None, repr=False)  # None: no Authorization header at all
    key_source: str = "no API key"  # which key, for messages: never the key itself
    # The bot's own llm_base_url (given through the API): checked by the outbound URL policy.
    own_base_url: bool = False
    llm_config_id: int | None = None  # the stored configuration these come from, if any
    # What an operator changes to fix a refused key, model or parameter.
    fix_hint: str = "the bot's llm_model, llm_temperature, llm_max_tokens or llm_base_url"


@dataclass(frozen=True)
class Usage:
    """Tokens the LLM reported (openai `usage`), summed over the calls of one draft."""

    tokens_in: int = 0
    tokens_out: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(self.tokens_in + other.tokens_in, self.tokens_out + other.tokens_out)

    @property
    def total(self) -> int:
        return self.tokens_in + self.tokens_out


def _usage(completion: ChatCompletion) -> Usage:
    usage = completion.usage
    if usage is None:
        return Usage()
    return Usage(max(usage.prompt_tokens or 0, 0), max(usage.completion_tokens or 0, 0))


@dataclass(frozen=True)
class Draft:
    text: str
    model: str
    usage: Usage = Usage()


@dataclass(frozen=True)
class GateVerdict:
    respond: bool
    reason: str
    usage: Usage


class ReplyGenerator:
    """One AsyncOpenAI client per base URL and key, shared by every bot that uses them."""

    def __init__(self, settings: Settings, *, timeout_seconds: float = 60.0) -> None:
        self._settings = settings
        self._timeout = timeout_seconds
        self._clients: dict[tuple[str | None, str], AsyncOpenAI] = {}

    def options_for(
        self,
        model: str | None,
        base_url: str | None,
        temperature: float | None,
        max_tokens: int | None,
        *,
        api_key: str | None = None,
    ) -> LlmOptions:
        """`base_url` and `api_key` are the bot's own; the global settings fill in what it lacks,
        except that a bot's own base URL never gets the global key."""
        key_source = "the bot's llm_api_key"
        if api_key is None and base_url is None:
            global_key = self._settings.openai_api_key
            api_key = global_key.get_secret_value() if global_key else None
            key_source = "OPENAI_API_KEY" if global_key else "no API key (OPENAI_API_KEY is unset)"
        elif api_key is None:
            key_source = "no API key (the bot has its own llm_base_url and no llm_api_key)"
        return LlmOptions(
            model=model or self._settings.openai_model,
            base_url=base_url or self._settings.openai_base_url or None,
            temperature=temperature,
            max_tokens=max_tokens,
            api_key=api_key or None,
            key_source=key_source,
            own_base_url=base_url is not None,
        )

    def options_for_config(self, config: StoredLlmConfig, api_key: str | None) -> LlmOptions:
        """A stored configuration's options: its own key; without one, its own base URL gets no key
        and the global endpoint gets OPENAI_API_KEY (which only ever goes to OPENAI_BASE_URL)."""
        label = f"LLM configuration {config.id} ({config.name!r})"
        key_source = f"the API key of {label}"
        if api_key is None and config.base_url is None:
            global_key = self._settings.openai_api_key
            api_key = global_key.get_secret_value() if global_key else None
            key_source = f"OPENAI_API_KEY (used by {label})" if global_key else f"no API key ({label})"
        elif api_key is None:
            key_source = f"no API key ({label} has its own base_url and no api_key)"
        return LlmOptions(
            model=config.model,
            base_url=config.base_url or self._settings.openai_base_url or None,
            temperature=config.temperature,
            max_tokens=config.max_tokens,
            api_key=api_key or None,
            key_source=key_source,
            own_base_url=config.base_url is not None,
            llm_config_id=config.id,
            fix_hint=f"{label} (PATCH /llm-configs/{config.id})",
        )

    async def _check_base_url(self, base_url: str) -> None:
        """Checked again at request time (DNS may have changed since the API accepted it)."""
        try:
            await url_policy.check_url(base_url, allow_private=self._settings.allow_private_urls)
        except url_policy.UrlPolicyError as error:
            if error.retryable:
                raise LlmUnavailableError(f"llm_base_url {error}") from None
            raise LlmConfigurationError(f"llm_base_url refused by the outbound URL policy: {error}") from None

    def _client(self, options: LlmOptions) -> AsyncOpenAI:
        if options.api_key is None and options.base_url is None:  # OpenAI itself always wants one
            raise LlmConfigurationError("missing setting OPENAI_API_KEY (or the bot's llm_api_key)")
        fingerprint = hashlib.sha256((options.api_key or "").encode()).hexdigest()
        client = self._clients.get((options.base_url, fingerprint))
        if client is None:
            # Always an explicit key: with None the client would read OPENAI_API_KEY from the
            # environment by itself and send it to whatever base URL this is.
            client = AsyncOpenAI(
                api_key=options.api_key or _NO_KEY,
                base_url=options.base_url,
                timeout=self._timeout,
                max_retries=1,
            )
            self._clients[(options.base_url, fingerprint)] = client
        return client

    async def generate(self, prompt: MentionPrompt, options: LlmOptions) -> Draft:
        if options.own_base_url and options.base_url:
            await self._check_base_url(options.base_url)
        client = self._client(options)
        completion = await self._complete(client, options, build_messages(prompt))
        usage = _usage(completion)
        text, cut_off = _answer(completion, usage)
        if cut_off:
            # Stopped at the token limit: ask once more for a shorter reply.
            retry = await self._complete(client, options, build_messages(prompt, SHORTER_REPLY_CHARS))
            usage += _usage(retry)
            retry_text, retry_cut_off = _answer(retry, usage)
            if retry_text or not text:
                completion, text, cut_off = retry, retry_text, retry_cut_off
        if not text:
            if cut_off:
                limit = f"llm_max_tokens={options.max_tokens}" if options.max_tokens else "the model's limit"
                raise LlmConfigurationError(
                    f"the LLM stopped at its token limit ({limit}) before writing a reply, twice;"
                    " raise the bot's llm_max_tokens"
                )
            raise LlmReplyRejected("LLM returned an empty reply", usage)
        fitted = fit_to_post(text, truncated=cut_off)
        if not fitted:
            raise LlmReplyRejected("LLM reply cannot be shortened to fit a post", usage)
        return Draft(fitted, completion.model or options.model, usage)

    async def should_respond(self, prompt: MentionPrompt, options: LlmOptions) -> GateVerdict:
        """The gate's verdict; an empty or refused answer is IGNORE (fail closed)."""
        if options.own_base_url and options.base_url:
            await self._check_base_url(options.base_url)
        client = self._client(options)
        completion = await self._complete(client, options, build_gate_messages(prompt))
        usage = _usage(completion)
        try:
            text, _ = _answer(completion, usage)
        except LlmReplyRejected as error:
            return GateVerdict(False, f"gate: {error}", usage)
        respond, reason = parse_gate_answer(text)
        return GateVerdict(respond, reason, usage)

    async def describe(self, prompt: MentionPrompt, image_urls: list[str], options: LlmOptions) -> Draft:
        """What the images show, in the vision model's words (`LlmReplyRejected` when it says nothing)."""
        if options.own_base_url and options.base_url:
            await self._check_base_url(options.base_url)
        client = self._client(options)
        completion = await self._complete(client, options, build_vision_messages(prompt, image_urls))
        usage = _usage(completion)
        text, _ = _answer(completion, usage)
        if not text:
            raise LlmReplyRejected("the vision model returned an empty description", usage)
        return Draft(text, completion.model or options.model, usage)

    async def _complete(
        self, client: AsyncOpenAI, options: LlmOptions, messages: list[ChatCompletionMessageParam]
    ) -> ChatCompletion:
        try:
            return await client.chat.completions.create(
                model=options.model,
                messages=messages,
                temperature=options.temperature if options.temperature is not None else openai.omit,
                max_tokens=options.max_tokens if options.max_tokens is not None else openai.omit,
                extra_headers=None if options.api_key else {"Authorization": openai.omit},
            )
        except openai.APIStatusError as error:
            raise _status_error(error, options) from None
        except openai.APITimeoutError:
            raise LlmUnavailableError(
                f"LLM at {_where(options)}: no answer within {self._timeout:g}s"
            ) from None
        except openai.APIConnectionError:
            raise LlmUnavailableError(f"LLM at {_where(options)} cannot be reached") from None
        except openai.APIError as error:  # e.g. an answer that is not a completion: may pass
            raise LlmUnavailableError(f"LLM at {_where(options)}: {type(error).__name__}") from None

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()
        self._clients.clear()


def _answer(completion: ChatCompletion, usage: Usage | None = None) -> tuple[str, bool]:
    """The reply text (maybe empty) and whether it was cut off at the token limit."""
    if not completion.choices:
        raise LlmReplyRejected("LLM returned no choices", usage)
    choice = completion.choices[0]
    if choice.message.refusal or choice.finish_reason == "content_filter":
        raise LlmReplyRejected("LLM refused to answer", usage)
    return _clean(choice.message.content or ""), choice.finish_reason == "length"


def _where(options: LlmOptions) -> str:
    """The server's host for messages (a base URL may carry credentials in its user info)."""
    if not options.base_url:
        return "the default OpenAI endpoint"
    return urlsplit(options.base_url).hostname or "the configured base URL"


def _status_error(error: openai.APIStatusError, options: LlmOptions) -> Exception:
    """The task error for an HTTP error answer, with a message an operator can act on."""
    status = error.status_code
    body: Any = error.body
    code = body.get("code") if isinstance(body, dict) else None
    said = _server_message(body, options)
    where = _where(options)
    if status == 429 and code == "insufficient_quota":
        return LlmConfigurationError(f"the LLM account at {where} has no quota left (HTTP 429): {said}")
    if status in (408, 409, 429) or status >= 500:
        return LlmUnavailableError(f"LLM at {where} answered HTTP {status}; retrying later")
    if status in (401, 403):
        # The server's text may quote part of the key: not repeated here.
        return LlmConfigurationError(
            f"the LLM at {where} refused {options.key_source} (HTTP {status}): set the key of"
            f" {options.fix_hint if options.llm_config_id else 'the bot (llm_api_key) or OPENAI_API_KEY'}"
        )
    if status == 400 and code in _CONTENT_CODES:
        return LlmReplyRejected(f"LLM refused the prompt (HTTP 400 {code})")
    if status == 404:
        return LlmConfigurationError(
            f"the LLM at {where} does not know model {options.model!r} or the base URL is wrong"
            f" (HTTP 404): {said}; check {options.fix_hint} / OPENAI_MODEL"
        )
    return LlmConfigurationError(
        f"the LLM at {where} refused the request for model {options.model!r} (HTTP {status}): {said};"
        f" check {options.fix_hint}"
    )


def _server_message(body: Any, options: LlmOptions) -> str:
    message = body.get("message") if isinstance(body, dict) else None
    text = message.strip()[:300] if isinstance(message, str) and message.strip() else "no details"
    if options.api_key:
        text = text.replace(options.api_key, "***")
    return text


def _clean(text: str) -> str:
    text = text.strip()
    if len(text) >= 2 and text[0] in _QUOTES and text[-1] in _QUOTES:
        text = text[1:-1].strip()
    return text


__all__ = [
    "ContextPost",
    "Draft",
    "GateVerdict",
    "LlmConfigurationError",
    "LlmOptions",
    "LlmReplyRejected",
    "LlmUnavailableError",
    "MentionPrompt",
    "ReplyGenerator",
    "Usage",
    "build_gate_messages",
    "build_messages",
    "parse_gate_answer",
]
