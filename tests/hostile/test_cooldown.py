"""The shared 429 cooldown under attack: one refusal never stalls the batch, a spent limit does.

Against `CooldownServer` and `corral.testing.MockServer`, in process and in virtual time, on
both backends. The rule under test (``docs/guarantees.md``, "Rate limits"): a lone 429 delays
only its own request by its hint; every worker pauses only on evidence that the shared limit is
spent (a 429 whose headers show a limit at zero with its reset, or refusals from several
distinct requests making up half the latest answers); a request whose deadline a known pause
or limit cannot meet fails at once as ``rate_limited``, never as a timeout after 0 attempts.
"""

from __future__ import annotations

import pytest

import corral
from corral.testing import MockServer

from .cooldown_server import CooldownServer, cooldown_client, per_request_retries, requests

pytestmark = [pytest.mark.anyio, pytest.mark.virtual_time]


def _kinds(batch: corral.BatchResult) -> dict[str, str]:
    return {r.id: r.error.kind.value for r in batch.failures}


async def test_one_429_with_an_hour_hint_fails_its_request_and_the_rest_go_on() -> None:
    """One 429 with Retry-After: 3600 fails that request at once; every other one succeeds."""
    server = CooldownServer(refuse_first=1, retry_after="3600", latency=0.5)
    async with cooldown_client(
        server, max_concurrency=4, retry=corral.RetryPolicy(timeout=30)
    ) as client:
        batch = await client.run(requests(40))
        limiter = client.statistics().rate_limiter

    refused = server.refused()
    assert len(refused) == 1
    assert _kinds(batch) == {refused[0].request_id: "rate_limited"}
    failure = batch.failures[0]
    assert failure.attempts == 1
    assert failure.error.retry_after_s == 3600
    assert failure.latency_s < 1.0
    assert batch.statistics.succeeded == 39
    # Ten rounds of four at 0.5 s: nobody waited for the hour (or the 30 s deadline).
    assert max(a.at for a in server.arrivals) - (server.origin or 0.0) < 6.0
    assert limiter is not None
    assert limiter.cooldowns == 0


async def test_a_429_claiming_the_limit_spent_for_an_hour_fails_requests_at_once() -> None:
    """A 429 saying remaining=0 reset=1h fails what cannot wait an hour at once, as rate_limited."""
    server = CooldownServer(
        refuse_first=1,
        retry_after=None,
        refusal_headers={
            "x-ratelimit-limit-requests": "500",
            "x-ratelimit-remaining-requests": "0",
            "x-ratelimit-reset-requests": "1h",
        },
        latency=0.5,
    )
    async with cooldown_client(
        server, max_concurrency=4, retry=corral.RetryPolicy(timeout=30)
    ) as client:
        batch = await client.run(requests(40))
        limiter = client.statistics().rate_limiter

    # The refusal comes back before the other requests go: none of them is sent.
    assert batch.statistics.failed == 40
    assert set(_kinds(batch).values()) == {"rate_limited"}
    for failure in batch.failures:
        assert failure.latency_s < 2.0, failure
        assert failure.error.retry_after_s is not None
        assert failure.error.retry_after_s > 3000
        assert "paused" in failure.error.message
    assert len(server.arrivals) == 1
    assert limiter is not None
    assert limiter.refused_at_once == 40
    assert limiter.cooldowns == 1


async def test_a_learned_limit_of_one_token_fails_requests_at_once_naming_the_header(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """x-ratelimit-limit-tokens: 1 is reported and fails the requests at once, not waited on."""
    server = CooldownServer(headers={"x-ratelimit-limit-tokens": "1"}, latency=0.5)
    async with cooldown_client(
        server, max_concurrency=4, retry=corral.RetryPolicy(timeout=30)
    ) as client:
        batch = await client.run(requests(40))
        limiter = client.statistics().rate_limiter

    assert batch.statistics.failed > 30
    for failure in batch.failures:
        assert failure.error.kind.value == "rate_limited"
        assert failure.attempts == 0
        assert failure.latency_s < 1.0
        assert "x-ratelimit-limit-tokens" in failure.error.message
        assert "says 1 tokens per minute" in failure.error.message
    assert limiter is not None
    assert limiter.too_small == {"tokens": 1.0}
    warnings = [r for r in caplog.records if "x-ratelimit-limit-tokens" in r.getMessage()]
    assert len(warnings) == 1


async def test_sporadic_429s_cost_no_more_than_per_request_retries() -> None:
    """5% random 429s (Retry-After: 1) at 64 in flight keep 80% of per-request-retry throughput."""
    count, concurrency = 1_000, 64

    def server() -> MockServer:
        return MockServer(latency=0.1, error_rates={429: 0.05}, retry_after=1.0, seed=3)

    reference = per_request_retries(server(), requests(count), concurrency)
    reference_s = await reference
    async with cooldown_client(server(), max_concurrency=concurrency) as client:
        batch = await client.run(requests(count))
        limiter = client.statistics().rate_limiter

    assert batch.statistics.succeeded == count
    assert batch.statistics.attempts > count + 20  # the faults did happen
    corral_s = batch.statistics.wall_time_s
    assert count / corral_s >= 0.8 * count / reference_s, (corral_s, reference_s)
    assert limiter is not None
    assert limiter.cooldowns == 0


async def test_a_server_refusing_everything_pauses_the_fleet_with_few_429s() -> None:
    """A server refusing all requests for 20 s (no limit headers) pauses every worker, not each."""
    server = CooldownServer(refuse_until=20.0, retry_after="10", latency=0.2)
    async with cooldown_client(server, max_concurrency=64) as client:
        batch = await client.run(requests(300))
        limiter = client.statistics().rate_limiter

    assert batch.statistics.succeeded == 300
    # The first wave in flight is refused, then one pause per hint: a handful of probes more,
    # never 64 workers retrying on their own every 10 s.
    assert len(server.refused()) <= 64 + 16
    assert limiter is not None
    assert 1 <= limiter.cooldowns <= 3


async def test_retry_after_is_never_undercut_for_the_request_that_received_it() -> None:
    """A refused request is sent again no sooner than its own hint, lone or in a fleet pause."""
    lone = CooldownServer(refuse_ids={"r5"}, retry_after="7", latency=0.1)
    async with cooldown_client(lone, max_concurrency=8) as client:
        batch = await client.run(requests(100))
    assert batch.statistics.succeeded == 100
    first, second = lone.times_of("r5")
    assert second - first >= 7.0
    # The others did not wait for it: they were done well before its retry.
    assert max(lone.times_of(f"r{i}")[0] for i in range(100) if i != 5) < first + 7.0

    wave = CooldownServer(refuse_until=1.0, retry_after="7", latency=0.1)
    async with cooldown_client(wave, max_concurrency=16) as client:
        batch = await client.run(requests(40))
        limiter = client.statistics().rate_limiter
    assert batch.statistics.succeeded == 40
    for arrival in wave.refused():
        times = wave.times_of(arrival.request_id)
        assert times[1] - times[0] >= 7.0
    assert limiter is not None
    assert limiter.cooldowns == 1
