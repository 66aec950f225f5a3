"""An OpenAI-compatible chat completions server the real `openai` client talks to.

Replies depend on markers in the mention text, so one batch can mix outcomes:
`[[empty]]` -> empty content, `[[refuse]]` -> a refusal, `[[long]]` -> far over 280 characters,
`[[down]]` -> HTTP 503. Anything else gets a short reply naming the author.
"""

from __future__ import annotations

import itertools
import re
import time
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

API_KEY = "sk-fake-llm-key"


@dataclass
class FakeLlm:
    requests: list[dict[str, Any]] = field(default_factory=list)
    _ids: itertools.count[int] = field(default_factory=itertools.count)

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/v1/chat/completions", self._complete, methods=["POST"])])

    def prompts(self) -> list[str]:
        """The user message of every request, in order."""
        return [r["messages"][-1]["content"] for r in self.requests]

    async def _complete(self, request: Request) -> JSONResponse:
        if request.headers.get("authorization") != f"Bearer {API_KEY}":
            return JSONResponse({"error": {"message": "bad key", "type": "invalid_request_error"}}, 401)
        body = await request.json()
        self.requests.append(body)
        if not isinstance(body.get("messages"), list) or not body.get("model"):
            return JSONResponse({"error": {"message": "messages and model are required"}}, 400)
        user = body["messages"][-1]["content"]
        mention = user.rsplit("\n", 1)[-1]
        refusal = None
        if "[[down]]" in mention:
            return JSONResponse({"error": {"message": "overloaded", "type": "server_error"}}, 503)
        if "[[empty]]" in mention:
            content = "   "
        elif "[[refuse]]" in mention:
            content, refusal = None, "I can't help with that."
        elif "[[long]]" in mention:
            content = " ".join(["This reply goes on and on"] * 30)
        else:
            author = re.search(r"Mention from @(\w+)", user)
            content = f"Thanks for the mention, @{author.group(1) if author else 'friend'}!"
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
                        "finish_reason": "stop",
                        "logprobs": None,
                    }
                ],
                "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20},
            }
        )
