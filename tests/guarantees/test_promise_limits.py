"""Promise: limits are never exceeded: concurrency, requests and tokens per minute, budget.

Each test is property-style: a seed draws the limits, the load and a mix of faults (429 with
Retry-After, 500, 503, dropped connections, truncated bodies, stalls past the attempt timeout),
and the limit is checked where it matters, at the server, by a `Probe` that notes every
request's arrival time, status and usage and how many requests were in flight at once.
Concurrency is judged on a real loopback port; rates and money in virtual time, where minutes of
pacing cost nothing.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from typing import Any

import httpx2
import pytest

import corral
from corral.providers import OpenAI
from corral.testing import MockConfig, MockServer, serve

pytestmark = pytest.mark.anyio

MINUTE = 60.0
MODEL = "gpt-4o-mini"


def requests(count: int, rng: random.Random, max_tokens: int = 48) -> Iterator[corral.ChatRequest]:
    """Build *count* prose requests of varied length, lazily."""
    for i in range(count):
        words = " ".join(
            ["harbor", "tide", "gulls", "nets"][j % 4] for j in range(rng.randint(1, 30))
        )
        yield corral.ChatRequest(
            MODEL,
            [corral.Message("user", f"Tell me about {words} number {i}.")],
            max_tokens=max_tokens,
            id=f"q{i}",
        )


def faults(rng: random.Random, *, with_429: bool = True) -> dict[str, Any]:
    """Draw a mix of faults: each kind at 0 to 6% of the attempts."""
    rates = {500: rng.uniform(0, 0.06), 503: rng.uniform(0, 0.06)}
    if with_429:
        rates[429] = rng.uniform(0, 0.06)
    return {
        "error_rates": rates,
        "retry_after": rng.choice([0.0, 0.5, 2.0]),
        "drop_rate": rng.uniform(0, 0.05),
        "truncate_rate": rng.uniform(0, 0.04),
        "stall_rate": rng.uniform(0, 0.04),
        "stall_seconds": 600.0,
        "seed": rng.randrange(1 << 30),
    }


def in_process(app: Any, **kwargs: Any) -> tuple[httpx2.AsyncClient, corral.Client]:
    http = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app))
    provider = OpenAI("http://mock/v1", api_key="sk-test")
    return http, corral.Client(provider, http_client=http, **kwargs)


@pytest.mark.parametrize("seed", [1, 2])
async def test_a_real_server_never_sees_more_than_max_concurrency(
    seed: int, probe: Callable[[Any], Any], no_backoff: None
) -> None:
    """Under faults, batches, streams and streamed responses keep the server's in-flight count
    at or below max_concurrency, and reach it."""
    rng = random.Random(seed)
    limit = rng.choice([3, 8, 17])
    knobs = faults(rng)
    knobs["stall_seconds"] = 2.0  # past the 0.3 s attempt timeout, short enough to end
    server = probe(MockServer(MockConfig(latency=(0.005, 0.03), **knobs)))
    async with serve(server) as running:
        client = corral.Client(
            OpenAI(running.url + "/v1", api_key="sk-test"),
            max_concurrency=limit,
            request_timeout=0.3,
            retry=corral.RetryPolicy(attempts=4, timeout=10),
        )
        async with client:
            batch = await client.run(requests(8 * limit, rng))
            async with client.stream(requests(8 * limit, rng), stream=True) as results:
                streamed = [r async for r in results]
    assert len(batch) == len(streamed) == 8 * limit
    assert server.peak <= limit, (server.peak, limit)
    assert server.peak == limit  # the load did fill the limit, so the bound was tested


@pytest.mark.virtual_time
@pytest.mark.parametrize("seed", range(4))
async def test_no_minute_holds_more_requests_than_the_rpm(
    seed: int, probe: Callable[[Any], Any], window_max: Callable[..., int], no_backoff: None
) -> None:
    """Retries included, no sliding 60-second window holds more attempts than the RPM."""
    rng = random.Random(100 + seed)
    rpm = rng.choice([30, 60, 150])
    server = probe(MockServer(MockConfig(latency=(0.1, 3.0), **faults(rng))))
    http, client = in_process(
        server,
        max_concurrency=rng.choice([4, 16, 64]),
        request_timeout=10.0,
        rate_limit=corral.RateLimit(requests_per_minute=rpm),
        retry=corral.RetryPolicy(attempts=4, timeout=None),
    )
    async with http, client:
        batch = await client.run(requests(int(rpm * 2.5), rng))
    assert len(batch) == int(rpm * 2.5)
    assert len(server.hits) > len(batch)  # retries happened, and counted
    assert window_max(server.arrivals(), MINUTE) <= rpm


@pytest.mark.virtual_time
@pytest.mark.parametrize("seed", range(3))
async def test_configured_at_the_server_tpm_the_server_never_refuses_for_tokens(
    seed: int, probe: Callable[[Any], Any], no_backoff: None
) -> None:
    """Paced at the server's own token limit under faults, no request is refused for tokens."""
    rng = random.Random(200 + seed)
    tpm = rng.choice([2_000, 5_000])
    server = MockServer(
        MockConfig(latency=(0.2, 2.0), tokens_per_minute=tpm, **faults(rng, with_429=False))
    )
    watched = probe(server)
    http, client = in_process(
        watched,
        max_concurrency=32,
        request_timeout=10.0,
        rate_limit=corral.RateLimit(tokens_per_minute=tpm),
        retry=corral.RetryPolicy(attempts=4, timeout=None),
    )
    async with http, client:
        batch = await client.run(requests(150, rng))
    assert len(batch) == 150
    refused = [hit for hit in watched.hits if hit.status == 429]
    assert refused == []
    assert batch.statistics.usage.total_tokens > tpm  # it ran for more than a minute at the limit


