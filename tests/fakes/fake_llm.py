"""An OpenAI-compatible chat completions server the real `openai` client talks to.

Replies depend on markers in the mention text, so one batch can mix outcomes:
`[[empty]]` -> empty content, `[[refuse]]` -> a refusal, `[[long]]` -> far over 280 characters,
`[[down]]` -> HTTP 503; the should-respond gate answers IGNORE to `[[ignore]]`, else RESPOND. Anything else gets a short reply naming the author; a prompt that says an
earlier reply was refused as a duplicate gets a different one.

A request whose user message is a list of content parts is a vision request (`vision_calls`): it is
answered with a description naming the images' file names, or, like OpenAI, with a 400
`invalid_image_url` when an image URL contains `broken` (the model could not download it).

Tests may also queue whole answers (`queue_error`, `queue_reply`), served before the markers, and
require a key other than `API_KEY` (`accepted_keys`, empty = no key needed). Every request is
recorded with the headers and parameters the client sent (`calls`).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

API_KEY = "sk-fake-llm-key"
DUPLICATE_HINT = "refused as a duplicate"
GATE_HINT = "RESPOND or IGNORE"


def _mention(user: str) -> tuple[str, str]:
    """The mention text and its author's handle: from the JSON data the bot sends, else the last
    line and a "Mention from @name" line (older prompt shapes)."""
    try:
        data = json.loads(user)["untrusted_data"]
        return str(data["mention"]["text"]), str(data["mention"]["author"] or "friend")
    except (ValueError, KeyError, TypeError):
        author = re.search(r"Mention from @(\w+)", user)
        return user.rsplit("\n", 1)[-1], author.group(1) if author else "friend"


def _parts(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The content parts of a request's user message; empty for a plain text message."""
    messages = body.get("messages")
    content = messages[-1].get("content") if isinstance(messages, list) and messages else None
    return [part for part in content if isinstance(part, dict)] if isinstance(content, list) else []


@dataclass(frozen=True)
class Call:
    """One request as the server saw it."""

    authorization: str | None
    model: str | None
    max_tokens: int | None
    body: dict[str, Any]


@dataclass
class Canned:
    """A queued answer: an HTTP error, or a completion with this content and finish reason."""

    status: int = 200
    error: dict[str, Any] | None = None
    content: str | None = None
    finish_reason: str = "stop"
    delay: float = 0.0  # seconds before answering: longer than the client's timeout = a hang


@dataclass
class FakeLlm:
    requests: list[dict[str, Any]] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)
    accepted_keys: set[str] = field(default_factory=lambda: {API_KEY})
    canned: list[Canned] = field(default_factory=list)
    numbered: bool = False  # default replies end with a serial number, so none is a duplicate
    _ids: itertools.count[int] = field(default_factory=itertools.count)

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/v1/chat/completions", self._complete, methods=["POST"])])

    def prompts(self) -> list[str]:
        """The user message of every text request, in order."""
        return [r["messages"][-1]["content"] for r in self.requests if not _parts(r)]

    def vision_calls(self) -> list[Call]:
        return [call for call in self.calls if _parts(call.body)]

    def reply_calls(self) -> list[Call]:
        """Draft requests (not the gate, not vision)."""
        return [
            call
            for call in self.calls
            if not _parts(call.body) and GATE_HINT not in str(call.body["messages"][0]["content"])
        ]

    def queue_error(
        self, status: int, message: str, *, type_: str = "invalid_request_error", code: str | None = None
    ) -> None:
        self.canned.append(Canned(status, {"message": message, "type": type_, "param": None, "code": code}))

    def queue_reply(self, content: str | None, finish_reason: str = "stop", *, delay: float = 0.0) -> None:
        self.canned.append(Canned(content=content, finish_reason=finish_reason, delay=delay))

    async def _complete(self, request: Request) -> JSONResponse:
        authorization = request.headers.get("authorization")
        body = await request.json()
        self.calls.append(Call(authorization, body.get("model"), body.get("max_tokens"), body))
        if self.accepted_keys and authorization not in {f"Bearer {key}" for key in self.accepted_keys}:
            error = {
                "message": "Incorrect API key provided",
                "type": "invalid_request_error",
                "code": "invalid_api_key",
            }
            return JSONResponse({"error": error}, 401)
        self.requests.append(body)
        if not isinstance(body.get("messages"), list) or not body.get("model"):
            return JSONResponse({"error": {"message": "messages and model are required"}}, 400)
        if self.canned:
            canned = self.canned.pop(0)
            await asyncio.sleep(canned.delay)
            if canned.error is not None:
                return JSONResponse({"error": canned.error}, canned.status)
            return self._completion(body, canned.content, None, canned.finish_reason)
        if parts := _parts(body):
            return self._describe(body, parts)
        user = body["messages"][-1]["content"]
        mention, name = _mention(user)
        refusal = None
        if "[[down]]" in mention:
            return JSONResponse({"error": {"message": "overloaded", "type": "server_error"}}, 503)
        if GATE_HINT in body["messages"][0]["content"]:  # the should-respond gate
            verdict = "IGNORE: looks like bait" if "[[ignore]]" in mention else "RESPOND: a fair question"
            return self._completion(body, verdict, None, "stop")
        if "[[empty]]" in mention:
            content: str | None = "   "
        elif "[[refuse]]" in mention:
            content, refusal = None, "I can't help with that."
        elif "[[long]]" in mention:
            content = " ".join(["This reply goes on and on"] * 30)
        elif DUPLICATE_HINT in body["messages"][0]["content"]:
            content = f"Good to hear from you again, @{name}! (#{next(self._ids)})"
        else:
            content = f"Thanks for the mention, @{name}!"
            if self.numbered:
                content += f" (#{next(self._ids)})"
        return self._completion(body, content, refusal, "stop")

    def _describe(self, body: dict[str, Any], parts: list[dict[str, Any]]) -> JSONResponse:
        urls = [str(part["image_url"]["url"]) for part in parts if part.get("type") == "image_url"]
        if not urls:
            return JSONResponse({"error": {"message": "no image in the request", "code": None}}, 400)
        for url in urls:
            if "broken" in url:
                error = {
                    "message": f"Failed to download image from {url}.",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": "invalid_image_url",
                }
                return JSONResponse({"error": error}, 400)
        names = ", ".join(url.rsplit("/", 1)[-1] for url in urls)
        return self._completion(body, f"A photo of a cat on a sofa ({names}).", None, "stop")

    def _completion(
        self, body: dict[str, Any], content: str | None, refusal: str | None, finish_reason: str
    ) -> JSONResponse:
        # Roughly 4 characters a token, like real tokenizers on English text.
        prompt_tokens = max(1, sum(len(str(m.get("content") or "")) for m in body["messages"]) // 4)
        completion_tokens = max(1, len(content or refusal or "") // 4)
        return JSONResponse(
            {
                "id": f"chatcmpl-{next(self._ids)}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content, "refusal": refusal},
                        "finish_reason": finish_reason,
                        "logprobs": None,
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
            }
        )
