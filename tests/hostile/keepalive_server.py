"""A server that opens a stream, sends one text delta, then only keep-alive comments, forever.

SSE comments (``: ping``) keep a connection busy, so no socket read ever times out, but they
are not events: a client that bounds only its reads waits for ever. Served by
:func:`corral.testing.serve`; the comments come every ``interval`` seconds on anyio's clock,
so virtual time drives it.
"""

from __future__ import annotations

import json
from typing import Final

import anyio

from .secrets_server import Receive, Scope, Send, lifespan

_DELTA: Final = {
    "id": "c",
    "object": "chat.completion.chunk",
    "model": "gpt-4o-mini",
    "choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": None}],
}


class KeepAliveServer:
    """An ASGI app streaming one OpenAI delta, then ``: ping`` every *interval* seconds.

    Args:
        interval: Seconds between two comments.
    """

    __slots__ = ("comments", "interval")

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self.comments = 0

    def __repr__(self) -> str:
        return f"<KeepAliveServer every {self.interval:g}s comments={self.comments}>"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        while (await receive()).get("more_body"):
            pass
        headers = [(b"content-type", b"text/event-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        delta = f"data: {json.dumps(_DELTA)}\n\n".encode()
        await send({"type": "http.response.body", "body": delta, "more_body": True})
        while True:
            await anyio.sleep(self.interval)
            self.comments += 1
            await send({"type": "http.response.body", "body": b": ping\n\n", "more_body": True})
