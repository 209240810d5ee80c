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

import contextlib
import logging
import math
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, Final

import anyio
import anyio.lowlevel
import attrs

from .._errors import ConfigurationError, ConfigurationTypeError, check_number, check_type
from .._models import ErrorInfo, ErrorKind, LimitInfo, RateLimitHeaders

_log = logging.getLogger("corral")

__all__ = ["RateLimit", "RateLimiterStatistics"]

#: The limits corral paces, in the order they are reported.
LIMIT_NAMES: Final = ("requests", "tokens", "input_tokens", "output_tokens")
_UNITS: Final = {
    "requests": "requests",
    "tokens": "tokens",
    "input_tokens": "input tokens",
    "output_tokens": "output tokens",
}

# Admission tolerates this much float error, in seconds, so that a waiter who slept exactly the
# wait it was told is admitted on waking instead of being told to wait a few ulps more.
_EPSILON: Final = 1e-9

# The window bound is tight: the (limit + 1)-th unit is due exactly 60 seconds after the first.
# Pacing this much slower keeps that unit microseconds past the window, so that float error (in
# the TAT's sums and in the clock) and `_EPSILON` can never pull it inside.
_RATE_MARGIN: Final = 1e-7

# What `RateLimiter._acquire` enters when it has no waiter to cancel.
_NO_SCOPE: Final = contextlib.nullcontext()

# Hostile or broken headers are clamped to these, never trusted blindly.
_MAX_LIMIT: Final = 1e12
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


def _check_refusals(inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    check_number(
        value,
        "RateLimit.pause_after_refusals",
        minimum=1,
        maximum=10_000,
        integer=True,
        optional=True,
    )


def _check_window(inst: object, attribute: attrs.Attribute[float], value: float) -> None:
    check_number(value, "RateLimit.refusal_window", minimum=0, maximum=_MAX_RESET_S, above=True)


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
        pause_after_refusals: How many distinct requests must be refused (429) for the whole
            client to pause until the server's hint, the refusals being at least half of the
            latest ``2 * pause_after_refusals`` answers and none older than
            ``refusal_window``. None (the default) takes a quarter of the client's
            concurrency, at least 2 and at most 32. A refusal short of that delays only its
            own request (by its hint) and spends the burst credit of the known limits.
        refusal_window: Seconds after which a refusal no longer counts towards a pause.
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
    pause_after_refusals: int | None = attrs.field(default=None, validator=_check_refusals)
    refusal_window: float = attrs.field(default=10.0, validator=_check_window)

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
        "_learned_from",
        "learned",
        "output_ratio",
        "paused_until",
        "too_small",
    )

    def __init__(self, policy: RateLimit) -> None:
        self._burst = policy.burst
        self._learn = policy.learn_from_headers
        self._estimate_output = policy.estimate_output
        self._configured = policy.limits()
        self._cells = {name: _GCRA(rate, policy.burst) for name, rate in self._configured.items()}
        self.learned: dict[str, LimitInfo] = {}
        # The header each learned limit in force came from, where it binds (below the
        # configured one, or none configured): a request that needs more than a whole minute of
        # it is refused at once (`too_small_for`), naming that header.
        self._learned_from: dict[str, str] = {}
        # Learned limits found smaller than a request needed, by name: their per-minute value.
        self.too_small: dict[str, float] = {}
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
            wait = max(wait, cell_wait)
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

    def slow_down(self, now: float) -> None:
        """Spend the burst credit of every cell: admission goes on at the sustained pace only."""
        for cell in self._cells.values():
            cell.cap_available(now, 0.0)

    def too_small_for(self, costs: Mapping[str, float]) -> tuple[str, str, float, float] | None:
        """Return the learned limit a request needs more of than a whole minute holds, or None.

        The result is the limit's name, the header it was learned from, its per-minute value
        and what the request needs. Configured limits are never judged: they are the user's.
        """
        for name, header in self._learned_from.items():
            cost = costs.get(name, 0.0)
            per_minute = self._cells[name].per_minute
            if cost > per_minute:
                return name, header, per_minute, cost
        return None

    def learn(
        self,
        now: float,
        info: RateLimitHeaders,
        status: int,
        headers: Mapping[str, str] | None = None,
    ) -> float | None:
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
                if configured is None or limit.limit < configured:
                    self._learned_from[name] = _limit_header(headers, name)
                else:
                    self._learned_from.pop(name, None)
            cell = self._cells.get(name)
            if cell is not None and limit.remaining is not None:
                cell.cap_available(now, limit.remaining)
            if status == 429 and limit.remaining == 0 and limit.reset is not None:
                # This limit is the one that is spent; the server said when it comes back.
                end = now + limit.reset
                cooldown = end if cooldown is None else max(cooldown, end)
        return cooldown


