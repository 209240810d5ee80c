"""A request's bookkeeping, the same through every entry point: counted, reserved, settled.

``complete``, ``complete_stream``, ``run`` and ``stream`` share one path (``RequestPath``):
these tests hold each of them to the same promises when a request is cancelled in flight.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import anyio
import httpx2
import pytest

import corral
from corral.providers import OpenAI

pytestmark = [pytest.mark.anyio, pytest.mark.virtual_time]

_PRICING = corral.Pricing.default().with_overrides(
    {"priced-model": corral.ModelPrice(input=1.0, output=2.0)}
)
_CHUNK = {"id": "x", "model": "m", "choices": [{"index": 0, "delta": {"content": "hi"}}]}


async def _hang_then_answer(request: httpx2.Request) -> httpx2.Response:
    """Answer a plain request never; a streamed one with a first delta, then nothing."""
    if request.headers.get("accept") != "text/event-stream":
        await anyio.sleep_forever()
    first = f"data: {json.dumps(_CHUNK)}\n\n".encode()

    async def body() -> AsyncIterator[bytes]:
        yield first
        await anyio.sleep_forever()

    return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=body())


@asynccontextmanager
async def _client() -> AsyncIterator[corral.Client]:
    http = httpx2.AsyncClient(transport=httpx2.MockTransport(_hang_then_answer))
    async with (
        http,
        corral.Client(
            OpenAI("http://api.test/v1", api_key="k"),
            http_client=http,
            budget=corral.Budget(max_cost_usd=100.0),
            pricing=_PRICING,
            retry=corral.RetryPolicy(timeout=None),
            request_timeout=1000.0,
        ) as client,
    ):
        yield client


def _request() -> corral.ChatRequest:
    return corral.ChatRequest(
        "priced-model", [{"role": "user", "content": "hello"}], max_tokens=1_000_000
    )


async def _complete(client: corral.Client) -> None:
    await client.complete(_request())


async def _complete_stream(client: corral.Client) -> None:
    async with client.complete_stream(_request()) as deltas:
        async for _ in deltas:
            pass


async def _run(client: corral.Client) -> None:
    await client.run([_request()])


async def _stream(client: corral.Client) -> None:
    async with client.stream([_request()], stream=True) as results:
        async for _ in results:
            pass


@pytest.mark.parametrize(
    "send",
    [_complete, _complete_stream, _run, _stream],
    ids=["complete", "complete_stream", "run", "stream"],
)
async def test_a_request_cancelled_in_flight_keeps_its_worst_case_as_spent(
    send: Callable[[corral.Client], Awaitable[None]],
) -> None:
    """Cancelled mid-request, it may have been billed: its worst case is spent, none held."""
    async with _client() as client:
        with anyio.move_on_after(5):
            await send(client)
        stats = client.statistics()
    assert stats.budget is not None
    # The worst case of a million output tokens at $2 per million.
    assert stats.budget.spent_usd >= 2.0
    assert stats.budget.reserved_usd == 0
    assert stats.budget.in_flight == 0
    assert (stats.started, stats.in_flight, stats.succeeded, stats.failed) == (1, 0, 0, 0)
