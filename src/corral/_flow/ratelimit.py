"""Client-side rate limiting: a sans-IO GCRA core, its anyio adapter, and header learning.

The core is the Generic Cell Rate Algorithm, one cell per limit (requests, tokens, input tokens,
output tokens). Each cell keeps a single number, the *theoretical arrival time* (TAT): the moment
at which the cell would be back to full capacity. A request of cost ``c`` conforms when admitting
it would not push the TAT more than the cell's tolerance past now.

Two guarantees follow, and the property tests check both:

- **No window overflows.** In every half-open window of ``W`` seconds, the cost admitted is
  less than ``rate * W + capacity``. The sustained rate is set to
  ``(limit - capacity + 1) / 60`` so that, costs being whole units, any 60-second window admits
  at most ``limit``: a server counting per minute (fixed window, sliding window or token
  bucket) never sees more than its limit.
- **Nobody starves.** The anyio adapter serves waiters in arrival order: the head of the queue
  sleeps until the core admits it, everyone else waits behind it, and the head is admitted
  within ``tolerance + cost / rate`` seconds. A request larger than the burst capacity grows
  the capacity to fit it (up to half the limit, lowering the sustained rate by as much); one
  larger still waits until the cell has been idle long enough to cover its excess, so it too
  is admitted in finite time.

Settling a reservation (`_GCRA.settle`) moves the TAT by the difference between the real and
the reserved cost. A refund returns capacity at once, which is what keeps the long-run rate at
the limit when reservations (a prompt estimate plus the expected share of ``max_tokens``)
overstate the real usage; the price is that the real cost admitted in a window may exceed the
bound above by the refunds of earlier requests settled during that window (also
property-tested). A refund that overfills the cell is not capped at once: the request at the
head of the queue is admitted in the same instant (by `RateLimiter.settle` itself, so that no
clock tick passes) and may spend it; the next instant the cell is capped again.

Every time is a float passed in by the caller (``now``): the core never reads a clock, which is
what makes it testable without a loop and lets trio's ``MockClock`` drive the adapter.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, Final

import anyio
import anyio.lowlevel
import attrs

from .._errors import ConfigurationError, ConfigurationTypeError, check_number, check_type
from .._models import LimitInfo, RateLimitHeaders

__all__ = ["RateLimit", "RateLimiterStatistics"]

#: The limits corral paces, in the order they are reported.
LIMIT_NAMES: Final = ("requests", "tokens", "input_tokens", "output_tokens")

# Admission tolerates this much float error, in seconds, so that a waiter who slept exactly the
# wait it was told is admitted on waking instead of being told to wait a few ulps more.
_EPSILON: Final = 1e-9

# The window bound is tight: the (limit + 1)-th unit is due exactly 60 seconds after the first.
# Pacing this much slower keeps that unit microseconds past the window, so that float error (in
# the TAT's sums and in the clock) and `_EPSILON` can never pull it inside.
_RATE_MARGIN: Final = 1e-7

# A hostile or broken cooldown is clamped to this, never trusted blindly.
_MAX_RESET_S: Final = 86_400.0


def default_token_counter(text: str) -> int:
    """Estimate the tokens in `text` as one per four characters, rounded up.

    Args:
        text: The prompt text.
    """
    return -(-len(text) // 4)


def _optional_rate(inst: object, attribute: attrs.Attribute[Any], value: float | None) -> None:
    check_number(value, f"RateLimit.{attribute.name}", minimum=0, above=True, optional=True)


def _check_burst(inst: object, attribute: attrs.Attribute[float], value: float) -> None:
    check_number(value, "RateLimit.burst", minimum=0, above=True)
    if not value < 60:
        raise ConfigurationError(f"RateLimit.burst must be > 0 and < 60 seconds, got {value!r}")


def _check_flag(inst: object, attribute: attrs.Attribute[bool], value: object) -> None:
    check_type(value, f"RateLimit.{attribute.name}", bool, "True or False")


def _check_counter(inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and not callable(value):
        raise ConfigurationTypeError(
            f"RateLimit.token_counter must be a function of the prompt text or None, "
            f"got {type(value).__name__}"
        )


@attrs.frozen
class RateLimit:
    """How fast corral may send: requests and tokens per minute, paced client-side.

    Each limit is paced by its own GCRA cell. A request reserves one request and its estimated
    tokens (prompt estimate plus ``max_tokens``) before it is sent; the reservation is settled
    with the real usage afterwards, so the long-run token rate stays at the limit. Retries take
    permits again.

    ``burst`` is in **seconds of capacity**: after an idle spell, up to ``burst`` seconds' worth
    of each limit (and never less than one request or one token) may go out at once. So that
    no 60-second window ever holds more than the limit, the sustained rate is lowered by that
    capacity: ``(limit - capacity + 1) / 60`` per second, about 98.3% of the limit with the
    default of one second, and exactly the limit when the capacity is one unit.

    With ``learn_from_headers`` (the default), the limits the server announces in
    ``x-ratelimit-*`` (OpenAI and compatibles) and ``anthropic-ratelimit-*`` headers are paced
    too, even when none is configured here; where both exist the lower one wins.

    Args:
        requests_per_minute: The most requests per minute, or None for no client-side limit.
        tokens_per_minute: The most tokens (input plus output) per minute, or None.
        input_tokens_per_minute: The most input tokens per minute (Anthropic's ITPM), or None.
        output_tokens_per_minute: The most output tokens per minute (Anthropic's OTPM), or None.
        burst: Seconds of each limit that may be spent at once after an idle spell.
        learn_from_headers: Whether to pace by the limits and remaining quota the server reports.
        estimate_output: Whether to reserve ``max_tokens`` scaled by the output ratio seen so
            far (a cautious running estimate of real output over ``max_tokens``, 1.0 until
            eight requests have settled) instead of the whole ``max_tokens``, and to let the
            head waiter spend at once a refund that overfills a cell. Reserving the whole worst
            case holds tokens that are never used for as long as a request runs, and refunds
            landing on a full cell are lost, which can keep the real token rate far below the
            limit.
        token_counter: Counts the tokens of a prompt text; defaults to `default_token_counter`.
    """

    requests_per_minute: float | None = attrs.field(default=None, validator=_optional_rate)
    tokens_per_minute: float | None = attrs.field(default=None, validator=_optional_rate)
    input_tokens_per_minute: float | None = attrs.field(default=None, validator=_optional_rate)
    output_tokens_per_minute: float | None = attrs.field(default=None, validator=_optional_rate)
    burst: float = attrs.field(default=1.0, validator=_check_burst)
    learn_from_headers: bool = attrs.field(default=True, validator=_check_flag)
    estimate_output: bool = attrs.field(default=True, validator=_check_flag)
    token_counter: Callable[[str], int] | None = attrs.field(
        default=None, eq=False, validator=_check_counter
    )

    def limits(self) -> dict[str, float]:
        """Return the configured per-minute limits by name, leaving out the unset ones."""
        values = (
            self.requests_per_minute,
            self.tokens_per_minute,
            self.input_tokens_per_minute,
            self.output_tokens_per_minute,
        )
        return {name: float(v) for name, v in zip(LIMIT_NAMES, values, strict=True) if v}

    def count_tokens(self, text: str) -> int:
        """Return the token estimate of a prompt text with the configured counter.

        Args:
            text: The prompt text (all messages, concatenated).
        """
        counter = self.token_counter or default_token_counter
        return max(int(counter(text)), 0)


class _GCRA:
    """One GCRA cell: a per-minute limit with a burst capacity, driven by an injected clock.

    Costs are in the limit's unit (requests or tokens). The cell's state is its theoretical
    arrival time ``tat``; ``-inf`` means full.

    The capacity is ``burst`` seconds of the limit, at least one unit, and grows to the largest
    single cost seen (up to half the limit), so that a request bigger than the burst still fits
    the window bound. Growing it lowers the sustained rate by as much.
    """

    __slots__ = (
        "_capacity",
        "_interval",
        "_largest",
        "_max_capacity",
        "_min_capacity",
        "_surplus_at",
        "_tat",
        "_tolerance",
        "burst",
        "per_minute",
    )

    def __init__(self, per_minute: float, burst: float) -> None:
        self.burst = burst
        self._tat = -math.inf
        # The instant at which the cell is fuller than its capacity (see `settle`), if any.
        self._surplus_at = -math.inf
        self.per_minute = per_minute
        self._min_capacity = 1.0
        self._max_capacity = 1.0
        self._capacity = 1.0
        self._interval = 1.0
        self._tolerance = 1.0
        self._largest = 0.0
        self._configure(per_minute)

    def _configure(self, per_minute: float) -> None:
        self.per_minute = per_minute
        # A cell never holds less than one unit: a cost of one request must always fit.
        self._min_capacity = max(per_minute * self.burst / 60.0, 1.0)
        self._max_capacity = max(per_minute / 2.0, self._min_capacity)
        capacity = min(max(self._min_capacity, self._largest), self._max_capacity)
        # Costs are whole units and servers count in half-open windows, where GCRA admits
        # strictly less than rate * W + capacity. With this rate that is at most the limit in
        # any 60-second window. The rate stays > 0 because the capacity is at most half the
        # limit (or one unit).
        sustained = (per_minute - capacity + 1.0) / (60.0 * (1.0 + _RATE_MARGIN))
        self._capacity = capacity
        self._interval = 1.0 / sustained
        self._tolerance = capacity * self._interval

    def _reconfigure(self, now: float, per_minute: float) -> None:
        # Keep the units available now (capped at the new capacity): a larger capacity fills
        # up at the new rate instead of granting fresh credit at once, which would let the
        # window that spans the change hold more than the limit.
        level = min(self.available(now), self._capacity)
        self._configure(per_minute)
        self._tat = now + self._tolerance - min(level, self._capacity) * self._interval

    @property
    def capacity(self) -> float:
        """The most units the cell admits at once."""
        return self._capacity

    @property
    def rate(self) -> float:
        """The sustained rate in units per second."""
        return 1.0 / self._interval

    def _start(self, now: float) -> float:
        # Where a charge at `now` starts from: the TAT, or now for a cell that is full. Only at
        # the instant of a refund may it start from the past (a cell fuller than its capacity).
        tat = self._tat
        return tat if tat > now or now == self._surplus_at else now

    def _base(self, now: float, cost: float) -> float:
        # A cost up to the capacity starts from the TAT or now, whichever is later. A cost
        # beyond even the largest capacity must also find the cell idle long enough to have
        # banked its excess, so it is admitted in finite time (never starved) and leaves the
        # cell full of debt; such a request can overflow one window by its excess.
        excess = max(cost - self._capacity, 0.0)
        return max(self._tat, now - excess * self._interval)

    def wait_time(self, now: float, cost: float) -> float:
        """Return how long a request of `cost` must wait, 0.0 if it conforms now."""
        if cost <= 0:
            return 0.0
        if cost > self._capacity:
            if self._capacity < self._max_capacity:
                self._largest = cost
                self._reconfigure(now, self.per_minute)
            base = self._base(now, cost)
        else:
            # `_start`, inlined: this runs for every cell of every admission.
            tat = self._tat
            base = tat if tat > now or now == self._surplus_at else now
        wait = base + cost * self._interval - self._tolerance - now
        return wait if wait > _EPSILON else 0.0

    def commit(self, now: float, cost: float) -> None:
        """Charge `cost` to the cell; call only after `wait_time` returned 0."""
        if cost > 0:
            if cost > self._capacity:
                base = self._base(now, cost)
            else:
                tat = self._tat
                base = tat if tat > now or now == self._surplus_at else now
            self._tat = base + cost * self._interval

    def try_acquire(self, now: float, cost: float) -> float:
        """Admit a request of `cost` and return 0.0, or return the wait and change nothing."""
        wait = self.wait_time(now, cost)
        if wait == 0.0:
            self.commit(now, cost)
        return wait

    def settle(self, now: float, reserved: float, actual: float, overfill: bool = True) -> None:
        """Correct a reservation: refund what was not used, or charge what was used on top.

        With `overfill`, a refund that overfills the cell is kept for this instant only: a
        request admitted at the same `now` may spend it, and from the next instant on the cell
        holds its capacity at most again. Without, the cell keeps its capacity at most.
        """
        delta = actual - reserved
        if delta == 0 or not math.isfinite(delta):
            return
        if self._tat == -math.inf:
            if delta < 0:
                return
            self._tat = now
        if delta > 0 or not overfill:
            # Charged on the TAT itself, as if at admission: idle time since absorbs it. A
            # refund that moves the TAT into the past leaves a full cell (see `_start`).
            self._tat += delta * self._interval
            return
        # Capping a refund at a full cell would waste it whenever it lands on a cell that is
        # nearly full, which is where a paced cell sits: its head waiter needs nearly the
        # whole capacity. With the capacity about one reservation, that lost 5-8% of the limit
        # (measured at 3,000 TPM). So the overflow is kept for this instant, for the head
        # waiter that the refund lets in now. Spent at the instant of the refund, it stays
        # inside the bound that refunds already loosen (the refunds of earlier requests
        # settled in the window); idle time is never banked, because the refund starts from a
        # full cell, not a stale TAT.
        self._tat = self._start(now) + delta * self._interval
        self._surplus_at = now

    def set_rate(self, now: float, per_minute: float) -> None:
        """Change the limit, keeping the units available now (at most the new capacity)."""
        if per_minute != self.per_minute:
            self._reconfigure(now, per_minute)

    def available(self, now: float) -> float:
        """Return the units that could be admitted at once right now (negative in debt)."""
        return (self._tolerance - (self._start(now) - now)) / self._interval

    def cap_available(self, now: float, remaining: float) -> None:
        """Lower the units available now to `remaining`, never raise them."""
        if remaining < self.available(now):
            self._tat = now + self._tolerance - max(remaining, 0.0) * self._interval

    def empty_until(self, until: float) -> None:
        """Make the cell empty at `until`, so admission restarts paced rather than in a burst."""
        self._tat = max(self._tat, until + self._tolerance)

    def __repr__(self) -> str:
        return (
            f"<_GCRA per_minute={self.per_minute!r} capacity={self._capacity!r} tat={self._tat!r}>"
        )


class _OutputRatio:
    """A cautious running estimate of real output tokens over ``max_tokens``.

    The estimate is the running mean plus two standard deviations, capped at 1, and stays at
    1 (the worst case) until `WARMUP` samples have been seen.
    """

    __slots__ = ("_mean", "_square", "samples")

    WARMUP: Final = 8
    _ALPHA: Final = 0.05

    def __init__(self) -> None:
        self._mean = 1.0
        self._square = 1.0
        self.samples = 0

    def add(self, ratio: float) -> None:
        """Add one settled request's real output over its ``max_tokens``."""
        if not math.isfinite(ratio):
            return
        ratio = min(max(ratio, 0.0), 1.0)
        self.samples += 1
        # A plain average until the moving one has enough history to mean something.
        alpha = max(1.0 / self.samples, self._ALPHA)
        self._mean += alpha * (ratio - self._mean)
        self._square += alpha * (ratio * ratio - self._square)

    @property
    def value(self) -> float:
        """The ratio to reserve with."""
        if self.samples < self.WARMUP:
            return 1.0
        spread = math.sqrt(max(self._square - self._mean * self._mean, 0.0))
        return min(self._mean + 2.0 * spread, 1.0)


class _RateLimiterCore:
    """Every GCRA cell of one client, the shared cooldown, and what the server taught it.

    Sans-IO: every method takes ``now``.
    """

    __slots__ = (
        "_burst",
        "_cells",
        "_configured",
        "_estimate_output",
        "_learn",
        "learned",
        "output_ratio",
        "paused_until",
    )

    def __init__(self, policy: RateLimit) -> None:
        self._burst = policy.burst
        self._learn = policy.learn_from_headers
        self._estimate_output = policy.estimate_output
        self._configured = policy.limits()
        self._cells = {name: _GCRA(rate, policy.burst) for name, rate in self._configured.items()}
        self.learned: dict[str, LimitInfo] = {}
        self.paused_until = -math.inf
        self.output_ratio = _OutputRatio()

    def costs(self, input_tokens: int, max_output_tokens: int) -> dict[str, float]:
        """Return what to reserve for a request, by limit name."""
        output = float(max_output_tokens)
        if self._estimate_output:
            output = float(math.ceil(output * self.output_ratio.value))
        return {
            "requests": 1.0,
            "tokens": input_tokens + output,
            "input_tokens": float(input_tokens),
            "output_tokens": output,
        }

    def limits(self) -> dict[str, float]:
        """Return the per-minute limits in force, by name."""
        return {name: cell.per_minute for name, cell in self._cells.items()}

    def try_acquire(self, now: float, costs: Mapping[str, float]) -> float:
        """Admit a request costing `costs` and return 0.0, or return the wait and change nothing."""
        wait = self.paused_until - now
        cells = self._cells.items()
        for name, cell in cells:
            cell_wait = cell.wait_time(now, costs.get(name, 0.0))
            if cell_wait > wait:
                wait = cell_wait
        if wait > _EPSILON:
            return wait
        for name, cell in cells:
            cell.commit(now, costs.get(name, 0.0))
        return 0.0

    def settle(
        self,
        now: float,
        reserved: Mapping[str, float],
        actual: Mapping[str, float],
        max_output_tokens: int = 0,
    ) -> None:
        """Correct the reservation of one admitted request with what it really cost."""
        if max_output_tokens > 0 and "output_tokens" in actual:
            self.output_ratio.add(actual["output_tokens"] / max_output_tokens)
        for name, cell in self._cells.items():
            if name in actual:
                cell.settle(now, reserved.get(name, 0.0), actual[name], self._estimate_output)

    def release(self, now: float, reserved: Mapping[str, float]) -> None:
        """Give back a reservation that was never used, as if its request cost nothing."""
        for name, cell in self._cells.items():
            cell.settle(now, reserved.get(name, 0.0), 0.0, overfill=False)

    def pause(self, until: float) -> bool:
        """Stop every admission until `until`; return whether that extended the pause."""
        if until <= self.paused_until:
            return False
        self.paused_until = until
        for cell in self._cells.values():
            cell.empty_until(until)
        return True

    def learn(self, now: float, info: RateLimitHeaders, status: int) -> float | None:
        """Apply what a response said; return a cooldown end time if the response asks for one."""
        if not self._learn:
            return None
        cooldown: float | None = None
        for name, limit in info.limits.items():
            previous = self.learned.get(name, LimitInfo())
            self.learned[name] = LimitInfo(
                limit=limit.limit if limit.limit is not None else previous.limit,
                remaining=limit.remaining,
                reset=limit.reset,
            )
            if limit.limit is not None:
                configured = self._configured.get(name)
                per_minute = limit.limit if configured is None else min(configured, limit.limit)
                cell = self._cells.get(name)
                if cell is None:
                    self._cells[name] = cell = _GCRA(per_minute, self._burst)
                else:
                    cell.set_rate(now, per_minute)
            cell = self._cells.get(name)
            if cell is not None and limit.remaining is not None:
                cell.cap_available(now, limit.remaining)
            if status == 429 and limit.remaining == 0 and limit.reset is not None:
                # This limit is the one that is spent; the server said when it comes back.
                end = now + limit.reset
                cooldown = end if cooldown is None else max(cooldown, end)
        return cooldown


class _Head:
    """The request at the head of a `RateLimiter`'s queue, and the costs a settle admitted it at."""

    __slots__ = ("granted", "input_tokens", "max_output_tokens")

    def __init__(self, input_tokens: int, max_output_tokens: int) -> None:
        self.input_tokens = input_tokens
        self.max_output_tokens = max_output_tokens
        self.granted: Mapping[str, float] | None = None


class Permit:
    """An admission by a `RateLimiter`: what it reserved, to be settled after the response.

    Args:
        reserved: The reserved cost by limit name.
        waited: Seconds the request waited for admission.
        max_output_tokens: The request's output limit, to learn the output ratio from.
    """

    __slots__ = ("_settled", "max_output_tokens", "reserved", "waited")

    def __init__(
        self, reserved: Mapping[str, float], waited: float, max_output_tokens: int = 0
    ) -> None:
        self.reserved = reserved
        self.waited = waited
        self.max_output_tokens = max_output_tokens
        self._settled = False

    @property
    def settled(self) -> bool:
        """Whether the permit was settled already."""
        return self._settled

    def __repr__(self) -> str:
        costs = ", ".join(f"{k}={v:g}" for k, v in self.reserved.items())
        return f"<Permit {costs} waited={self.waited:.3f}s settled={self._settled}>"


@attrs.frozen
class RateLimiterStatistics:
    """A snapshot of a `RateLimiter`.

    Args:
        admitted: Requests admitted so far.
        delayed: Admissions that had to wait.
        wait_seconds: Total seconds spent waiting for admission.
        waiting: Requests waiting right now.
        cooldowns: Shared cooldowns started (429s and exhausted limits).
        paused_for: Seconds left of the current cooldown, 0 when none.
        limits: The per-minute limits in force, by name (configured or learned, the lower).
        learned: What the server last said about each limit.
        output_ratio: The share of ``max_tokens`` reserved for output (1.0: all of it).
    """

    admitted: int
    delayed: int
    wait_seconds: float
    waiting: int
    cooldowns: int
    paused_for: float
    limits: Mapping[str, float]
    learned: Mapping[str, LimitInfo]
    output_ratio: float


class RateLimiter:
    """Pace requests by a `RateLimit`: fair (FIFO) waits, shared cooldowns, header learning.

    The client calls, per HTTP attempt:

    1. ``permit = await limiter.acquire(input_tokens, max_tokens)`` before sending;
    2. ``limiter.observe(read_rate_limits(response.headers), response.status_code)`` on every
       response;
    3. ``limiter.cooldown(seconds)`` when a 429 (or 503/529 with a hint) asks to wait;
    4. ``limiter.settle(permit, actual_input, actual_output)`` once the usage is known.

    Args:
        policy: The limits to pace by.
        clock: Returns the current time in seconds; defaults to `anyio.current_time`.
    """

    __slots__ = (
        "_admitted",
        "_changed",
        "_clock",
        "_cooldowns",
        "_core",
        "_delayed",
        "_head",
        "_lock",
        "_policy",
        "_wait_seconds",
        "_waiting",
    )

    def __init__(self, policy: RateLimit, *, clock: Callable[[], float] = anyio.current_time):
        self._policy = policy
        self._core = _RateLimiterCore(policy)
        self._clock = clock
        self._lock = anyio.Lock()
        self._changed: anyio.Event | None = None
        self._head: _Head | None = None
        self._admitted = 0
        self._delayed = 0
        self._wait_seconds = 0.0
        self._waiting = 0
        self._cooldowns = 0

    @property
    def policy(self) -> RateLimit:
        """The policy this limiter paces by."""
        return self._policy

    async def acquire(self, input_tokens: int = 0, max_output_tokens: int = 0) -> Permit:
        """Wait until one request of this size may be sent, and reserve it.

        Waiters are admitted in arrival order. Cancelling a waiter leaves the limiter as it was.

        Args:
            input_tokens: The estimated prompt tokens (see `RateLimit.count_tokens`).
            max_output_tokens: The most output tokens the request may produce (its
                ``max_tokens``), 0 if unknown.
        """
        input_tokens = max(int(input_tokens), 0)
        max_output_tokens = max(int(max_output_tokens), 0)
        await anyio.lowlevel.checkpoint_if_cancelled()
        permit = self.acquire_nowait(input_tokens, max_output_tokens)
        if permit is not None:
            return permit
        start = self._clock()
        self._waiting += 1
        try:
            async with self._lock:
                head = self._head = _Head(input_tokens, max_output_tokens)
                costs: Mapping[str, float]
                try:
                    while True:
                        if head.granted is not None:
                            costs = head.granted
                            break
                        now = self._clock()
                        # Priced at admission, not on arrival: the output ratio learned while
                        # this request queued applies to it (else a queue that filled before the
                        # first answers settled would all reserve the whole max_tokens).
                        costs = self._core.costs(input_tokens, max_output_tokens)
                        wait = self._core.try_acquire(now, costs)
                        if wait == 0.0:
                            break
                        if self._changed is None:
                            self._changed = anyio.Event()
                        with anyio.move_on_after(wait):
                            await self._changed.wait()
                except BaseException:
                    if head.granted is not None:
                        # Admitted by a settle but cancelled before it could go: give it back.
                        self._core.release(self._clock(), head.granted)
                    raise
                finally:
                    self._head = None
        finally:
            self._waiting -= 1
        waited = max(self._clock() - start, 0.0)
        self._admitted += 1
        if waited > 0:
            self._delayed += 1
            self._wait_seconds += waited
        return Permit(costs, waited, max_output_tokens)

    def acquire_nowait(
        self, input_tokens: int = 0, max_output_tokens: int = 0, now: float | None = None
    ) -> Permit | None:
        """Reserve one request of this size if it may be sent at once; return None if not.

        Nobody queued and capacity free: the request goes straight through, as `acquire`
        would let it. Otherwise nothing is reserved, and the caller waits with `acquire`.

        Args:
            input_tokens: The estimated prompt tokens (see `RateLimit.count_tokens`).
            max_output_tokens: The most output tokens the request may produce, 0 if unknown.
            now: The current time on the limiter's clock, when the caller has just read it;
                None reads the clock.
        """
        if self._waiting:
            return None
        input_tokens = max(int(input_tokens), 0)
        max_output_tokens = max(int(max_output_tokens), 0)
        costs = self._core.costs(input_tokens, max_output_tokens)
        if self._core.try_acquire(self._clock() if now is None else now, costs) != 0.0:
            return None
        self._admitted += 1
        return Permit(costs, 0.0, max_output_tokens)

    def _wake(self) -> None:
        # The head of the queue re-checks after anything that may have freed capacity.
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    def settle(
        self, permit: Permit, input_tokens: int | None, output_tokens: int | None = None
    ) -> None:
        """Replace a permit's token reservation with what the request really used.

        Settling twice does nothing. Pass None for both counts to keep the reservation as
        charged (for example when the usage is unknown after a timeout).

        Args:
            permit: The permit from `acquire`.
            input_tokens: The prompt tokens the provider reported (cached included), or None.
            output_tokens: The output tokens the provider reported, or None.
        """
        if permit._settled:
            return
        permit._settled = True
        if input_tokens is None and output_tokens is None:
            return
        used_in = max(int(input_tokens or 0), 0)
        used_out = max(int(output_tokens or 0), 0)
        actual = {
            "tokens": float(used_in + used_out),
            "input_tokens": float(used_in),
            "output_tokens": float(used_out),
        }
        now = self._clock()
        self._core.settle(now, permit.reserved, actual, permit.max_output_tokens)
        head = self._head
        if head is not None and head.granted is None:
            # Admit the head here, at the instant of the refund: only then may it spend a
            # refund that overfills a cell (see `_GCRA.settle`). Waking it to look for itself
            # would come a moment later, on a real clock, and find the overflow gone.
            costs = self._core.costs(head.input_tokens, head.max_output_tokens)
            if self._core.try_acquire(now, costs) == 0.0:
                head.granted = costs
        self._wake()

    def observe(self, info: RateLimitHeaders, status: int) -> None:
        """Learn the server's limits and remaining quota from one response.

        Does nothing when the policy has ``learn_from_headers=False``. A 429 whose headers show
        a spent limit with a reset time starts a shared cooldown until that reset.

        Args:
            info: What the response's headers said (see ``corral.providers._headers``).
            status: The response status code.
        """
        if not info or not self._policy.learn_from_headers:
            return
        now = self._clock()
        until = self._core.learn(now, info, status)
        if until is not None and self._core.pause(until):
            self._cooldowns += 1
        self._wake()

    def cooldown(self, seconds: float) -> None:
        """Pause admission for every waiter for `seconds` from now (a shared cooldown).

        Called when a 429 arrives, with the server's retry hint: every worker waits for the
        same reset instead of retrying on its own, so there is no thundering herd. When the
        pause ends, admission restarts paced, not in a burst. A shorter cooldown than the one
        in force changes nothing. Hostile values (negative, NaN) are ignored; longer than a day
        is clamped to a day.

        Args:
            seconds: How long to pause.
        """
        if not isinstance(seconds, int | float) or not seconds > 0:
            return
        seconds = min(float(seconds), _MAX_RESET_S)
        if self._core.pause(self._clock() + seconds):
            self._cooldowns += 1

    def statistics(self) -> RateLimiterStatistics:
        """Return a snapshot of the limiter's counters and learned limits."""
        now = self._clock()
        return RateLimiterStatistics(
            admitted=self._admitted,
            delayed=self._delayed,
            wait_seconds=self._wait_seconds,
            waiting=self._waiting,
            cooldowns=self._cooldowns,
            paused_for=max(self._core.paused_until - now, 0.0),
            limits=self._core.limits(),
            learned=dict(self._core.learned),
            output_ratio=(self._core.output_ratio.value if self._policy.estimate_output else 1.0),
        )

    def __repr__(self) -> str:
        limits = ", ".join(f"{k}={v:g}/min" for k, v in self._core.limits().items())
        return (
            f"<RateLimiter {limits or 'unlimited'} admitted={self._admitted}"
            f" waiting={self._waiting}>"
        )
