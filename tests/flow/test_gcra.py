"""Model tests of the sans-IO GCRA core: window bounds, FIFO progress, settlement, learning.

The core takes the time as an argument, so these tests drive it with generated schedules and
need no event loop and no clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corral import LimitInfo, RateLimitHeaders
from corral._flow.ratelimit import (
    _GCRA,
    RateLimit,
    _OutputRatio,
    _RateLimiterCore,
)

# Float slack for comparisons of times computed through different sums.
FUZZ = 1e-6


@dataclass
class Admitted:
    arrival: float
    at: float
    cost: int


def run_fifo(cell: _GCRA, arrivals: list[tuple[float, int]]) -> list[Admitted]:
    """Admit requests in arrival order, each waiting exactly the time the core names."""
    admitted: list[Admitted] = []
    previous = -math.inf
    for arrival, cost in arrivals:
        now = max(arrival, previous)
        for _ in range(2):
            wait = cell.try_acquire(now, cost)
            if wait == 0.0:
                break
            now += wait
        else:  # pragma: no cover - reached only when the core's wait is wrong
            pytest.fail(f"not admitted after sleeping the wait it was told ({cost=}, {now=})")
        admitted.append(Admitted(arrival, now, cost))
        previous = now
    return admitted


def window_sums(admitted: list[Admitted], width: float) -> list[int]:
    """Return the admitted cost of every half-open window [a_i, a_i + width)."""
    times = [a.at for a in admitted]
    sums = []
    for i, start in enumerate(times):
        end = start + width - FUZZ
        sums.append(sum(a.cost for a in admitted[i:] if a.at < end))
    return sums


@st.composite
def schedules(draw: st.DrawFn) -> tuple[float, float, list[tuple[float, int]]]:
    """A limit per minute, a burst in seconds and arrivals with costs up to the capacity."""
    per_minute = draw(st.integers(min_value=1, max_value=5_000))
    burst = draw(st.floats(min_value=0.05, max_value=20.0))
    # Up to the largest capacity the cell can grow to: half the limit, or the burst if larger.
    capacity = max(per_minute * burst / 60.0, per_minute / 2.0, 1.0)
    gaps = draw(
        st.lists(
            st.one_of(st.just(0.0), st.floats(min_value=0.0, max_value=30.0)),
            min_size=1,
            max_size=120,
        )
    )
    costs = draw(
        st.lists(
            st.integers(min_value=1, max_value=max(int(capacity), 1)),
            min_size=len(gaps),
            max_size=len(gaps),
        )
    )
    arrivals = []
    t = 0.0
    for gap, cost in zip(gaps, costs, strict=True):
        t += gap
        arrivals.append((t, cost))
    return float(per_minute), burst, arrivals


@settings(max_examples=100, deadline=None)
@given(schedules())
def test_every_minute_window_stays_within_the_limit(
    schedule: tuple[float, float, list[tuple[float, int]]],
) -> None:
    """No 60-second window admits more than the limit, so a per-minute server never 429s."""
    per_minute, burst, arrivals = schedule
    admitted = run_fifo(_GCRA(per_minute, burst), arrivals)
    assert max(window_sums(admitted, 60.0)) <= per_minute


@settings(max_examples=100, deadline=None)
@given(schedules(), st.floats(min_value=0.01, max_value=600.0))
def test_every_window_stays_within_rate_times_width_plus_capacity(
    schedule: tuple[float, float, list[tuple[float, int]]], width: float
) -> None:
    """Any window of any width admits less than rate * width + capacity (limit + burst)."""
    per_minute, burst, arrivals = schedule
    cell = _GCRA(per_minute, burst)
    first_rate = cell.rate  # growing the capacity for a large request only lowers the rate
    admitted = run_fifo(cell, arrivals)
    bound = first_rate * width + cell.capacity
    assert max(window_sums(admitted, width)) < bound + FUZZ


@settings(max_examples=100, deadline=None)
@given(schedules())
def test_fifo_head_is_admitted_within_tolerance_plus_its_cost_so_nothing_starves(
    schedule: tuple[float, float, list[tuple[float, int]]],
) -> None:
    """Once at the head of the queue, a request waits at most tolerance + cost / rate."""
    per_minute, burst, arrivals = schedule
    cell = _GCRA(per_minute, burst)
    admitted = run_fifo(cell, arrivals)
    previous = -math.inf
    for request in admitted:
        head_since = max(request.arrival, previous)
        # Final capacity and rate are the most conservative ones the run used.
        bound = (cell.capacity + request.cost) / cell.rate
        assert request.at - head_since <= bound + FUZZ
        previous = request.at
    assert [a.at for a in admitted] == sorted(a.at for a in admitted)


def test_a_request_larger_than_the_burst_grows_the_capacity() -> None:
    """A request bigger than the burst grows the capacity, which fills up at the new rate."""
    cell = _GCRA(600.0, 1.0)  # capacity 10 units
    assert cell.capacity == 10.0
    wait = cell.try_acquire(0.0, 50)
    assert cell.capacity == 50.0
    # The sustained rate drops by the same amount, so a minute still holds at most 600.
    assert cell.rate * 60 == pytest.approx(600 - 50 + 1)
    # The 10 units it had are kept; the other 40 accrue at the new rate.
    assert wait == pytest.approx(40 / cell.rate)
    assert cell.try_acquire(wait, 50) == 0.0


def test_a_request_beyond_half_the_limit_waits_for_idle_time_then_goes() -> None:
    """A request over the largest capacity is not starved: it goes once the cell banked it."""
    cell = _GCRA(100.0, 1.0)  # largest capacity 50
    wait = cell.try_acquire(0.0, 80)
    assert cell.capacity == 50.0
    # It must bank all 80 units at the sustained rate, from the 1.67 units the cell held.
    assert wait == pytest.approx((80 - 100 / 60) / cell.rate)
    assert cell.try_acquire(wait, 80) == 0.0
    # It leaves the cell full of debt: the next unit waits.
    assert cell.try_acquire(wait, 1) > 0


def test_sustained_rate_is_the_limit_when_the_capacity_is_one_unit() -> None:
    """With a one-request capacity, the cell paces at exactly the configured limit."""
    cell = _GCRA(60.0, 1.0)
    assert cell.capacity == 1.0
    assert cell.rate == pytest.approx(1.0)
    admitted = run_fifo(cell, [(0.0, 1)] * 120)
    assert admitted[-1].at == pytest.approx(119.0)


@st.composite
def settled_runs(draw: st.DrawFn) -> tuple[float, list[tuple[float, int, int, float]]]:
    """A limit, and requests (gap, reserved, actual <= reserved, latency until settlement)."""
    per_minute = float(draw(st.integers(min_value=600, max_value=200_000)))
    capacity = per_minute / 60.0
    n = draw(st.integers(min_value=1, max_value=50))
    requests = []
    for _ in range(n):
        reserved = draw(st.integers(min_value=1, max_value=int(capacity)))
        actual = draw(st.integers(min_value=0, max_value=reserved))
        gap = draw(st.one_of(st.just(0.0), st.floats(min_value=0.0, max_value=5.0)))
        latency = draw(st.floats(min_value=0.0, max_value=20.0))
        requests.append((gap, reserved, actual, latency))
    return per_minute, requests


@settings(max_examples=40, deadline=None)
@given(settled_runs(), st.floats(min_value=0.5, max_value=120.0))
def test_settled_cost_stays_within_the_bound_plus_earlier_refunds(
    run: tuple[float, list[tuple[float, int, int, float]]], width: float
) -> None:
    """Real cost in a window stays under rate * width + capacity plus earlier requests' refunds."""
    per_minute, requests = run
    cell = _GCRA(per_minute, 1.0)
    # Events: settlements are applied before any admission at the same instant or later.
    pending: list[tuple[float, int, int, int]] = []  # (settle_at, index, reserved, actual)
    admitted: list[tuple[float, int, int]] = []  # (at, reserved, actual)
    settled_at: list[float] = []
    now = 0.0
    arrival = 0.0
    for index, (gap, reserved, actual, latency) in enumerate(requests):
        arrival += gap
        now = max(now, arrival)
        for _ in range(4 * len(requests) + 4):
            due = sorted(p for p in pending if p[0] <= now)
            for p in due:
                pending.remove(p)
                cell.settle(p[0], p[2], p[3])
            wait = cell.try_acquire(now, reserved)
            if wait == 0.0:
                break
            next_settle = min((p[0] for p in pending), default=math.inf)
            now = min(now + wait, next_settle)
        else:  # pragma: no cover
            pytest.fail("request never admitted")
        admitted.append((now, reserved, actual))
        settled_at.append(now + latency)
        pending.append((now + latency, index, reserved, actual))

    for start, _, _ in admitted:
        end = start + width - FUZZ
        real = sum(actual for at, _, actual in admitted if start <= at < end)
        refunds_from_before = sum(
            reserved - actual
            for (at, reserved, actual), done in zip(admitted, settled_at, strict=True)
            if at < start <= done < end
        )
        assert real < cell.rate * width + cell.capacity + refunds_from_before + FUZZ


