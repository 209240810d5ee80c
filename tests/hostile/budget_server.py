"""A chat server that bills every request the most a byte-level tokenizer allows.

It speaks OpenAI's ``/v1/chat/completions``. Honest mode reports, as input, one token per
UTF-8 byte of every message's text plus OpenAI's documented template tokens (3 per message, 3
for the reply), and ``max_tokens`` as output: the largest bill a real provider could send.
Hostile knobs cut the first attempt of each request after a 2xx head, or report a usage no
provider could bill.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

__all__ = ["BudgetServer"]


class BudgetServer:
    """An ASGI app that bills each request its worst case, and can misbehave on purpose.

    Args:
        cut_first: Send the first attempt of each request a 200 head, then drop the
            connection before the body ends.
        usage: A usage object to report instead of the honest one (absurd numbers welcome).
    """

    __slots__ = ("attempts", "cut_first", "usage")

    def __init__(self, *, cut_first: bool = False, usage: dict[str, Any] | None = None) -> None:
        self.cut_first = cut_first
        self.usage = usage
        self.attempts: Counter[bytes] = Counter()

    def __repr__(self) -> str:
        return f"<BudgetServer cut_first={self.cut_first} attempts={sum(self.attempts.values())}>"

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                event = (await receive())["type"]
                await send({"type": event + ".complete"})
                if event == "lifespan.shutdown":
                    return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.attempts[body] += 1
        request = json.loads(body)
        if self.cut_first and self.attempts[body] == 1:
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", b"500"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": b'{"id": "cut', "more_body": True})
            raise ConnectionResetError("the budget server drops this answer on purpose")
        messages = request["messages"]
        prompt = sum(len(str(m.get("content") or "").encode()) + 3 for m in messages) + 3
        output = int(request.get("max_tokens") or 1)
        usage = self.usage or {
            "prompt_tokens": prompt,
            "completion_tokens": output,
            "total_tokens": prompt + output,
        }
        answer = {
            "id": "chatcmpl-budget",
            "object": "chat.completion",
            "model": request["model"],
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "ok"},
                    "finish_reason": "length",
                }
            ],
            "usage": usage,
        }
        payload = json.dumps(answer).encode()  # NaN stays NaN: a hostile server may send it
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})