def _limit_header(headers: Mapping[str, str] | None, name: str) -> str:
    """Return the name of the header that announced limit `name` (OpenAI's or Anthropic's)."""
    dashed = name.replace("_", "-")
    openai = f"x-ratelimit-limit-{dashed}"
    if headers is not None and (openai in headers or any(key.lower() == openai for key in headers)):
        return openai
    anthropic = f"anthropic-ratelimit-{dashed}-limit"
    if headers is None:
        # Parsed headers no longer say which API named the limit: name both spellings.
        return f"{openai} or {anthropic}"
    return anthropic


class _Refusals:
    """The evidence that a server's shared limit is spent: recent 429s among recent answers.

    The rule: the limit is spent when, among the latest ``2 * needed`` answers (every settled
    attempt, refused or not), at least ``needed`` distinct requests were refused, none of those
    refusals older than ``window`` seconds. So refusals must be at least half of what the
    server answered lately, from several requests: a server refusing a few percent of requests
    at random (shedding load) never trips it, one refusing nearly everything trips it within
    about ``needed`` answers.
    """

    __slots__ = ("_recent", "answers", "needed", "window")

    def __init__(self, needed: int, window: float) -> None:
        self.needed = needed
        self.window = window
        self.answers = 0
        # (time, request key, answer number) of each refusal still in the window.
        self._recent: deque[tuple[float, object, int]] = deque()

    def refused(self, now: float, key: object) -> bool:
        """Record a refusal, counted as an answer already; return whether the limit is spent."""
        recent = self._recent
        recent.append((now, object() if key is None else key, self.answers))
        oldest_time = now - self.window
        oldest_answer = self.answers - 2 * self.needed
        while recent and (recent[0][0] < oldest_time or recent[0][2] <= oldest_answer):
            recent.popleft()
        if len(recent) < self.needed:
            return False
        return len({key for _, key, _ in recent}) >= self.needed

    def __repr__(self) -> str:
        recent = len(self._recent)
        return f"<_Refusals needed={self.needed} window={self.window:g}s recent={recent}>"


class _Waiter:
    """A request queued for admission with a deadline, cancelled at once if a pause outlasts it."""

    __slots__ = ("deadline", "scope", "verdict")

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.scope = anyio.CancelScope()
        self.verdict: ErrorInfo | None = None

    def __repr__(self) -> str:
        return f"<_Waiter deadline={self.deadline!r} verdict={self.verdict!r}>"


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
        refused: 429s recorded (each refused attempt once).
        refused_at_once: Requests failed as ``rate_limited`` without being sent: a pause in
            force outlasted their deadline, or a learned limit was too small for them.
        too_small: Learned limits smaller than a request needed (the request failed at once),
            by name: the per-minute value the server announced.
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
    refused: int = 0
    refused_at_once: int = 0
    too_small: Mapping[str, float] = attrs.field(factory=dict)


