"""Adaptive concurrency end to end: ``max_concurrency="auto"`` finds a server's capacity."""

from __future__ import annotations

import json
from typing import Any

import anyio
import pytest

from corral.testing import MockServer

from .flowkit import HitClock, Message, Scope, chats, open_client

pytestmark = [pytest.mark.anyio, pytest.mark.virtual_time]


class CapacityGate:
    """Shed load beyond `capacity` concurrent requests with a 529, as an overloaded API does.

    Requests within the capacity go on to `app` (the mock server), which answers them.

    Args:
        app: The ASGI app that serves the admitted requests.
        capacity: The most requests served at once.
    """

    __slots__ = ("app", "capacity", "in_flight", "shed")

    def __init__(self, app: Any, capacity: int) -> None:
        self.app = app
        self.capacity = capacity
        self.in_flight = 0
        self.shed = 0

    def __repr__(self) -> str:
        return f"<CapacityGate capacity={self.capacity} in_flight={self.in_flight}>"

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or self.in_flight < self.capacity:
            self.in_flight += 1
            try:
                await self.app(scope, receive, send)
            finally:
                self.in_flight -= 1
            return
        self.shed += 1
        body = json.dumps(
            {"error": {"message": "Overloaded.", "type": "overloaded_error", "code": None}}
        ).encode()
        start: Message = {
            "type": "http.response.start",
            "status": 529,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", b"%d" % len(body)),
            ],
        }
        await send(start)
        await send({"type": "http.response.body", "body": body})


async def test_auto_concurrency_converges_near_the_server_capacity() -> None:
    """From its start of 8, the limit climbs to the capacity, then saws just below it."""
    capacity = 16
    server = MockServer(latency=(0.5, 1.5))
    gate = CapacityGate(server, capacity)
    clock = HitClock(gate)
    limits: list[int] = []
    async with open_client(clock, max_concurrency="auto") as client:

        async def watch() -> None:
            while True:
                limits.append(client.statistics().max_concurrency)
                await anyio.sleep(1.0)

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch)
            batch = await client.run(chats(500))
            tg.cancel_scope.cancel()
        adaptive = client.statistics().adaptive

    assert adaptive is not None
    assert limits[0] == 8
    # It found the ceiling (the server shed load and the limit was cut) and stayed near it.
    assert adaptive.decreases >= 2
    assert 0.5 * capacity <= adaptive.limit <= 1.2 * capacity
    settled = limits[len(limits) // 2 :]
    assert 0.5 * capacity <= sum(settled) / len(settled) <= 1.2 * capacity
    assert max(limits) <= 1.2 * capacity
    # Most requests succeed on their first attempt; the few shed ones succeed when retried.
    assert batch.statistics.succeeded == 500
    assert gate.shed <= 0.05 * len(clock.hits)
    assert server.statistics().peak_in_flight <= capacity