def billed(hit: Any, worst: dict[str, float]) -> float:
    """Return what the server billed for one answer: its usage, or, when the body it answered
    with 200 was cut short (the tokens were produced all the same), the request's worst case."""
    if hit.status != 200 or hit.body_bytes == 0:
        # An error status, or a connection dropped before the body: no answer was delivered.
        return 0.0
    if hit.usage is None:
        return worst[hit.request_id]
    usage = corral.Usage(hit.usage["prompt_tokens"], hit.usage["completion_tokens"])
    cost = corral.Pricing.default().cost(MODEL, usage)
    assert cost is not None
    return cost


@pytest.mark.virtual_time
@pytest.mark.parametrize("seed", range(4))
async def test_the_server_never_bills_more_than_the_budget(
    seed: int, probe: Callable[[Any], Any], no_backoff: None
) -> None:
    """Under faults, what the server answered (and so billed) stays within max_cost_usd."""
    rng = random.Random(300 + seed)
    limit = rng.choice([0.0005, 0.001, 0.002])
    knobs = faults(rng)
    knobs["truncate_rate"] = rng.uniform(0.02, 0.1)
    server = probe(MockServer(MockConfig(latency=(0.1, 3.0), **knobs)))
    batch_input = list(requests(200, rng))
    # The worst case the budget reserves for each request: its estimated prompt, all its output.
    count = corral.RateLimit().count_tokens
    worst = {
        r.id: corral.Pricing.default().worst_case_cost(MODEL, count(r.prompt_text), r.max_tokens)
        or 0.0
        for r in batch_input
    }
    http, client = in_process(
        server,
        max_concurrency=rng.choice([4, 16, 64]),
        request_timeout=10.0,
        budget=corral.Budget(max_cost_usd=limit),
        retry=corral.RetryPolicy(attempts=4, timeout=None),
    )
    async with http, client:
        batch = await client.run(batch_input)
        spend = client.statistics().budget
    assert spend is not None
    assert spend.exhausted  # the budget did bind
    assert spend.spent_usd <= limit
    assert sum(c.cost_usd or 0.0 for c in batch.completions) <= limit
    assert sum(billed(hit, worst) for hit in server.hits) <= limit
