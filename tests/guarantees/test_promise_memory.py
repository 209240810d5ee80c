"""Promise: memory is bounded by concurrency, not by input size.

Judged end to end, through ``Client.run`` and ``Client.stream`` and the real mock server: how far
the input is read ahead of a slow consumer, how many tasks exist at once, and how the traced
memory peak moves when the input grows tenfold. (``tests/test_memory.py`` checks the admission
loop alone at 200,000 requests; the soak in ``tests/soak/`` checks RSS on a real port.)
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Iterator
from typing import Any

import anyio
import anyio.lowlevel
import httpx2
import pytest

import corral
from corral.providers import OpenAI
from corral.testing import MockConfig, MockServer

pytestmark = pytest.mark.anyio

CONCURRENCY = 8


class Source:
    """A lazy input that counts how many requests have been read from it."""

    __slots__ = ("count", "pulled")

    def __init__(self, count: int) -> None:
        self.count = count
        self.pulled = 0

    def __iter__(self) -> Iterator[corral.ChatRequest]:
        for i in range(self.count):
            self.pulled += 1
            yield corral.ChatRequest(
                "gpt-4o-mini",
                [corral.Message("user", f"What is {i} + {i}? " + "padding " * 40)],
                max_tokens=8,
                id=f"q{i}",
            )


def client_for(server: MockServer, **kwargs: Any) -> tuple[httpx2.AsyncClient, corral.Client]:
    http = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=server))
    provider = OpenAI("http://mock/v1", api_key="sk-test")
    return http, corral.Client(provider, http_client=http, max_concurrency=CONCURRENCY, **kwargs)


@pytest.mark.virtual_time
async def test_a_slow_consumer_holds_back_the_input_to_twice_the_concurrency() -> None:
    """With a consumer slower than the server, the input is read at most 2 x concurrency ahead."""
    source = Source(400)
    server = MockServer(MockConfig(latency=(0.001, 0.01), record_hits=False))
    http, client = client_for(server)
    ahead = consumed = 0
    async with http, client, client.stream(source) as results:
        async for _ in results:
            consumed += 1
            ahead = max(ahead, source.pulled - consumed)
            await anyio.sleep(0.1)  # the consumer is ten times slower than the server
    assert consumed == 400
    # max_concurrency requests holding their slots while their results wait in a buffer of
    # max_concurrency: both bounded, so the input never runs further ahead than that.
    assert CONCURRENCY < ahead <= 2 * CONCURRENCY, ahead


@pytest.mark.virtual_time
async def test_a_batch_never_holds_more_tasks_than_its_concurrency() -> None:
    """However long the input, run() and stream() keep at most max_concurrency request tasks."""
    server = MockServer(MockConfig(latency=(0.5, 3.0), seed=2, record_hits=False))
    http, client = client_for(server)
    most = 0
    stop = anyio.Event()

    async def watch() -> None:
        nonlocal most
        while not stop.is_set():
            most = max(most, len(anyio.get_running_tasks()))
            await anyio.sleep(0.25)

    async with http, client, anyio.create_task_group() as tg:
        tg.start_soon(watch)
        await anyio.lowlevel.checkpoint()
        baseline = len(anyio.get_running_tasks())
        batch = await client.run(Source(160))
        async with client.stream(Source(160)) as results:
            streamed = [r async for r in results]
        stop.set()
    assert len(batch) == len(streamed) == 160
    # One task per request in flight, plus the stream's feeder and its task group's host.
    assert baseline + CONCURRENCY - 1 <= most <= baseline + CONCURRENCY + 2, (baseline, most)


ANSWER = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "model": "gpt-4o-mini",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "2"}, "finish_reason": "stop"}
    ],
    "usage": {"prompt_tokens": 60, "completion_tokens": 1, "total_tokens": 61},
}


async def answer(request: httpx2.Request) -> httpx2.Response:
    # A server that keeps nothing per request (the mock server emulates a prompt cache, whose
    # memory would be measured too), so that only corral's own memory grows with the input.
    await anyio.lowlevel.checkpoint()
    return httpx2.Response(200, json=ANSWER)


async def _peak_blocks(count: int) -> int:
    """Stream *count* requests through a fresh client; return the most memory blocks alive over
    the start, sampled every 150 results after a full collection (so that garbage waiting for
    the collector does not count)."""
    http = httpx2.AsyncClient(transport=httpx2.MockTransport(answer))
    client = corral.Client(
        OpenAI("http://mock/v1", api_key="sk-test"), http_client=http, max_concurrency=CONCURRENCY
    )
    gc.collect()
    start = most = sys.getallocatedblocks()
    seen = 0
    async with http, client, client.stream(Source(count)) as results:
        async for result in results:
            assert result.ok
            seen += 1
            if seen % 150 == 0:
                gc.collect()
                most = max(most, sys.getallocatedblocks())
    return most - start


async def test_allocated_memory_stays_flat_when_the_input_grows_tenfold() -> None:
    """Ten times more requests through Client.stream leave the peak of live blocks flat."""
    await _peak_blocks(200)  # warm every cache first (code objects, regexes, pools)
    small = await _peak_blocks(150)
    large = await _peak_blocks(1_500)
    # Holding each input costs about 8 blocks (the request, its messages, their strings), a
    # task or coroutine per input more; the statistics' 8-byte latencies live in one array.
    assert large - small < 3 * (1_500 - 150), (small, large)
