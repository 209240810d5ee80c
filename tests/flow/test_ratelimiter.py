"""The anyio rate limiter in virtual time: FIFO fairness, shared cooldowns, learning, settling."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import anyio
import anyio.lowlevel
import httpx2
import pytest

from corral import LimitInfo, RateLimitHeaders
from corral._flow.ratelimit import Permit, RateLimit, RateLimiter
from corral._models import ErrorInfo, ErrorKind
from corral.providers._headers import read_rate_limits

pytestmark = [pytest.mark.anyio, pytest.mark.virtual_time]


async def test_waiters_are_admitted_in_arrival_order_and_within_the_limit() -> None:
    """Many tasks queued at once are admitted first come first served, at the paced rate."""
    limiter = RateLimiter(RateLimit(requests_per_minute=120))
    start = anyio.current_time()
    admitted: list[tuple[int, float]] = []

    async def worker(index: int) -> None:
        await limiter.acquire()
        admitted.append((index, anyio.current_time() - start))

    async with anyio.create_task_group() as tg:
        for index in range(300):
            tg.start_soon(worker, index)
            # Each task starts (and queues) before the next one is spawned.
            await anyio.lowlevel.checkpoint()

    assert [index for index, _ in admitted] == list(range(300))
    times = [t for _, t in admitted]
    for i, t in enumerate(times):
        assert sum(1 for u in times[i:] if u < t + 60 - 1e-6) <= 120
    stats = limiter.statistics()
    assert stats.admitted == 300
    assert stats.waiting == 0
    assert stats.delayed >= 297  # all but the first burst of two had to wait


async def test_a_large_request_at_the_head_is_not_overtaken() -> None:
    """Small requests queued behind a large one wait for it instead of starving it."""
    limiter = RateLimiter(RateLimit(tokens_per_minute=6_000, estimate_output=False))
    order: list[str] = []

    async def request(name: str, tokens: int) -> None:
        await limiter.acquire(tokens)
        order.append(name)

    await limiter.acquire(100)  # the cell starts empty
    async with anyio.create_task_group() as tg:
        tg.start_soon(request, "big", 2_000)
        await anyio.lowlevel.checkpoint()
        for n in range(5):
            tg.start_soon(request, f"small{n}", 10)
            await anyio.lowlevel.checkpoint()
    assert order == ["big", "small0", "small1", "small2", "small3", "small4"]


async def test_a_shared_cooldown_holds_every_worker_then_restarts_paced() -> None:
    """After one 429, 500 workers all wait for the reset, then go no faster than the limit."""
    limiter = RateLimiter(RateLimit(requests_per_minute=600))
    start = anyio.current_time()
    limiter.cooldown(30.0)
    times: list[float] = []

    async def worker() -> None:
        await limiter.acquire()
        times.append(anyio.current_time() - start)

    async with anyio.create_task_group() as tg:
        for _ in range(500):
            tg.start_soon(worker)
    assert min(times) >= 30.0
    # The next window after the reset holds no more than the limit's share: no herd.
    assert sum(1 for t in times if t < 30.0 + 10.0) <= 600 / 6 + 1
    stats = limiter.statistics()
    assert stats.cooldowns == 1
    assert stats.paused_for == 0.0


async def test_cooldown_takes_the_longest_and_ignores_hostile_values() -> None:
    """A shorter or invalid cooldown never shortens the pause in force."""
    limiter = RateLimiter(RateLimit())
    start = anyio.current_time()
    limiter.cooldown(20.0)
    limiter.cooldown(5.0)
    limiter.cooldown(-3.0)
    limiter.cooldown(math.nan)
    await limiter.acquire()
    assert anyio.current_time() - start == pytest.approx(20.0)
    assert limiter.statistics().cooldowns == 1


async def test_a_cancelled_waiter_leaves_the_queue_working() -> None:
    """Cancelling the head of the queue lets the next waiter through, with nothing charged."""
    limiter = RateLimiter(RateLimit(requests_per_minute=60))
    await limiter.acquire()
    got: list[str] = []

    async def waiter(name: str) -> None:
        await limiter.acquire()
        got.append(name)

    doomed = anyio.CancelScope()

    async def cancellable_first() -> None:
        with doomed:
            await waiter("first")

    async with anyio.create_task_group() as tg:
        tg.start_soon(cancellable_first)
        await anyio.lowlevel.checkpoint()
        tg.start_soon(waiter, "second")
        await anyio.sleep(0.5)
        doomed.cancel()
    assert got == ["second"]
    assert limiter.statistics().waiting == 0
    assert limiter.statistics().admitted == 2


async def test_limits_are_learned_from_headers_without_configuration() -> None:
    """With no limit configured, the server's announced limit paces requests."""
    limiter = RateLimiter(RateLimit())
    start = anyio.current_time()
    for _ in range(10):
        await limiter.acquire()
    assert anyio.current_time() == start  # nothing known yet: no pacing
    limiter.observe(RateLimitHeaders({"requests": LimitInfo(limit=60, remaining=0)}), 200)
    assert limiter.statistics().limits == {"requests": 60.0}
    for _ in range(5):
        await limiter.acquire()
    assert anyio.current_time() - start == pytest.approx(5.0)