def simulate_tokens(
    policy: RateLimit, prompt: int, max_tokens: int, output: int, latency: float
) -> tuple[float, _RateLimiterCore]:
    """Run a saturated client for ten virtual minutes; return its real token rate per minute."""
    core = _RateLimiterCore(policy)
    pending: list[tuple[float, dict[str, float]]] = []
    now, used = 0.0, 0
    for _ in range(100_000):
        while pending and pending[0][0] <= now:
            _, reserved = pending.pop(0)
            actual = {"tokens": prompt + output, "input_tokens": prompt, "output_tokens": output}
            core.settle(now, reserved, actual, max_tokens)
        costs = core.costs(prompt, max_tokens)
        wait = core.try_acquire(now, costs)
        if wait:
            now = min(now + wait, pending[0][0]) if pending else now + wait
            continue
        used += prompt + output
        pending.append((now + latency, costs))
        if now >= 600:
            break
    return used / now * 60.0, core


def test_settlement_keeps_the_long_run_token_rate_near_the_limit() -> None:
    """With the learned output ratio, the real token rate reaches at least 90% of the TPM."""
    rate, core = simulate_tokens(
        RateLimit(tokens_per_minute=60_000), prompt=100, max_tokens=800, output=200, latency=5.0
    )
    assert 0.9 * 60_000 <= rate <= 60_000
    assert core.output_ratio.value == pytest.approx(0.25)


