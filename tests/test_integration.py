"""The Client against the mock server on a real loopback port, on both backends."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator

import anyio
import pytest
import stamina

import corral
from corral.providers import OpenAI
from corral.testing import MockConfig, MockServer, serve

from .procfs import sockets_to

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True)
def _no_backoff_sleeps() -> Iterator[None]:
    """Remove stamina's backoff sleeps but keep each policy's attempt count."""
    with stamina.set_testing(True, attempts=100, cap=True):
        yield


def req(i: int) -> corral.ChatRequest:
    return corral.ChatRequest(
        "gpt-4o-mini", [corral.Message("user", f"What is {i} + {i}?")], max_tokens=16, id=f"q{i}"
    )


async def test_answers_and_usage_from_the_mock() -> None:
    """A real round trip gives the mock's deterministic answer and honest usage."""
    server = MockServer()
    async with (
        serve(server) as running,
        corral.Client(OpenAI(running.url + "/v1", api_key="sk-x")) as client,
    ):
        result = await client.complete(req(4))
    assert result.content == "8"
    assert result.usage.input_tokens > 0
    assert result.usage.output_tokens > 0
    assert server.hits_for("q4") == 1


async def test_server_counts_one_hit_per_attempt_and_peak_concurrency() -> None:
    """Under injected faults, the server's hits per id equal each result's attempts, and the
    server never sees more than max_concurrency requests at once."""
    server = MockServer(
        MockConfig(
            error_rates={429: 0.1, 500: 0.1, 503: 0.05},
            retry_after=0.0,
            seed=7,
            latency=(0.01, 0.03),
        )
    )
    async with (
        serve(server) as running,
        corral.Client(
            OpenAI(running.url + "/v1", api_key="sk-x"),
            max_concurrency=12,
            retry=corral.RetryPolicy(attempts=8),
        ) as client,
    ):
        batch = await client.run(req(i) for i in range(300))
    stats = server.statistics()
    assert batch.statistics.succeeded == 300
    assert batch.statistics.retries > 0
    for result in batch:
        assert server.hits_for(result.id) == result.attempts
    assert stats.total_hits == batch.statistics.attempts
    assert stats.peak_in_flight == 12


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="needs Linux /proc")
async def test_cancellation_leaves_no_request_or_connection(seed: int) -> None:
    """Cancelling a stream mid-flight leaves nothing in flight and no client connection open."""
    rng = random.Random(seed)
    server = MockServer(MockConfig(latency=(0.001, 0.02), seed=seed))
    async with serve(server) as running:
        async with corral.Client(
            OpenAI(running.url + "/v1", api_key="sk-x"), max_concurrency=16
        ) as client:
            with anyio.move_on_after(0.02 + rng.random() / 10):
                async with client.stream(req(i) for i in range(100_000)) as results:
                    async for _ in results:
                        pass
            assert client.statistics().in_flight == 0
            assert sockets_to(running.port) <= 16
        with anyio.fail_after(5):
            await server.wait_idle()
        # The client's connections are closed with it, at once.
        assert sockets_to(running.port) == 0
    assert server.statistics().in_flight == 0
