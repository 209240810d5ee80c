"""Promise: one result per input, never dropped or duplicated.

Judged under everything that can end a request early: random faults from the real mock server
(429, 500, 503, 400, dropped connections, truncated bodies, stalls past the attempt timeout),
a budget that runs out mid-batch, a circuit that opens, and cancellation, on ``run()`` and
``stream()``, streamed and not. Virtual time makes the stalls and backoffs free.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import httpx2
import pytest

import corral
from corral.providers import OpenAI
from corral.testing import MockConfig, MockServer

pytestmark = [pytest.mark.anyio, pytest.mark.virtual_time]

MODEL = "gpt-4o-mini"  # priced by the bundled table, so a cost budget can admit it


def requests(count: int, prefix: str = "q") -> Iterator[corral.ChatRequest]:
    """Build *count* requests lazily, ids ``{prefix}{i}``."""
    for i in range(count):
        yield corral.ChatRequest(
            MODEL,
            [corral.Message("user", f"Tell me about the harbor number {i}.")],
            max_tokens=32,
            id=f"{prefix}{i}",
        )


def faulty_server(seed: int, **knobs: Any) -> MockServer:
    """Return a mock server that fails about a third of the attempts, in every way it can."""
    return MockServer(
        MockConfig(
            latency=(0.05, 2.0),
            error_rates={429: 0.06, 500: 0.06, 503: 0.06, 400: 0.03},
            retry_after=0.5,
            drop_rate=0.04,
            truncate_rate=0.03,
            stall_rate=0.04,
            stall_seconds=3_600,
            seed=seed,
            **knobs,
        )
    )


def open_client(app: Any, **kwargs: Any) -> tuple[httpx2.AsyncClient, corral.Client]:
    """Return an in-process HTTP client for *app* and a corral Client sending through it."""
    http = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app))
    kwargs.setdefault("request_timeout", 5.0)
    kwargs.setdefault("retry", corral.RetryPolicy(attempts=4, timeout=60))
    return http, corral.Client(
        OpenAI("http://mock/v1", api_key="sk-test"), http_client=http, **kwargs
    )


def assert_one_each(ids: list[str], expected: list[str]) -> None:
    """Fail with the dropped and duplicated ids unless *ids* is *expected*, as a multiset."""
    seen = Counter(ids)
    dropped = sorted(set(expected) - set(seen))
    doubled = sorted(cid for cid, n in seen.items() if n > 1)
    strangers = sorted(set(seen) - set(expected))
    assert dropped == [], f"dropped: {dropped[:5]}"
    assert doubled == [], f"duplicated: {doubled[:5]}"
    assert strangers == [], f"not an input: {strangers[:5]}"


LAYERS: dict[str, Callable[[], dict[str, Any]]] = {
    "faults": dict,
    "budget": lambda: {"budget": corral.Budget(max_cost_usd=0.0006)},
    "breaker": lambda: {"breaker": corral.CircuitBreaker(failure_threshold=3, reset_timeout=20)},
    "everything": lambda: {
        "budget": corral.Budget(max_cost_usd=0.0004),
        "breaker": corral.CircuitBreaker(failure_threshold=6, reset_timeout=4),
        "rate_limit": corral.RateLimit(requests_per_minute=600),
    },
}


@pytest.mark.parametrize(
    ("mode", "layers"),
    [(mode, layers) for mode in ("run", "stream") for layers in sorted(LAYERS)]
    + [("stream-sse", "everything")],
)
async def test_every_input_yields_exactly_one_result_under_faults(mode: str, layers: str) -> None:
    """Under random faults, budget exhaustion and an opening circuit, each input gets one result."""
    seed = sorted(LAYERS).index(layers) * 3 + ["run", "stream", "stream-sse"].index(mode)
    count = 120
    expected = [f"q{i}" for i in range(count)]
    # An outage from 3 s to 15 s makes sure the circuit has something to open for.
    server = faulty_server(seed, outages=[(3.0, 15.0)])
    http, client = open_client(server, max_concurrency=12, **LAYERS[layers]())
    sse = mode == "stream-sse"
    async with http, client:
        if mode == "run":
            batch = await client.run(requests(count))
            results = list(batch.results)
            # run() also keeps input order.
            assert [r.id for r in results] == expected
        else:
            async with client.stream(requests(count), stream=sse) as stream:
                results = [r async for r in stream]
        stats = client.statistics()
    assert_one_each([r.id for r in results], expected)
    assert (stats.started, stats.succeeded + stats.failed, stats.in_flight) == (count, count, 0)
    kinds = Counter(r.error.kind.value for r in results if isinstance(r, corral.Failure))
    # The run did meet the trouble it is meant to survive, so the check above means something.
    assert sum(kinds.values()) > 0
    refusals = {
        "faults": 1,
        "budget": kinds["budget_exhausted"],
        "breaker": kinds["circuit_open"],
        "everything": kinds["budget_exhausted"] + kinds["circuit_open"],
    }
    assert refusals[layers] > 0, kinds
    # A refusal is a value, and nothing refused before sending reached the server.
    for result in results:
        if isinstance(result, corral.Failure) and result.attempts == 0:
            assert server.hits_for(result.id) == 0


async def test_cancelling_work_beside_a_batch_leaves_its_results_whole() -> None:
    """Cancelling other calls on the same client mid-batch costs the batch no result."""
    server = faulty_server(11)
    http, client = open_client(server, max_concurrency=8)
    expected = [f"q{i}" for i in range(120)]
    async with http, client:
        batch: list[corral.BatchResult] = []
        async with anyio.create_task_group() as tg:

            async def the_batch() -> None:
                batch.append(await client.run(requests(120)))

            async def cancelled_neighbours() -> None:
                rng = random.Random(5)
                for i in range(40):
                    with anyio.move_on_after(rng.uniform(0.0, 1.5)):
                        await client.complete(next(requests(1, prefix=f"side{i}-")))

            tg.start_soon(the_batch)
            tg.start_soon(cancelled_neighbours)
        assert client.statistics().in_flight == 0
    assert [r.id for r in batch[0]] == expected


@pytest.mark.parametrize("seed", range(4))
async def test_a_cancelled_stream_delivers_no_duplicate_and_a_resume_completes(seed: int) -> None:
    """Cancelled at a random moment, a stream has delivered each id at most once; sending the
    rest again then gives every input exactly one result in all."""
    rng = random.Random(seed)
    count = 200
    expected = [f"q{i}" for i in range(count)]
    server = faulty_server(20 + seed)
    http, client = open_client(server, max_concurrency=16)
    received: list[str] = []
    async with http, client:
        with anyio.move_on_after(rng.uniform(0.5, 6.0)) as scope:
            async with client.stream(requests(count)) as stream:
                async for result in stream:
                    received.append(result.id)
        assert scope.cancelled_caught
        assert 0 < len(received) < count
        assert len(received) == len(set(received))
        assert set(received) <= set(expected)
        done = set(received)
        rest = [r for r in requests(count) if r.id not in done]
        async with client.stream(rest) as stream:
            received.extend([r.id async for r in stream])
    assert_one_each(received, expected)