async def test_a_429_with_a_spent_limit_starts_the_cooldown_from_headers() -> None:
    """A 429 whose headers show a limit at zero pauses everyone until that limit resets."""
    limiter = RateLimiter(RateLimit())
    start = anyio.current_time()
    limiter.observe(
        RateLimitHeaders({"tokens": LimitInfo(limit=1000, remaining=0, reset=12.0)}), 429
    )
    await limiter.acquire(10, 10)
    assert anyio.current_time() - start >= 12.0
    assert limiter.statistics().cooldowns == 1


async def test_observe_does_nothing_when_learning_is_off() -> None:
    """With learn_from_headers=False the limiter ignores the server entirely."""
    limiter = RateLimiter(RateLimit(learn_from_headers=False))
    limiter.observe(RateLimitHeaders({"requests": LimitInfo(limit=1, reset=540.0)}), 429)
    assert limiter.statistics().limits == {}
    assert limiter.statistics().learned == {}


async def test_settling_a_refund_wakes_the_waiting_head() -> None:
    """A refund frees capacity at once: the waiter behind it does not sleep its old wait."""
    limiter = RateLimiter(RateLimit(tokens_per_minute=6_000, estimate_output=False))
    start = anyio.current_time()
    first = await limiter.acquire(50, 50)  # the whole capacity of 100 tokens
    done = anyio.Event()

    async def second() -> None:
        await limiter.acquire(50, 50)
        done.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(second)
        await anyio.sleep(0.1)
        limiter.settle(first, 5, 5)  # it only used 10 of its 100
        await done.wait()
    assert anyio.current_time() - start < 0.2
    limiter.settle(first, 1_000, 1_000)  # a second settle changes nothing
    assert first.settled


def ticking_clock() -> Callable[[], float]:
    """Return a clock that moves on by a microsecond at every read, as a real one does."""
    reads = itertools.count()

    def clock() -> float:
        return anyio.current_time() + next(reads) * 1e-6

    return clock


@pytest.mark.parametrize(
    ("estimate_output", "overfills"), [(True, True), (False, False)], ids=["estimate", "worst-case"]
)
async def test_a_refund_at_a_nearly_full_cell_is_spent_by_the_head_when_estimating_output(
    estimate_output: bool, overfills: bool
) -> None:
    """A refund landing on a nearly full cell lets the queue's head in at once and, with
    estimate_output on, what the head leaves of it stays available (on a clock that never reads
    the same instant twice); with it off, refunds stay capped at a full cell."""
    limiter = RateLimiter(
        RateLimit(tokens_per_minute=6_000, estimate_output=estimate_output),
        clock=ticking_clock(),
    )
    first = await limiter.acquire(50, 50)  # the whole capacity: 100 tokens in a second
    admitted = anyio.Event()

    async def head() -> None:
        await limiter.acquire(50, 50)
        admitted.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(head)
        await anyio.sleep(0.9)  # 90 tokens back: the head still needs 10 more
        assert not admitted.is_set()
        limiter.settle(first, 5, 5)  # 90 of the 100 refunded: 180 for an instant
        await admitted.wait()
    # Overfilled, about 80 are left after the head's 100; capped at a full cell, none.
    assert (limiter.acquire_nowait(35, 35) is not None) is overfills


async def test_a_head_admitted_by_a_refund_but_cancelled_gives_its_reservation_back() -> None:
    """A waiter cancelled in the instant a settle admitted it returns what it was granted."""
    limiter = RateLimiter(RateLimit(tokens_per_minute=6_000), clock=ticking_clock())
    first = await limiter.acquire(50, 50)
    scope = anyio.CancelScope()

    async def head() -> None:
        with scope:
            await limiter.acquire(50, 50)
        assert scope.cancelled_caught

    async with anyio.create_task_group() as tg:
        tg.start_soon(head)
        await anyio.sleep(0.9)
        # Cancelled, then admitted by the refund before it runs again.
        scope.cancel()
        limiter.settle(first, 5, 5)
    assert limiter.statistics().waiting == 0
    # The head's 100 went back: the whole capacity is free again.
    assert limiter.acquire_nowait(50, 50) is not None


async def test_statistics_and_repr_describe_the_limiter() -> None:
    """The snapshot and the repr show the limits in force and the counters."""
    limiter = RateLimiter(RateLimit(requests_per_minute=60, tokens_per_minute=10_000))
    permit = await limiter.acquire(10, 100)
    stats = limiter.statistics()
    assert stats.limits == {"requests": 60.0, "tokens": 10_000.0}
    assert stats.admitted == 1
    assert stats.output_ratio == 1.0
    assert "requests=60/min" in repr(limiter)
    assert "tokens=110" in repr(permit)
    assert not permit.settled


