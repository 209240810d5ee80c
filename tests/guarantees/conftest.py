"""Shared parts of the promise tests (``test_promise_*.py``).

The promises of ``docs/guarantees.md`` are judged where a user would see them break: at the
server (a `Probe` wrapped around the real mock server notes every request's arrival, status,
tokens and how many were in flight at once) and in the process (open file descriptors, sockets,
tasks). The helpers come as fixtures so that the test modules stay independent of each other.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, MutableMapping
from typing import Any, NamedTuple

import anyio
import pytest
import stamina

from ..procfs import open_fds, sockets_to

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]


class Hit(NamedTuple):
    """One HTTP request as the server saw it.

    Attributes:
        at: When it arrived (``anyio.current_time()``, so virtual in virtual-time tests).
        done: When the server finished with it.
        status: The status answered; 0 when no response started.
        request_id: The client's ``x-client-request-id``.
        tokens: ``usage.total_tokens`` of a 200 JSON answer, else 0.
        model: ``model`` of a 200 JSON answer, else "".
        usage: The ``usage`` object of a 200 JSON answer, else None.
        body_bytes: How many body bytes the server sent.
    """

    at: float
    done: float
    status: int
    request_id: str | None
    tokens: int
    model: str
    usage: dict[str, Any] | None
    body_bytes: int


class Probe:
    """Wrap an ASGI app: note every HTTP request, and the most ever in flight at once.

    Args:
        app: The app to wrap, usually a `corral.testing.MockServer`.
    """

    __slots__ = ("app", "hits", "in_flight", "peak")

    def __init__(self, app: Any) -> None:
        self.app = app
        self.hits: list[Hit] = []
        self.in_flight = 0
        self.peak = 0

    def __repr__(self) -> str:
        return f"<Probe hits={len(self.hits)} peak={self.peak}>"

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        at = anyio.current_time()
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        status = 0
        body: list[bytes] = []
        rid = dict(scope["headers"]).get(b"x-client-request-id", b"").decode() or None

        async def noting_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                body.append(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, noting_send)
        finally:
            self.in_flight -= 1
            usage: dict[str, Any] | None = None
            model = ""
            data = b"".join(body)
            if status == 200:
                try:
                    answer = json.loads(data)
                    usage = answer.get("usage")
                    model = answer.get("model", "")
                except (ValueError, AttributeError):
                    # A truncated body: the server still answered 200 and billed it.
                    usage = None
            tokens = int(usage.get("total_tokens", 0)) if usage else 0
            done = anyio.current_time()
            self.hits.append(Hit(at, done, status, rid, tokens, model, usage, len(data)))

    def arrivals(self) -> list[float]:
        """Return the arrival time of every request, in order."""
        return sorted(hit.at for hit in self.hits)

    def count(self, request_id: str) -> int:
        """Return how many requests carried *request_id*."""
        return sum(1 for hit in self.hits if hit.request_id == request_id)


def most_in_any_window(times: list[float], width: float, weights: list[int] | None = None) -> int:
    """Return the largest total weight of `times` inside any half-open window of `width`.

    Args:
        times: Event times.
        width: The window's length in seconds.
        weights: Each event's weight; 1 each when None.
    """
    pairs = sorted(zip(times, weights or [1] * len(times), strict=True))
    most = total = first = 0
    for t, w in pairs:
        total += w
        while pairs[first][0] <= t - width:
            total -= pairs[first][1]
            first += 1
        most = max(most, total)
    return most


@pytest.fixture
def probe() -> Callable[[Any], Probe]:
    """Return the `Probe` class: wrap an ASGI app to watch what reaches the server."""
    return Probe


@pytest.fixture
def window_max() -> Callable[..., int]:
    """Return `most_in_any_window`."""
    return most_in_any_window


@pytest.fixture
def fd_count() -> Callable[[], int]:
    """Return a function counting this process's open file descriptors."""
    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("needs Linux /proc")
    return open_fds


@pytest.fixture
def socket_count() -> Callable[[int], int]:
    """Return a function counting this process's client sockets to a port."""
    if not os.path.exists("/proc/net/tcp"):
        pytest.skip("needs Linux /proc")
    return sockets_to


@pytest.fixture
def no_backoff() -> Iterator[None]:
    """Remove stamina's backoff sleeps but keep each policy's attempt count."""
    with stamina.set_testing(True, attempts=100, cap=True):
        yield