class RateLimiter:
    """Pace requests by a `RateLimit`: fair (FIFO) waits, shared cooldowns, header learning.

    The client calls, per HTTP attempt:

    1. ``permit = await limiter.admit(input_tokens, max_tokens, deadline)`` before sending
       (an `ErrorInfo` instead of a permit: fail the request at once, unsent);
    2. ``limiter.observe(read_rate_limits(response.headers), response.status_code)`` on every
       response;
    3. ``limiter.refused(permit, retry_after_s, request_id)`` when a 429 refused it;
    4. ``limiter.settle(permit, actual_input, actual_output)`` otherwise, once the usage is
       known.

    The shared cooldown (a pause of every admission) starts only on evidence that the server's
    shared limit is spent: a 429 whose headers show a limit at zero with its reset time, or
    refusals from several distinct requests making up half the latest answers (see
    `RateLimit.pause_after_refusals`). A lone 429 delays its own request by its hint (the
    retry policy's wait) and spends the burst credit of the known limits; the rest of the
    fleet goes on.

    Args:
        policy: The limits to pace by.
        clock: Returns the current time in seconds; defaults to `anyio.current_time`.
        concurrency: The most requests the client has in flight, which sizes the refusal
            evidence when the policy leaves ``pause_after_refusals`` unset.
        max_pause: The longest pause a request waits out (the retry policy's
            ``max_retry_after``); `admit` fails a request at once when the pause in force is
            longer, or outlasts its deadline.
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
        "_max_pause",
        "_policy",
        "_refusals",
        "_refused",
        "_refused_at_once",
        "_wait_seconds",
        "_waiters",
        "_waiting",
    )

    def __init__(
        self,
        policy: RateLimit,
        *,
        clock: Callable[[], float] = anyio.current_time,
        concurrency: int = 64,
        max_pause: float = math.inf,
    ):
        self._policy = policy
        self._core = _RateLimiterCore(policy)
        self._clock = clock
        needed = policy.pause_after_refusals
        if needed is None:
            needed = min(max(math.ceil(max(concurrency, 1) / 4), 2), 32)
        self._refusals = _Refusals(needed, policy.refusal_window)
        self._max_pause = max_pause
        self._waiters: set[_Waiter] = set()
        self._refused = 0
        self._refused_at_once = 0
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
        Unlike `admit`, this never gives up: it waits out any pause and any limit.

        Args:
            input_tokens: The estimated prompt tokens (see `RateLimit.count_tokens`).
            max_output_tokens: The most output tokens the request may produce (its
                ``max_tokens``), 0 if unknown.
        """
        permit = await self._acquire(input_tokens, max_output_tokens, None)
        assert isinstance(permit, Permit)  # no waiter, no verdict
        return permit

    async def admit(
        self, input_tokens: int = 0, max_output_tokens: int = 0, deadline: float = math.inf
    ) -> Permit | ErrorInfo:
        """Wait until one request may be sent and reserve it, or say at once why it cannot be.

        Like `acquire`, but returns a ``rate_limited`` `ErrorInfo` (the request is not sent)
        instead of waiting for nothing: when the pause in force ends after `deadline` or
        lasts longer than ``max_pause`` (its ``retry_after_s`` is the pause left), also when
        such a pause starts while the request waits; and when the request needs more of a
        learned limit than a whole minute of it (no ``retry_after_s``: waiting cannot help).

        Args:
            input_tokens: The estimated prompt tokens (see `RateLimit.count_tokens`).
            max_output_tokens: The most output tokens the request may produce, 0 if unknown.
            deadline: The time, on the limiter's clock, by which the request must be sent.
        """
        return await self._acquire(input_tokens, max_output_tokens, _Waiter(deadline))

    async def _acquire(
        self, input_tokens: int, max_output_tokens: int, waiter: _Waiter | None
    ) -> Permit | ErrorInfo:
        input_tokens = max(int(input_tokens), 0)
        max_output_tokens = max(int(max_output_tokens), 0)
        await anyio.lowlevel.checkpoint_if_cancelled()
        if waiter is not None:
            verdict = self._verdict(self._clock(), input_tokens, max_output_tokens, waiter)
            if verdict is not None:
                return verdict
        permit = self.acquire_nowait(input_tokens, max_output_tokens)
        if permit is not None:
            return permit
        start = self._clock()
        self._waiting += 1
        costs: Mapping[str, float] = {}
        try:
            with waiter.scope if waiter is not None else _NO_SCOPE:
                if waiter is not None:
                    self._waiters.add(waiter)
                async with self._lock:
                    head = self._head = _Head(input_tokens, max_output_tokens)
                    try:
                        while True:
                            if head.granted is not None:
                                costs = head.granted
                                break
                            now = self._clock()
                            if waiter is not None:
                                verdict = self._verdict(
                                    now, input_tokens, max_output_tokens, waiter
                                )
                                if verdict is not None:
                                    return verdict
                            # Priced at admission, not on arrival: the output ratio learned
                            # while this request queued applies to it (else a queue that filled
                            # before the first answers settled would all reserve the whole
                            # max_tokens).
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
                            # Admitted by a settle but cancelled before it could go: give it
                            # back.
                            self._core.release(self._clock(), head.granted)
                        raise
                    finally:
                        self._head = None
        finally:
            self._waiting -= 1
            if waiter is not None:
                self._waiters.discard(waiter)
        if waiter is not None and waiter.scope.cancelled_caught:
            # A pause that outlasts this request's deadline began while it waited (`_pause`
            # set the verdict and cancelled the wait).
            assert waiter.verdict is not None
            self._refused_at_once += 1
            return waiter.verdict
        waited = max(self._clock() - start, 0.0)
        self._admitted += 1
        if waited > 0:
            self._delayed += 1
            self._wait_seconds += waited
        return Permit(costs, waited, max_output_tokens)

    def _verdict(
        self, now: float, input_tokens: int, max_output_tokens: int, waiter: _Waiter
    ) -> ErrorInfo | None:
        """Return why a request cannot be admitted in time, or None if it may wait."""
        verdict = self._pause_verdict(now, waiter.deadline)
        if verdict is None:
            costs = self._core.costs(input_tokens, max_output_tokens)
            found = self._core.too_small_for(costs)
            if found is None:
                return None
            name, header, per_minute, cost = found
            if name not in self._core.too_small:
                self._core.too_small[name] = per_minute
                _log.warning(
                    "the server's %s header says %g per minute, less than a request needs "
                    "(%g): such requests fail at once as rate_limited; "
                    "RateLimit(learn_from_headers=False) ignores the header",
                    header,
                    per_minute,
                    cost,
                )
            verdict = ErrorInfo(
                ErrorKind.RATE_LIMITED,
                f"not sent: the server's {header} header says {per_minute:g} {_UNITS[name]} "
                f"per minute, and this request needs {cost:g}",
                retryable=False,
            )
        self._refused_at_once += 1
        return verdict

    def _pause_verdict(self, now: float, deadline: float) -> ErrorInfo | None:
        """Return a ``rate_limited`` verdict if the pause in force outlasts `deadline`."""
        left = self._core.paused_until - now
        if left <= _EPSILON:
            return None
        if left > self._max_pause:
            beyond = f"longer than max_retry_after ({self._max_pause:g}s)"
        elif now + left > deadline:
            beyond = "past this request's deadline"
        else:
            return None
        return ErrorInfo(
            ErrorKind.RATE_LIMITED,
            f"not sent: every request is paused for {left:.3g}s more (the server's rate limit "
            f"is spent), {beyond}",
            retryable=True,
            retry_after_s=left,
        )

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
        if permit._settled:  # noqa: SLF001
            return
        permit._settled = True  # noqa: SLF001
        self._refusals.answers += 1
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
        if until is not None:
            self._pause(now, until)
        self._wake()

    def refused(self, permit: Permit, retry_after_s: float | None, key: object = None) -> bool:
        """Record that the server refused a permit's request with a 429; return if all pause.

        The permit is settled as unused. When the refusals are evidence that the shared limit
        is spent (see `_Refusals`), every admission pauses for the hint (1 second without one);
        otherwise only the refused request waits (its retry policy sleeps the hint) and the
        burst credit of the known limits is spent, so admission goes on at the paced rate.

        Args:
            permit: The refused attempt's permit.
            retry_after_s: The server's retry hint in seconds, or None.
            key: What identifies the request across its attempts (its id): refusals count
                once per request.
        """
        self.settle(permit, 0, 0)
        self._refused += 1
        now = self._clock()
        if self._refusals.refused(now, key):
            hint = retry_after_s if retry_after_s is not None and retry_after_s > 0 else 1.0
            if math.isfinite(hint):
                return self._pause(now, now + min(hint, _MAX_RESET_S))
        self._core.slow_down(now)
        return False

    def _pause(self, now: float, until: float) -> bool:
        """Pause every admission until `until`; fail at once the waiters it would outlast."""
        fresh = self._core.paused_until <= now
        if not self._core.pause(until):
            return False
        if fresh:
            # Extending the pause in force (more refusals of the same wave) starts none.
            self._cooldowns += 1
        for waiter in self._waiters:
            if waiter.verdict is None:
                waiter.verdict = self._pause_verdict(now, waiter.deadline)
                if waiter.verdict is not None:
                    waiter.scope.cancel()
        self._wake()
        return True

    def cooldown(self, seconds: float) -> None:
        """Pause admission for every waiter for `seconds` from now (a shared cooldown).

        `refused` and `observe` start one when the evidence says the server's shared limit is
        spent: every worker waits for the same reset instead of retrying on its own, so there
        is no thundering herd. When the pause ends, admission restarts paced, not in a burst.
        A shorter cooldown than the one in force changes nothing. Waiters of `admit` whose
        deadline (or ``max_pause``) the pause outlasts fail at once. Hostile values (negative,
        NaN) are ignored; longer than a day is clamped to a day.

        Args:
            seconds: How long to pause.
        """
        if not isinstance(seconds, int | float) or not seconds > 0:
            return
        seconds = min(float(seconds), _MAX_RESET_S)
        now = self._clock()
        self._pause(now, now + seconds)

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
            refused=self._refused,
            refused_at_once=self._refused_at_once,
            too_small=dict(self._core.too_small),
        )

    def __repr__(self) -> str:
        limits = ", ".join(f"{k}={v:g}/min" for k, v in self._core.limits().items())
        return (
            f"<RateLimiter {limits or 'unlimited'} admitted={self._admitted}"
            f" waiting={self._waiting}>"
        )