async def test_a_lone_refusal_pauses_nobody_and_several_distinct_ones_pause_everyone() -> None:
    """One 429 (or one request refused again and again) admits the next at once; four pause."""
    limiter = RateLimiter(RateLimit(pause_after_refusals=4))
    start = anyio.current_time()
    for _ in range(3):
        assert not limiter.refused(await limiter.acquire(), 30.0, "same")
    for _ in range(3):
        await limiter.acquire()
    assert anyio.current_time() == start
    assert limiter.statistics().cooldowns == 0
    paused = [limiter.refused(await limiter.acquire(), 30.0, key) for key in ("a", "b", "c")]
    assert paused == [False, False, True]  # "same", "a", "b", "c": four distinct requests
    await limiter.acquire()
    assert anyio.current_time() - start == pytest.approx(30.0)
    stats = limiter.statistics()
    assert stats.cooldowns == 1
    assert stats.refused == 6


async def test_refusals_diluted_by_answers_or_too_old_never_pause() -> None:
    """Refusals below half of the latest answers, or older than the window, do not pause."""
    limiter = RateLimiter(RateLimit(pause_after_refusals=3, refusal_window=5.0))
    for n in range(12):
        permit = await limiter.acquire()
        if n % 3 == 0:
            assert not limiter.refused(permit, 1.0, f"r{n}")
        else:
            limiter.settle(permit, 1, 1)
    for key in ("x", "y"):
        assert not limiter.refused(await limiter.acquire(), 1.0, key)
        await anyio.sleep(6.0)
    assert not limiter.refused(await limiter.acquire(), 1.0, "z")
    assert limiter.statistics().cooldowns == 0


async def test_admit_fails_at_once_when_a_pause_outlasts_the_deadline() -> None:
    """A pause past a waiter's deadline (or past max_pause) is a rate_limited verdict, unsent."""
    limiter = RateLimiter(RateLimit(), max_pause=120.0)
    start = anyio.current_time()
    limiter.cooldown(60.0)
    verdict = await limiter.admit(deadline=start + 30.0)
    assert isinstance(verdict, ErrorInfo)
    assert verdict.kind is ErrorKind.RATE_LIMITED
    assert verdict.retry_after_s == pytest.approx(60.0)
    assert anyio.current_time() == start
    permit = await limiter.admit(deadline=start + 90.0)  # within its deadline: it waits
    assert isinstance(permit, Permit)
    assert anyio.current_time() - start == pytest.approx(60.0)
    limiter.cooldown(600.0)
    verdict = await limiter.admit(deadline=math.inf)
    assert isinstance(verdict, ErrorInfo)
    assert "max_retry_after" in verdict.message
    assert limiter.statistics().refused_at_once == 2


async def test_a_pause_that_starts_while_requests_wait_fails_those_it_outlasts() -> None:
    """Queued waiters whose deadline a new pause outlasts fail at once; the others keep waiting."""
    limiter = RateLimiter(RateLimit(requests_per_minute=60))
    start = anyio.current_time()
    await limiter.acquire()
    outcomes: dict[str, object] = {}

    async def waiter(name: str, deadline: float) -> None:
        outcomes[name] = (await limiter.admit(deadline=start + deadline), anyio.current_time())

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter, "short", 20.0)
        await anyio.lowlevel.checkpoint()
        tg.start_soon(waiter, "long", 100.0)
        await anyio.sleep(0.5)
        limiter.cooldown(50.0)
    short, short_at = outcomes["short"]  # type: ignore[misc]
    long, long_at = outcomes["long"]  # type: ignore[misc]
    assert isinstance(short, ErrorInfo)
    assert short_at == pytest.approx(start + 0.5)
    assert isinstance(long, Permit)
    assert long_at >= start + 50.5


async def test_a_learned_limit_smaller_than_a_request_fails_it_and_is_reported() -> None:
    """A learned limit below one request's cost is a verdict naming the header, not a wait."""
    limiter = RateLimiter(RateLimit(estimate_output=False))
    limiter.observe(
        read_rate_limits(httpx2.Headers({"anthropic-ratelimit-tokens-limit": "50"})), 200
    )
    await limiter.acquire(10, 10)
    verdict = await limiter.admit(100, 100)
    assert isinstance(verdict, ErrorInfo)
    assert "anthropic-ratelimit-tokens-limit" in verdict.message
    assert verdict.retry_after_s is None
    assert limiter.statistics().too_small == {"tokens": 50.0}
    assert isinstance(await limiter.admit(10, 10), Permit)  # small ones still go, paced
    configured = RateLimiter(RateLimit(tokens_per_minute=50, estimate_output=False))
    assert isinstance(await configured.admit(100, 100), Permit)  # the user's own limit: waits
