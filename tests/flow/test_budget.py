"""Budgets: reserve the worst case, settle the truth, never overspend, under any interleaving."""

from __future__ import annotations

import math
from typing import TypeVar

import anyio
import anyio.lowlevel
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corral._errors import ConfigurationError
from corral._flow.budget import Budget, BudgetTracker, Reservation, Verdict

T = TypeVar("T")


def some(value: T | None) -> T:
    """Return `value`, failing the test if it is None."""
    assert value is not None
    return value


def assert_invariant(tracker: BudgetTracker) -> None:
    """Settled spend plus outstanding reservations never exceed either limit."""
    policy = tracker.policy
    limit = tracker._limit_nano
    if limit is not None:
        assert tracker._spent_nano + tracker._reserved_nano <= limit
        assert tracker.statistics().spent_usd <= policy.max_cost_usd  # type: ignore[operator]
    if policy.max_tokens is not None:
        assert tracker._spent_tokens + tracker._reserved_tokens <= policy.max_tokens


worker_plans = st.lists(
    st.tuples(
        st.floats(min_value=0.0, max_value=0.5),  # worst-case cost
        st.floats(min_value=0.0, max_value=1.0),  # actual as a share of the worst case
        st.integers(min_value=0, max_value=2_000),  # worst-case tokens
        st.integers(min_value=0, max_value=5),  # checkpoints before reserving
        st.integers(min_value=0, max_value=5),  # checkpoints while "in flight"
        st.sampled_from(["settle", "release", "settle_unknown_cost"]),
    ),
    min_size=64,
    max_size=64,
)


@pytest.mark.anyio
@settings(max_examples=15, deadline=None)
@given(
    st.floats(min_value=0.0, max_value=10.0),
    st.one_of(st.none(), st.integers(min_value=0, max_value=40_000)),
    worker_plans,
)
async def test_64_workers_never_overspend(
    max_cost: float,
    max_tokens: int | None,
    plans: list[tuple[float, float, int, int, int, str]],
) -> None:
    """Under any interleaving of 64 workers, settled spend stays within the budget."""
    tracker = BudgetTracker(Budget(max_cost_usd=max_cost, max_tokens=max_tokens))
    events: list[str] = []
    actual_spend: list[float] = []

    async def worker(plan: tuple[float, float, int, int, int, str]) -> None:
        worst, share, tokens, before, during, ending = plan
        for _ in range(before):
            await anyio.lowlevel.checkpoint()
        reservation = await tracker.reserve(worst, tokens)
        assert_invariant(tracker)
        if reservation is None:
            events.append("refused")
            assert tracker.exhausted
            return
        events.append("exhausted-then-reserved" if tracker.exhausted else "reserved")
        for _ in range(during):
            await anyio.lowlevel.checkpoint()
        if ending == "release":
            tracker.release(reservation)
        elif ending == "settle_unknown_cost":
            tracker.settle(reservation, None, int(tokens * share))
            actual_spend.append(reservation.cost_usd)
        else:
            cost = worst * share
            tracker.settle(reservation, cost, int(tokens * share))
            actual_spend.append(cost)
        assert_invariant(tracker)

    async with anyio.create_task_group() as tg:
        for plan in plans:
            tg.start_soon(worker, plan)

    stats = tracker.statistics()
    assert len(events) == 64
    assert "exhausted-then-reserved" not in events
    assert stats.in_flight == 0
    assert stats.reserved_usd == 0
    assert stats.spent_usd <= max_cost
    assert math.fsum(actual_spend) <= max_cost + 1e-9
    assert stats.overruns == 0
    if max_tokens is not None:
        assert stats.spent_tokens <= max_tokens
    # Refusals only ever come from a request that could not fit even with nothing in flight.
    assert (stats.refused > 0) == ("refused" in events)


def test_a_request_that_fits_is_reserved_and_one_that_never_can_exhausts() -> None:
    """Fitting requests are held; the first that cannot fit on its own stops everything."""
    tracker = BudgetTracker(Budget(max_cost_usd=1.0))
    first = tracker.try_reserve(0.6)
    assert first is not None
    assert tracker.check(0.6) is Verdict.WAIT  # fits once the first one settles below 0.4
    assert tracker.try_reserve(0.6) is None
    assert not tracker.exhausted
    tracker.settle(first, 0.3, 100)
    assert tracker.try_reserve(0.8) is None  # 0.3 + 0.8 > 1: can never fit
    assert tracker.exhausted
    assert tracker.try_reserve(0.0) is None  # exhaustion is final
    assert tracker.check(0.0) is Verdict.NEVER


