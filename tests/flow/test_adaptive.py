"""AIMD concurrency: convergence against simulated servers, and the CapacityLimiter adapter."""

from __future__ import annotations

import random
import statistics

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corral._errors import ConfigurationError
from corral._flow.adaptive import (
    _AIMD,
    AdaptiveConcurrency,
    AdaptiveLimiter,
    Signal,
    signal_for_kind,
)


def shedding_server(
    policy: AdaptiveConcurrency, capacity: int, rounds: int, seed: int
) -> list[int]:
    """Simulate a closed loop against a server that answers 529 beyond `capacity` in flight.

    Each round lasts one latency: the client keeps `limit` requests in flight, at most
    `capacity` succeed and the rest are shed. Returns the limit after each round.
    """
    rng = random.Random(seed)
    core = _AIMD(policy)
    history = []
    now = 0.0
    for _ in range(rounds):
        now += 1.0
        in_flight = core.limit
        signals = [Signal.SUCCESS] * min(in_flight, capacity)
        signals += [Signal.OVERLOAD] * max(in_flight - capacity, 0)
        rng.shuffle(signals)
        for signal in signals:
            core.on_result(now, signal, rng.uniform(0.9, 1.1), in_flight)
        history.append(core.limit)
    return history


@settings(max_examples=20, deadline=None)
@given(
    st.integers(min_value=4, max_value=80),
    st.integers(min_value=1, max_value=64),
    st.integers(min_value=0, max_value=2**32),
)
def test_limit_converges_near_the_servers_capacity(capacity: int, initial: int, seed: int) -> None:
    """The limit saws between decrease * C and C + 1, averaging at least 75% of capacity."""
    policy = AdaptiveConcurrency(max_concurrency=1_000, initial=initial)
    history = shedding_server(policy, capacity, rounds=400, seed=seed)
    settled = history[200:]
    assert max(settled) <= capacity + 1
    assert min(settled) >= int(policy.decrease * capacity) - 1
    assert statistics.fmean(settled) >= 0.75 * capacity


def test_limit_stays_within_its_bounds() -> None:
    """However the server behaves, the limit never leaves [min, max]."""
    policy = AdaptiveConcurrency(min_concurrency=3, max_concurrency=10, initial=5)
    assert max(shedding_server(policy, capacity=1_000, rounds=500, seed=1)) == 10
    assert min(shedding_server(policy, capacity=0, rounds=500, seed=1)) == 3


def test_one_decrease_per_window_however_many_overloads() -> None:
    """A burst of 429s from one window of requests cuts the limit once, not once per 429."""
    core = _AIMD(AdaptiveConcurrency(initial=100, max_concurrency=200))
    core.on_result(0.0, Signal.SUCCESS, 2.0, 100)
    for _ in range(50):
        core.on_result(10.0, Signal.OVERLOAD, 2.0, 100)
    assert core.limit == 70
    assert core.decreases == 1
    core.on_result(11.0, Signal.OVERLOAD, 2.0, 100)  # still within 2 s of the cut
    assert core.limit == 70
    core.on_result(12.5, Signal.OVERLOAD, 2.0, 100)
    assert core.limit == 49


def test_growth_needs_the_limit_in_use() -> None:
    """A limit that requests do not reach does not grow: demand, not luck, proves capacity."""
    core = _AIMD(AdaptiveConcurrency(initial=10))
    for i in range(1_000):
        core.on_result(float(i), Signal.SUCCESS, 1.0, in_flight=2)
    assert core.limit == 10
    for i in range(1_000):
        core.on_result(float(i), Signal.SUCCESS, 1.0, in_flight=core.limit)
    assert core.limit > 10


