"""Shared parts of the flow-control end-to-end tests: a timed hit log and a client factory.

Every test here runs a real `corral.Client` against the real `corral.testing.MockServer`, in
process (``httpx2.ASGITransport``) and in virtual time, so minutes of pacing cost no waiting.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, MutableMapping
from contextlib import asynccontextmanager
from typing import Any, NamedTuple

import anyio
import httpx2

import corral
from corral.providers import OpenAI

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]

MINUTE = 60.0

_TOPICS = ("harbor", "boats", "lighthouse", "tide", "gulls", "nets", "storm", "pier")


class TimedHit(NamedTuple):
    """One request as the server saw it: when it arrived, its status and its request id."""

    at: float
    status: int
    request_id: str | None


class HitClock:
    """Wrap an ASGI app and note the arrival time and status of every HTTP request it gets.

    The mock server's own hit log has no times; tests of pacing need them. In process, the mock
    refuses a request in the same instant it is sent, so a client could learn from the first
    429 before its other workers send anything; `delay` puts a network between them, so that a
    burst is in flight before the first answer comes back, as on a real connection.

    Args:
        app: The ASGI app to wrap, usually a `corral.testing.MockServer`.
        delay: Seconds a request travels before the app sees it.
    """

    __slots__ = ("app", "delay", "hits", "origin")

    def __init__(self, app: Any, *, delay: float = 0.0) -> None:
        self.app = app
        self.delay = delay
        self.hits: list[TimedHit] = []
        self.origin: float | None = None

    def __repr__(self) -> str:
        return f"<HitClock {self.app!r} hits={len(self.hits)}>"

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.delay:
            await anyio.sleep(self.delay)
        now = anyio.current_time()
        if self.origin is None:
            self.origin = now
        status = 0
        request_id = dict(scope["headers"]).get(b"x-client-request-id", b"").decode() or None

        async def noting_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, noting_send)
        finally:
            self.hits.append(TimedHit(now, status, request_id))

    def window(self, start: float, end: float, status: int | None = None) -> list[TimedHit]:
        """Return the requests that arrived in ``[start, end)`` seconds after the first one.

        Args:
            start: Seconds after the first request, inclusive.
            end: Seconds after the first request, exclusive.
            status: Only requests answered with this status.
        """
        origin = self.origin if self.origin is not None else 0.0
        return [
            hit
            for hit in self.hits
            if start <= hit.at - origin < end and (status is None or hit.status == status)
        ]

    def between(self, start: float, end: float, status: int | None = None) -> int:
        """Count the requests that arrived in ``[start, end)`` seconds after the first one.

        Args:
            start: Seconds after the first request, inclusive.
            end: Seconds after the first request, exclusive.
            status: Count only requests answered with this status.
        """
        return len(self.window(start, end, status))


def most_in_any_window(times: list[float], seconds: float = MINUTE) -> int:
    """Return the most of `times` that fall within any half-open window of `seconds`.

    Args:
        times: Arrival times.
        seconds: The window's length.
    """
    ordered = sorted(times)
    most = first = 0
    for last, t in enumerate(ordered):
        while ordered[first] <= t - seconds:
            first += 1
        most = max(most, last - first + 1)
    return most


@asynccontextmanager
async def open_client(app: Any, **kwargs: Any) -> AsyncIterator[corral.Client]:
    """Open a `corral.Client` for the OpenAI API served in process by `app`.

    Args:
        app: The ASGI app.
        kwargs: `corral.Client` options.
    """
    http = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app))
    provider = OpenAI("http://mock/v1", api_key="sk-test")
    async with http, corral.Client(provider, http_client=http, **kwargs) as client:
        yield client


def chat(
    i: int, text: str | None = None, *, model: str = "gpt-4o-mini", **kwargs: Any
) -> corral.ChatRequest:
    """Build request number `i`, id ``q{i}``: an arithmetic question unless `text` is given.

    Args:
        i: Its number.
        text: The prompt; ``What is i + 2i?`` (a one-token answer) when None.
        model: The model name.
        kwargs: More `corral.ChatRequest` fields; ``max_tokens`` defaults to 16.
    """
    kwargs.setdefault("max_tokens", 16)
    return corral.ChatRequest(
        model,
        [{"role": "user", "content": text or f"What is {i} + {2 * i}?"}],
        id=f"q{i}",
        **kwargs,
    )


def story(i: int, **kwargs: Any) -> corral.ChatRequest:
    """Build request number `i` with a prose prompt, answered with 8 to 32 words.

    Args:
        i: Its number.
        kwargs: More `chat` options; ``max_tokens`` defaults to 64.
    """
    kwargs.setdefault("max_tokens", 64)
    return chat(i, f"Tell me about the {_TOPICS[i % len(_TOPICS)]} number {i}.", **kwargs)


def chats(count: int, **kwargs: Any) -> Iterator[corral.ChatRequest]:
    """Build `count` arithmetic requests with `chat`, lazily."""
    return (chat(i, **kwargs) for i in range(count))


def stories(count: int, **kwargs: Any) -> Iterator[corral.ChatRequest]:
    """Build `count` prose requests with `story`, lazily."""
    return (story(i, **kwargs) for i in range(count))
