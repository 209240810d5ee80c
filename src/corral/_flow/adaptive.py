"""Adaptive concurrency: find the server's capacity with AIMD instead of guessing it.

The rule (additive increase, multiplicative decrease, as TCP congestion control):

- **Decrease.** An overload signal (a 429, a 529 or 503, a timeout) multiplies the limit by
  ``decrease`` (default 0.7), at most once per *window*: the time one request takes (the
  short-term latency average). The other overload signals of that window come from requests
  sent before the cut, so they say nothing new.
- **Increase.** Each success adds ``increase / limit``, so the limit grows by ``increase``
  (default 1) per window's worth of successes, but only while the limit is actually in use
  (at least ``utilisation`` of it in flight; growing a limit nobody reaches proves nothing)
  and latency holds: the short-term latency average (the last few requests) is within
  ``latency_tolerance`` times the long-term one (the last hundred or so). A queue building up
  at the server shows as a short-term rise; LLM latencies vary a lot with output length, so
  only a sustained rise, not a single slow answer, holds the limit.
- The limit stays between ``min_concurrency`` and ``max_concurrency``.

Against a server that sheds load beyond ``C`` concurrent requests, the limit saws between
``decrease * C`` and ``C`` and averages near ``0.85 * C`` with the defaults.

`_AIMD` is the sans-IO core (every call takes ``now``); `AdaptiveLimiter` applies its decisions
to an `anyio.CapacityLimiter`'s ``total_tokens``.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from typing import Any

import anyio
import attrs

from .._errors import KIND_POLICIES, ConfigurationError, check_number

__all__ = ["AdaptiveConcurrency", "AdaptiveStatistics"]


class Signal(enum.Enum):
    """What a finished request tells the controller."""

    #: A success; its latency is a sample.
    SUCCESS = "success"
    #: The server is overloaded or limiting us: 429, 529, 503, a timeout.
    OVERLOAD = "overload"
    #: Anything else (a 4xx, a cancellation): no information about capacity.
    NEUTRAL = "neutral"


def signal_for_kind(kind: str | None) -> Signal:
    """Return the controller signal for a request that ended with error `kind` (None: success).

    Args:
        kind: The `corral.ErrorKind` of the failure (or its string value), None for a success.
    """
    if kind is None:
        return Signal.SUCCESS
    return Signal.OVERLOAD if KIND_POLICIES[kind].overload else Signal.NEUTRAL


def _check_int(inst: object, attribute: attrs.Attribute[int], value: int) -> None:
    check_number(value, f"AdaptiveConcurrency.{attribute.name}", minimum=1, integer=True)


def _check_range(low: float, high: float) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    def check(inst: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        check_number(
            value, f"AdaptiveConcurrency.{attribute.name}", minimum=low, above=True, maximum=high
        )

    return check


@attrs.frozen
class AdaptiveConcurrency:
    """Let corral find the concurrency the server sustains, between two bounds.

    Args:
        min_concurrency: The lowest limit.
        max_concurrency: The highest limit.
        initial: The starting limit; defaults to the lower of 8 and `max_concurrency`.
        increase: Requests added per window while the server keeps up.
        decrease: The factor applied to the limit on overload.
        latency_tolerance: How far (as a multiple of the baseline) latency may rise before
            increases stop.
        utilisation: The fraction of the limit that must be in flight for it to grow.
    """

    min_concurrency: int = attrs.field(default=1, validator=_check_int)
    max_concurrency: int = attrs.field(default=256, validator=_check_int)
    initial: int | None = None
    increase: float = attrs.field(default=1.0, validator=_check_range(0.0, 1e6))
    decrease: float = attrs.field(default=0.7, validator=_check_range(0.0, 0.99))
    latency_tolerance: float = attrs.field(default=2.0, validator=_check_range(1.0, 1e6))
    utilisation: float = attrs.field(default=0.8, validator=_check_range(0.0, 1.0))

    def __attrs_post_init__(self) -> None:
        if self.min_concurrency > self.max_concurrency:
            raise ConfigurationError(
                f"AdaptiveConcurrency.min_concurrency ({self.min_concurrency}) must not exceed"
                f" max_concurrency ({self.max_concurrency})"
            )
        check_number(
            self.initial, "AdaptiveConcurrency.initial", minimum=1, integer=True, optional=True
        )

    @property
    def start(self) -> int:
        """The limit the controller starts at."""
        first = self.initial if self.initial is not None else min(8, self.max_concurrency)
        return min(max(first, self.min_concurrency), self.max_concurrency)


@attrs.frozen
class AdaptiveStatistics:
    """A snapshot of an adaptive controller.

    Args:
        limit: The current concurrency limit.
        increases: Times the limit grew by a whole request or more.
        decreases: Multiplicative decreases made.
        latency: The short-term latency average in seconds (0 before the first sample).
        baseline_latency: The long-term latency average in seconds (0 before the first sample).
    """

    limit: int
    increases: int
    decreases: int
    latency: float
    baseline_latency: float


class _AIMD:
    """The sans-IO AIMD controller; `limit` is the concurrency to allow."""

    __slots__ = (
        "_baseline",
        "_last_decrease",
        "_latency",
        "_limit",
        "_policy",
        "decreases",
        "increases",
    )

    # Smoothing of the short-term and long-term latency averages.
    _SHORT = 0.2
    _LONG = 0.02

    def __init__(self, policy: AdaptiveConcurrency) -> None:
        self._policy = policy
        self._limit = float(policy.start)
        self._latency = 0.0
        self._baseline = 0.0
        self._last_decrease = -math.inf
        self.increases = 0
        self.decreases = 0

    @property
    def limit(self) -> int:
        """The concurrency limit to apply now."""
        return int(self._limit)

    def on_result(self, now: float, signal: Signal, latency: float, in_flight: int) -> int:
        """Feed one finished request and return the new limit.

        Args:
            now: The current time.
            signal: What the request's result means.
            latency: How long the request took, in seconds.
            in_flight: Requests still running when it finished (itself included).
        """
        policy = self._policy
        if signal is Signal.OVERLOAD:
            window = self._latency if self._latency > 0 else max(latency, 0.0)
            if now - self._last_decrease >= window:
                self._last_decrease = now
                self._limit = max(self._limit * policy.decrease, float(policy.min_concurrency))
                self.decreases += 1
            return self.limit
        if signal is not Signal.SUCCESS or not math.isfinite(latency) or latency < 0:
            return self.limit
        if self._latency == 0.0:
            self._latency = self._baseline = latency
        else:
            self._latency += self._SHORT * (latency - self._latency)
            self._baseline += self._LONG * (latency - self._baseline)
        # Compare with the whole-request limit: that is the most that can be in flight.
        busy = in_flight >= policy.utilisation * int(self._limit)
        calm = self._latency <= policy.latency_tolerance * self._baseline
        if busy and calm and self._limit < policy.max_concurrency:
            before = int(self._limit)
            self._limit = min(self._limit + policy.increase / self._limit, policy.max_concurrency)
            if int(self._limit) > before:
                self.increases += 1
        return self.limit

    def snapshot(self) -> AdaptiveStatistics:
        """Return the statistics."""
        return AdaptiveStatistics(
            limit=self.limit,
            increases=self.increases,
            decreases=self.decreases,
            latency=self._latency,
            baseline_latency=self._baseline,
        )


class AdaptiveLimiter:
    """Drive an `anyio.CapacityLimiter`'s ``total_tokens`` with AIMD.

    The client takes tokens from `limiter` as usual (acquire, then spawn) and reports every
    finished request with `record`. Lowering the limit never interrupts running requests: new
    ones simply wait until enough have finished.

    Args:
        policy: The bounds and tuning.
        limiter: The limiter to drive; a new one when None (create it inside an event loop).
        clock: Returns the current time in seconds; defaults to `anyio.current_time`.
    """

    __slots__ = ("_clock", "_core", "_limiter")

    def __init__(
        self,
        policy: AdaptiveConcurrency,
        limiter: anyio.CapacityLimiter | None = None,
        *,
        clock: Callable[[], float] = anyio.current_time,
    ) -> None:
        self._core = _AIMD(policy)
        self._clock = clock
        self._limiter = limiter if limiter is not None else anyio.CapacityLimiter(1)
        self._limiter.total_tokens = self._core.limit

    @property
    def limiter(self) -> anyio.CapacityLimiter:
        """The capacity limiter whose size this controller sets."""
        return self._limiter

    @property
    def limit(self) -> int:
        """The current concurrency limit."""
        return self._core.limit

    def record(self, signal: Signal, latency: float) -> None:
        """Feed one finished request to the controller.

        Args:
            signal: What its result means (see `signal_for_kind`).
            latency: How long it took, in seconds.
        """
        in_flight = self._limiter.borrowed_tokens
        limit = self._core.on_result(self._clock(), signal, latency, in_flight)
        if limit != self._limiter.total_tokens:
            self._limiter.total_tokens = limit

    def statistics(self) -> AdaptiveStatistics:
        """Return a snapshot of the controller."""
        return self._core.snapshot()

    def __repr__(self) -> str:
        stats = self._core.snapshot()
        return (
            f"<AdaptiveLimiter limit={stats.limit} in_flight={self._limiter.borrowed_tokens}"
            f" decreases={stats.decreases}>"
        )
