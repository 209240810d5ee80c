"""The circuit breaker end to end: an outage window on the mock server opens it, then it heals."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest

import corral
from corral.testing import MockServer

from .flowkit import HitClock, chat, open_client

pytestmark = [pytest.mark.anyio, pytest.mark.virtual_time]


async def trickle(count: int, every: float) -> AsyncIterator[corral.ChatRequest]:
    """Yield `count` requests, one every `every` seconds, as a live producer would."""
    for i in range(count):
        yield chat(i)
        await anyio.sleep(every)


async def test_an_outage_opens_the_breaker_no_hits_while_open_then_a_probe_closes_it() -> None:
    """An outage opens the circuit; while open nothing is sent; after it, a probe closes it."""
    outage = (20.0, 45.0)
    latency = 0.5
    policy = corral.CircuitBreaker(failure_threshold=5, reset_timeout=10)
    server = MockServer(outages=[outage], latency=latency)
    clock = HitClock(server)
    openings: dict[int, float] = {}  # the n-th opening -> when it opened
    async with open_client(
        clock, max_concurrency=16, breaker=policy, retry=corral.RetryPolicy(attempts=3)
    ) as client:

        async def watch() -> None:
            while True:
                for circuit in client.statistics().breakers.values():
                    if circuit.state is corral.BreakerState.OPEN:
                        # Exact, although sampled: it opened reset_timeout before it half-opens.
                        now = anyio.current_time()
                        opened_at = now + circuit.time_until_half_open - policy.reset_timeout
                        openings.setdefault(circuit.opened, opened_at)
                await anyio.sleep(1.0)

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch)
            batch = await client.run(trickle(160, every=0.5))
            tg.cancel_scope.cancel()
        circuits = client.statistics().breakers

    assert clock.origin is not None
    start = clock.origin
    outage_start, outage_end = start + outage[0], start + outage[1]
    # It opened during the outage, and opened again after each probe that met the outage.
    assert openings
    assert all(outage_start <= t < outage_end for t in openings.values())
    (circuit,) = circuits.values()
    assert circuit.opened == len(openings) >= 2
    assert circuit.state is corral.BreakerState.CLOSED
    # Zero hits while open: only a probe, when each open period ends.
    for opened_at in openings.values():
        half_open_at = opened_at + policy.reset_timeout
        assert not [hit for hit in clock.hits if opened_at < hit.at < half_open_at]
        probes = [hit for hit in clock.hits if half_open_at <= hit.at < half_open_at + latency]
        assert len(probes) == 1
    # The server saw only a handful of failures, not one per request of the outage.
    failed_hits = [hit for hit in clock.hits if hit.status == 503]
    assert len(failed_hits) <= policy.failure_threshold + len(openings) + 1
    # It recovered: the probe after the outage succeeded, and so did everything after it.
    last_probe = max(openings.values()) + policy.reset_timeout
    after = [hit for hit in clock.hits if hit.at >= last_probe]
    assert after
    assert all(hit.status == 200 for hit in after)
    assert after[0].at >= outage_end
    # Failures are values, one per input, and their attempts are the hits the server saw.
    assert len(batch.results) == 160
    assert [r.id for r in batch.results] == [f"q{i}" for i in range(160)]
    kinds = {r.error.kind for r in batch.failures}
    assert kinds == {corral.ErrorKind.CIRCUIT_OPEN}
    assert sum(r.attempts == 0 for r in batch.failures) >= 40  # refused without a hit
    for result in batch.results:
        assert result.attempts == server.hits_for(result.id), result
    assert server.statistics().total_hits == batch.statistics.attempts
    assert circuit.rejected == len(batch.failures)