def test_reserving_the_whole_max_tokens_holds_back_the_real_rate() -> None:
    """With estimate_output=False, the whole max_tokens is held while a request runs."""
    policy = RateLimit(tokens_per_minute=60_000, estimate_output=False)
    rate, core = simulate_tokens(policy, prompt=100, max_tokens=800, output=200, latency=5.0)
    assert core.costs(100, 800)["tokens"] == 900
    assert rate < 0.7 * 60_000


def test_output_ratio_is_cautious_before_and_after_warmup() -> None:
    """The ratio reserves everything until warmed up, then the mean plus two deviations."""
    core = _RateLimiterCore(RateLimit(tokens_per_minute=1_000))
    for n in range(_OutputRatio.WARMUP - 1):
        core.settle(0.0, {}, {"output_tokens": 10.0}, 100)
        assert core.costs(0, 100)["output_tokens"] == 100, n
    core.settle(0.0, {}, {"output_tokens": 10.0}, 100)
    assert core.costs(0, 100)["output_tokens"] == pytest.approx(10, abs=1)
    for actual in (0.0, 100.0) * 20:
        core.settle(0.0, {}, {"output_tokens": actual}, 100)
    assert core.costs(0, 100)["output_tokens"] == 100


def test_set_rate_keeps_the_available_units_up_to_the_new_capacity() -> None:
    """Changing the limit keeps what is available now, never granting a fresh burst."""
    cell = _GCRA(6_000.0, 1.0)  # capacity 100
    assert cell.try_acquire(0.0, 70) == 0.0
    assert cell.available(0.0) == pytest.approx(30.0)
    cell.set_rate(0.0, 12_000.0)  # capacity 200: still 30 available
    assert cell.capacity == 200.0
    assert cell.available(0.0) == pytest.approx(30.0)
    cell.set_rate(0.0, 600.0)  # capacity 10: capped
    assert cell.available(0.0) == pytest.approx(10.0)