def test_a_sustained_latency_rise_holds_the_limit() -> None:
    """When latency jumps well above its long-term average, the limit stops growing."""
    core = _AIMD(AdaptiveConcurrency(initial=10, max_concurrency=1_000))
    for i in range(200):
        core.on_result(float(i), Signal.SUCCESS, 1.0, core.limit)
    assert core.limit > 10
    core.on_result(200.0, Signal.SUCCESS, 5.0, core.limit)
    held = core.limit
    for i in range(201, 215):
        core.on_result(float(i), Signal.SUCCESS, 5.0, core.limit)
        assert core.limit == held
    # Once the long-term average has caught up, the new latency is the norm: growth resumes.
    for i in range(215, 400):
        core.on_result(float(i), Signal.SUCCESS, 5.0, core.limit)
    assert core.limit > held


def test_neutral_results_and_bad_latencies_change_nothing() -> None:
    """4xx-like results, NaN and negative latencies are ignored."""
    core = _AIMD(AdaptiveConcurrency(initial=10))
    for latency in (float("nan"), -1.0, float("inf")):
        core.on_result(0.0, Signal.SUCCESS, latency, 10)
    for _ in range(100):
        core.on_result(0.0, Signal.NEUTRAL, 1.0, 10)
    assert core.snapshot().limit == 10
    assert core.snapshot().latency == 0.0


@pytest.mark.parametrize(
    ("kind", "signal"),
    [
        (None, Signal.SUCCESS),
        ("rate_limited", Signal.OVERLOAD),
        ("overloaded", Signal.OVERLOAD),
        ("timeout", Signal.OVERLOAD),
        ("server_error", Signal.NEUTRAL),
        ("bad_request", Signal.NEUTRAL),
    ],
)
def test_error_kinds_map_to_signals(kind: str | None, signal: Signal) -> None:
    """429, 529/503 and timeouts are overload; other failures say nothing about capacity."""
    assert signal_for_kind(kind) is signal


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_concurrency": 0},
        {"min_concurrency": 10, "max_concurrency": 5},
        {"decrease": 1.0},
        {"decrease": 0.0},
        {"increase": -1},
        {"latency_tolerance": 0.5},
        {"initial": 0},
        {"utilisation": 1.5},
    ],
)
def test_invalid_policies_are_refused(kwargs: dict[str, object]) -> None:
    """Inconsistent bounds and factors raise ConfigurationError."""
    with pytest.raises(ConfigurationError):
        AdaptiveConcurrency(**kwargs)  # type: ignore[arg-type]


def test_start_is_clamped_into_the_bounds() -> None:
    """The starting limit defaults to 8 and always lies within the bounds."""
    assert AdaptiveConcurrency().start == 8
    assert AdaptiveConcurrency(max_concurrency=4).start == 4
    assert AdaptiveConcurrency(min_concurrency=20, max_concurrency=40).start == 20
    assert AdaptiveConcurrency(initial=30).start == 30


@pytest.mark.anyio
@pytest.mark.virtual_time
async def test_adapter_drives_the_capacity_limiters_size() -> None:
    """Recording results changes the limiter's total_tokens, and lowering it spares running work."""
    limiter = anyio.CapacityLimiter(1)
    adaptive = AdaptiveLimiter(AdaptiveConcurrency(initial=4, max_concurrency=8), limiter)
    assert limiter.total_tokens == 4
    holders = [object() for _ in range(4)]
    for holder in holders:
        await limiter.acquire_on_behalf_of(holder)
    for _ in range(40):
        adaptive.record(Signal.SUCCESS, 1.0)
    assert limiter.total_tokens > 4
    grown = limiter.total_tokens
    await anyio.sleep(5)
    adaptive.record(Signal.OVERLOAD, 1.0)
    assert limiter.total_tokens == int(grown * 0.7)
    assert limiter.borrowed_tokens == 4  # running requests keep their tokens
    for holder in holders:
        limiter.release_on_behalf_of(holder)
    assert adaptive.statistics().decreases == 1
    assert adaptive.limit == limiter.total_tokens
    assert "limit=" in repr(adaptive)


@pytest.mark.anyio
async def test_adapter_makes_its_own_limiter_when_none_is_given() -> None:
    """Without a limiter, the adapter creates one at the starting limit."""
    adaptive = AdaptiveLimiter(AdaptiveConcurrency(initial=3))
    assert adaptive.limiter.total_tokens == 3
