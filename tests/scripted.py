"""A scripted in-process chat-completions server for client tests.

It answers through ``httpx2.MockTransport`` (no sockets), counts hits per request id and the peak
number of requests in flight, and replays a per-id script of outcomes so tests decide exactly
which attempt fails and how.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import anyio
import httpx2

Outcome = int | str | Callable[[httpx2.Request], Any]
"""An HTTP status, ``"reset"`` (connection error), ``"stall"`` (never answer), or a callable."""


def completion_body(model: str, content: str, prompt_tokens: int = 5) -> dict[str, Any]:
    """Return an OpenAI chat completion body."""
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": 2, "total_tokens": 7},
    }


class ScriptedServer:
    """Answer chat completions, following a script of outcomes per request id."""

    def __init__(
        self,
        script: dict[str, Sequence[Outcome]] | None = None,
        *,
        default: Callable[[str, int], Outcome] | None = None,
        latency: float | Callable[[], float] = 0.0,
        retry_after: str | None = None,
    ) -> None:
        self.script = {k: list(v) for k, v in (script or {}).items()}
        self.default = default
        self.latency = latency
        self.retry_after = retry_after
        self.hits: Counter[str] = Counter()
        self.in_flight = 0
        self.peak_in_flight = 0
        self.seen_headers: list[httpx2.Headers] = []

    @property
    def total_hits(self) -> int:
        """Every request received."""
        return sum(self.hits.values())

    def client(self) -> httpx2.AsyncClient:
        """Return an httpx2 client wired to this server."""
        return httpx2.AsyncClient(transport=httpx2.MockTransport(self.handle))

    def _outcome(self, rid: str, n: int) -> Outcome:
        steps = self.script.get(rid)
        if steps is not None and n < len(steps):
            return steps[n]
        if self.default is not None:
            return self.default(rid, n)
        return 200

    async def handle(self, request: httpx2.Request) -> httpx2.Response:
        rid = request.headers.get("x-client-request-id", "?")
        n = self.hits[rid]
        self.hits[rid] += 1
        self.seen_headers.append(request.headers)
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            latency = self.latency() if callable(self.latency) else self.latency
            if latency:
                await anyio.sleep(latency)
            outcome = self._outcome(rid, n)
            if callable(outcome):
                return outcome(request)  # type: ignore[no-any-return]
            if outcome == "reset":
                raise httpx2.ReadError("connection reset by peer", request=request)
            if outcome == "stall":
                await anyio.sleep_forever()
            assert isinstance(outcome, int)
            if outcome == 200:
                body = json.loads(request.content)
                text = body["messages"][-1]["content"]
                return httpx2.Response(200, json=completion_body(body["model"], f"echo {text}"))
            headers = {"retry-after": self.retry_after} if self.retry_after else {}
            return httpx2.Response(
                outcome, headers=headers, json={"error": {"message": f"scripted {outcome}"}}
            )
        finally:
            self.in_flight -= 1
