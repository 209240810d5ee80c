"""Promise: no task, connection, file descriptor or limiter token outlives the ``async with``.

A client is put through everything that can leave something behind, against the real mock
server on a loopback port, with every flow-control layer on: faults (drops, stalls past the
attempt timeout, truncated bodies, 5xx), a batch run to its end, a stream left early, a run
cancelled at a random moment, a streamed completion left after its first delta and direct calls
cancelled in flight. Then, inside the block, every slot, permit and reservation is back; and
after it, the process holds exactly the sockets, file descriptors and tasks it held before.
"""

from __future__ import annotations

import gc
import random
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import pytest

import corral
from corral.providers import OpenAI
from corral.testing import MockConfig, MockServer, serve

pytestmark = pytest.mark.anyio


def requests(count: int, prefix: str = "q") -> Iterator[corral.ChatRequest]:
    for i in range(count):
        yield corral.ChatRequest(
            "gpt-4o-mini",
            [corral.Message("user", f"Tell me about the pier number {i}.")],
            max_tokens=16,
            id=f"{prefix}{i}",
        )


def assert_nothing_held(client: corral.Client) -> None:
    """Fail unless every slot, permit, probe and reservation of *client* is back."""
    stats = client.statistics()
    assert stats.in_flight == 0
    assert client._limiter is not None
    assert client._limiter.borrowed_tokens == 0
    assert stats.rate_limiter is not None
    assert stats.rate_limiter.waiting == 0
    assert stats.budget is not None
    assert (stats.budget.in_flight, stats.budget.reserved_usd) == (0, 0.0)
    for breaker in stats.breakers.values():
        assert breaker.state.value == "closed", breaker


@pytest.mark.parametrize("transport", ["fast", "httpx"])
@pytest.mark.parametrize("seed", range(2))
async def test_nothing_outlives_the_client_on_a_real_port(
    transport: str,
    seed: int,
    fd_count: Callable[[], int],
    socket_count: Callable[[int], int],
    no_backoff: None,
    anyio_backend: str,
) -> None:
    """After faults, early exits and cancellations, leaving the client frees every socket,
    file descriptor, task, slot, permit and reservation it took."""
    if transport == "httpx" and anyio_backend == "trio":
        # Known limit (docs/guarantees.md): httpx2's stock client leaves the body generator of a
        # response cancelled mid-read to trio's garbage-collection hook, which warns.
        pytest.skip("httpx2's stock transport on trio: body generator finalised by the GC")
    rng = random.Random(seed)
    server = MockServer(
        MockConfig(
            latency=(0.001, 0.02),
            error_rates={500: 0.05, 503: 0.05},
            retry_after=0.0,
            drop_rate=0.04,
            stall_rate=0.04,
            stall_seconds=2.0,
            truncate_rate=0.03,
            seed=seed,
        )
    )
    options: dict[str, Any] = {
        "max_concurrency": 16,
        "request_timeout": 0.25,
        "retry": corral.RetryPolicy(attempts=3, timeout=5),
        "rate_limit": corral.RateLimit(requests_per_minute=100_000),
        "breaker": corral.CircuitBreaker(failure_threshold=10_000),
        "budget": corral.Budget(max_cost_usd=100.0),
        "transport": transport,
    }
    fds = fd_count()
    tasks = len(anyio.get_running_tasks())
    async with serve(server) as running:
        client = corral.Client(OpenAI(running.url + "/v1", api_key="sk-test"), **options)
        # A slot or permit that is never given back shows as a hang: make it a failure.
        with anyio.fail_after(30):
            await exercise(client, running.port, rng, socket_count)
        # The client's own sockets close with it, at once.
        assert socket_count(running.port) == 0
    # With the server stopped too, the process is back where it started.
    assert fd_count() == fds
    assert len(anyio.get_running_tasks()) == tasks
    gc.collect()  # an unclosed socket or generator would warn now, and warnings are errors


async def exercise(
    client: corral.Client, port: int, rng: random.Random, socket_count: Callable[[int], int]
) -> None:
    """Open *client* and put it through faults, early exits and cancellations."""
    async with client:
        batch = await client.run(requests(120, "run-"))
        assert len(batch) == 120
        assert batch.statistics.retries > 0  # the faults did happen
        assert socket_count(port) > 0  # and connections were kept open

        async with client.stream(requests(100, "early-")) as results:
            async for _ in results:
                break
        assert_nothing_held(client)

        with anyio.move_on_after(0.02 + rng.random() / 10) as scope:
            await client.run(requests(100_000, "cancel-"))
        assert scope.cancelled_caught
        assert_nothing_held(client)

        with anyio.move_on_after(5):
            while True:
                try:
                    stream = client.complete_stream(next(requests(1, "delta-")))
                    async with stream as deltas:
                        async for _ in deltas:
                            break
                    break
                except corral.RequestFailed:
                    continue  # a fault before the first delta; try another
        assert_nothing_held(client)

        async with anyio.create_task_group() as tg:
            for request in requests(30, "direct-"):
                tg.start_soon(client.complete, request)
            await anyio.sleep(0.005)
            tg.cancel_scope.cancel()
        assert_nothing_held(client)

        # Leave with connections open in the pool, so that closing them is tested too.
        await client.run(requests(40, "last-"))
        assert socket_count(port) > 0