def test_core_admits_only_when_every_limit_conforms() -> None:
    """A request is charged to every cell or to none: the binding limit decides the wait."""
    core = _RateLimiterCore(RateLimit(requests_per_minute=6_000, tokens_per_minute=600))
    assert core.try_acquire(0.0, {"requests": 1, "tokens": 10}) == 0.0
    wait = core.try_acquire(0.0, {"requests": 1, "tokens": 10})
    assert wait > 0
    # The requests cell was not charged for the refused request.
    assert core._cells["requests"].available(0.0) == pytest.approx(99.0)


def test_pause_blocks_everything_then_restarts_paced() -> None:
    """A shared cooldown refuses all admissions until it ends, then the cells start empty."""
    core = _RateLimiterCore(RateLimit(requests_per_minute=600))
    assert core.pause(30.0)
    assert not core.pause(10.0)
    assert core.try_acquire(5.0, {"requests": 1}) == pytest.approx(25.0 + 0.1, abs=0.2)
    assert core.try_acquire(30.0, {"requests": 1}) > 0
    assert core.try_acquire(30.2, {"requests": 1}) == 0.0
    assert core.try_acquire(30.2, {"requests": 1}) > 0


def test_pause_without_any_limit_still_holds_admission() -> None:
    """With no limit configured or learned, a cooldown alone still stops admission."""
    core = _RateLimiterCore(RateLimit())
    assert core.try_acquire(0.0, {"requests": 1}) == 0.0
    core.pause(12.0)
    assert core.try_acquire(2.0, {"requests": 1}) == pytest.approx(10.0)
    assert core.try_acquire(12.0, {"requests": 1}) == 0.0


def test_learned_limit_is_paced_and_lower_of_configured_and_learned() -> None:
    """A limit read from headers is paced even when none is configured; the lower one wins."""
    core = _RateLimiterCore(RateLimit(requests_per_minute=100))
    info = RateLimitHeaders(
        {"requests": LimitInfo(limit=60), "tokens": LimitInfo(limit=1_000, remaining=500)}
    )
    assert core.learn(0.0, info, 200) is None
    assert core.limits() == {"requests": 60.0, "tokens": 1_000.0}
    higher = RateLimitHeaders({"requests": LimitInfo(limit=10_000)})
    core.learn(1.0, higher, 200)
    assert core.limits()["requests"] == 100.0


def test_learned_remaining_only_tightens() -> None:
    """The server's remaining count lowers what is available now, and never raises it."""
    core = _RateLimiterCore(RateLimit(requests_per_minute=6_000))
    cell = core._cells["requests"]
    assert cell.available(0.0) == pytest.approx(100.0)
    core.learn(0.0, RateLimitHeaders({"requests": LimitInfo(remaining=3)}), 200)
    assert cell.available(0.0) == pytest.approx(3.0)
    core.learn(0.0, RateLimitHeaders({"requests": LimitInfo(remaining=50)}), 200)
    assert cell.available(0.0) == pytest.approx(3.0)


def test_a_429_with_a_spent_limit_asks_for_a_cooldown_until_its_reset() -> None:
    """A 429 whose headers show a limit at zero returns the reset time as the cooldown end."""
    core = _RateLimiterCore(RateLimit())
    info = RateLimitHeaders(
        {
            "requests": LimitInfo(limit=100, remaining=0, reset=7.5),
            "tokens": LimitInfo(limit=10_000, remaining=4_000, reset=1.0),
        }
    )
    assert core.learn(10.0, info, 429) == pytest.approx(17.5)
    assert core.learn(10.0, info, 200) is None


def test_learning_can_be_turned_off() -> None:
    """With learn_from_headers=False, headers change nothing."""
    core = _RateLimiterCore(RateLimit(learn_from_headers=False))
    info = RateLimitHeaders({"requests": LimitInfo(limit=1, remaining=0, reset=60)})
    assert core.learn(0.0, info, 429) is None
    assert core.limits() == {}
