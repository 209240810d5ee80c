"""Rate limits end to end: pacing at configured limits, learning them, and the shared cooldown.

The client runs against the mock server's emulated RPM/TPM limits, which answer with real
``x-ratelimit-*`` headers, 429s and reset times. Virtual time makes minutes of pacing free.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

import corral
from corral.testing import MockServer

from .flowkit import MINUTE, HitClock, chats, most_in_any_window, open_client, stories

pytestmark = [pytest.mark.anyio, pytest.mark.virtual_time]


async def test_configured_at_the_server_rpm_no_429_and_each_minute_nearly_full() -> None:
    """Paced at the server's RPM, a batch gets no 429 and sends at least 90% of it each minute."""
    rpm = 120
    # A fixed window is the strict case: one request too many in a minute is refused.
    server = MockServer(
        requests_per_minute=rpm, rate_limit_algorithm="fixed_window", latency=(0.5, 2)
    )
    clock = HitClock(server)
    async with open_client(
        clock, max_concurrency=32, rate_limit=corral.RateLimit(requests_per_minute=rpm)
    ) as client:
        batch = await client.run(chats(2 * rpm + 20))

    assert batch.statistics.succeeded == 2 * rpm + 20
    assert dict(server.statistics().hits_by_status) == {200: 2 * rpm + 20}
    for minute in range(2):
        sent = clock.between(minute * MINUTE, (minute + 1) * MINUTE)
        assert 0.9 * rpm <= sent <= rpm, f"minute {minute}: {sent} requests"
    # Not only the server's windows: no sliding minute ever holds more than the limit.
    assert most_in_any_window([hit.at for hit in clock.hits]) <= rpm


async def test_configured_at_the_server_tpm_no_429_and_each_minute_nearly_full() -> None:
    """With TPM binding, a batch gets no 429 and uses at least 90% of the tokens each minute.

    The answers are much shorter than ``max_tokens``: reaching the limit needs the reservations
    settled with the real usage (and the output ratio learned), not ``max_tokens`` held.
    """
    tpm = 3_000
    server = MockServer(tokens_per_minute=tpm, requests_per_minute=1_000, latency=(0.5, 2))
    clock = HitClock(server)
    limits = corral.RateLimit(tokens_per_minute=tpm, requests_per_minute=1_000)
    async with open_client(clock, max_concurrency=32, rate_limit=limits) as client:
        batch = await client.run(stories(200))
        limiter = client.statistics().rate_limiter

    assert batch.statistics.succeeded == 200
    assert dict(server.statistics().hits_by_status) == {200: 200}
    tokens = {r.id: r.usage.total_tokens for r in batch.completions}
    output = sum(r.usage.output_tokens for r in batch.completions) / 200
    assert output < 0.6 * 64  # answers are well below max_tokens=64
    for minute in range(2):
        used = sum(
            tokens[hit.request_id or ""]
            for hit in clock.window(minute * MINUTE, (minute + 1) * MINUTE)
        )
        assert 0.9 * tpm <= used <= tpm, f"minute {minute}: {used} tokens"
    assert limiter is not None
    assert limiter.output_ratio < 1.0  # it learned to reserve less than max_tokens


@pytest.mark.parametrize(
    ("limit", "knobs", "make"),
    [
        pytest.param(
            "requests",
            {"requests_per_minute": 60, "rate_limit_algorithm": "fixed_window"},
            chats,
            id="rpm-fixed-window",
        ),
        pytest.param("tokens", {"tokens_per_minute": 2_000}, stories, id="tpm-token-bucket"),
    ],
)
async def test_limits_learned_from_headers_stop_the_429s_after_the_first_minute(
    limit: str, knobs: dict[str, Any], make: Callable[[int], Iterator[corral.ChatRequest]]
) -> None:
    """With no limit configured, the 429s of the first minute teach the limit; then they stop."""
    server = MockServer(latency=(0.5, 2), **knobs)
    clock = HitClock(server, delay=0.1)
    async with open_client(clock, max_concurrency=100) as client:
        batch = await client.run(make(240))
        limiter = client.statistics().rate_limiter

    assert batch.statistics.succeeded == 240
    first = clock.window(0, MINUTE)
    refused_first = sum(hit.status == 429 for hit in first)
    # Blind at first: the opening burst overshoots (else this test would prove nothing).
    assert refused_first >= 10
    later = clock.window(MINUTE, float("inf"))
    refused_later = sum(hit.status == 429 for hit in later)
    assert len(later) >= 120
    assert refused_later <= 0.02 * len(later), f"{refused_later} 429s of {len(later)} later"
    assert limiter is not None
    assert limiter.limits == {limit: next(iter(knobs.values()))}


async def test_500_workers_one_429_burst_then_one_shared_cooldown_and_a_paced_minute() -> None:
    """500 workers refused at once all wait out one shared cooldown, then stay within the limit."""
    rpm = 200
    server = MockServer(requests_per_minute=rpm, latency=1.0)
    # The network delay puts all 500 requests in flight before the first 429 comes back.
    clock = HitClock(server, delay=0.1)
    async with open_client(clock, max_concurrency=500) as client:
        batch = await client.run(chats(500))
        limiter = client.statistics().rate_limiter

    assert batch.statistics.succeeded == 500
    refused = clock.window(0, float("inf"), status=429)
    # One burst: the 300 requests beyond the limit, all refused on arrival, none later.
    assert len(refused) == 500 - rpm
    assert all(hit.at == clock.origin for hit in refused)
    # The shared cooldown holds: nothing reaches the server until the bucket is whole again
    # (a full bucket of 200 requests drains in the minute the server announces as its reset).
    assert clock.between(1e-6, MINUTE) == 0
    # Then paced: the next minute holds no more than the limit, and no 429 ever again.
    assert clock.between(MINUTE, 2 * MINUTE) <= rpm
    after = [hit.at for hit in clock.hits if hit.at > (clock.origin or 0.0)]
    assert most_in_any_window(after) <= rpm
    # Each refused request was sent again exactly once, and the server saw every attempt.
    assert sorted(r.attempts for r in batch.results) == [1] * rpm + [2] * (500 - rpm)
    assert server.statistics().total_hits == batch.statistics.attempts == 500 + (500 - rpm)
    assert limiter is not None
    assert limiter.cooldowns == 1  # one cooldown for every worker, not one each
    assert limiter.limits == {"requests": rpm}