@pytest.mark.anyio
async def test_reserve_waits_for_in_flight_requests_to_settle() -> None:
    """A request that fits once in-flight work settles waits for it instead of giving up."""
    tracker = BudgetTracker(Budget(max_cost_usd=1.0))
    first = some(tracker.try_reserve(0.9))
    got: list[Reservation | None] = []

    async def second() -> None:
        got.append(await tracker.reserve(0.5))

    async with anyio.create_task_group() as tg:
        tg.start_soon(second)
        await anyio.lowlevel.checkpoint()
        assert got == []
        tracker.settle(first, 0.2, 10)
    assert got[0] is not None
    assert tracker.statistics().reserved_usd == pytest.approx(0.5)


@pytest.mark.anyio
async def test_waiters_give_up_when_the_budget_is_exhausted() -> None:
    """Requests waiting for room return None as soon as a settlement leaves none."""
    tracker = BudgetTracker(Budget(max_cost_usd=1.0))
    first = some(tracker.try_reserve(0.9))
    got: list[Reservation | None] = []

    async def waiter() -> None:
        got.append(await tracker.reserve(0.5))

    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(waiter)
        await anyio.lowlevel.checkpoint()
        tracker.settle(first, 0.9, 10)
    assert got == [None, None, None]
    assert tracker.exhausted


def test_unknown_price_under_a_cost_limit_is_refused_without_exhausting() -> None:
    """With a cost limit, a request with no price cannot be proven to fit, so it is refused."""
    tracker = BudgetTracker(Budget(max_cost_usd=1.0))
    assert tracker.check(None) is Verdict.UNPRICED
    assert tracker.try_reserve(None, 10) is None
    assert not tracker.exhausted
    assert tracker.statistics().refused == 1
    tokens_only = BudgetTracker(Budget(max_tokens=100))
    assert tokens_only.try_reserve(None, 10) is not None


def test_token_limit_is_enforced_like_the_cost_limit() -> None:
    """max_tokens reserves worst-case tokens and stops once the next request cannot fit."""
    tracker = BudgetTracker(Budget(max_tokens=1_000))
    a = some(tracker.try_reserve(None, 600))
    assert tracker.check(None, 600) is Verdict.WAIT
    tracker.settle(a, None, 500)
    b = some(tracker.try_reserve(None, 500))
    assert tracker.try_reserve(None, 1) is None  # only while b is in flight
    assert not tracker.exhausted
    tracker.settle(b, None, 500)
    assert tracker.try_reserve(None, 1) is None
    assert tracker.exhausted


def test_an_overrun_is_charged_as_the_worst_case_and_flagged() -> None:
    """A reported cost above the reservation (no real bill can be) costs the worst case."""
    tracker = BudgetTracker(Budget(max_cost_usd=1.0, max_tokens=1000))
    reservation = some(tracker.try_reserve(0.2, 10))
    tracker.settle(reservation, 1e301, 10**30)
    stats = tracker.statistics()
    assert stats.spent_usd == pytest.approx(0.2)
    assert stats.spent_tokens == 10
    assert stats.overruns == 1
    assert not tracker.exhausted


def test_settle_and_release_are_idempotent() -> None:
    """Settling or releasing a reservation twice counts it once."""
    tracker = BudgetTracker(Budget(max_cost_usd=1.0))
    a = some(tracker.try_reserve(0.5))
    tracker.settle(a, 0.25, 3)
    tracker.settle(a, 0.25, 3)
    tracker.release(a)
    b = some(tracker.try_reserve(0.5))
    tracker.release(b)
    tracker.release(b)
    stats = tracker.statistics()
    assert stats.spent_usd == pytest.approx(0.25)
    assert stats.spent_tokens == 3
    assert stats.in_flight == 0
    assert stats.remaining_usd == pytest.approx(0.75)
    assert a.done
    assert b.done


def test_money_is_counted_exactly_in_nano_dollars() -> None:
    """Ten settlements of $0.10 exactly fill a $1.00 budget: no float drift either way."""
    tracker = BudgetTracker(Budget(max_cost_usd=1.0))
    for _ in range(10):
        tracker.settle(some(tracker.try_reserve(0.1)), 0.1, 0)
    assert tracker.statistics().spent_usd == 1.0
    assert tracker.exhausted


def test_unlimited_budget_always_fits() -> None:
    """A budget with no limits reserves anything and never exhausts."""
    tracker = BudgetTracker(Budget())
    for _ in range(100):
        tracker.settle(some(tracker.try_reserve(1e6, 10**9)), 1e6, 10**9)
    assert not tracker.exhausted
    assert tracker.statistics().remaining_usd is None
    assert "exhausted=False" in repr(tracker)
    assert "$" in repr(Reservation(5, 1))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_cost_usd": -1.0},
        {"max_cost_usd": float("nan")},
        {"max_cost_usd": "5"},
        {"max_tokens": -5},
        {"max_tokens": 1.5},
        {"max_tokens": True},
    ],
)
def test_invalid_budgets_are_refused(kwargs: dict[str, object]) -> None:
    """Negative, non-finite and non-numeric limits raise ConfigurationError."""
    with pytest.raises(ConfigurationError):
        Budget(**kwargs)  # type: ignore[arg-type]
