"""Rate-limit emulation for the mock server, and the time formats its headers use.

Each limited dimension (requests, tokens, input tokens, output tokens) is a `_Meter`. A request
reserves its worst case when it is admitted (input plus ``max_tokens``) and is settled with what it
really produced when it ends, as Anthropic documents for its output-token limit; a client that
does the same stays inside the limit exactly.
"""

from __future__ import annotations

import datetime
import email.utils
import math
from typing import Final

import attrs

from .config import MockConfig, RateLimitAlgorithm

__all__ = [
    "Admission",
    "Denial",
    "LimitState",
    "RateLimits",
    "google_duration",
    "http_date",
    "openai_duration",
    "rfc3339",
]

_MINUTE: Final = 60.0


def openai_duration(seconds: float) -> str:
    """Format a wait the way OpenAI's ``x-ratelimit-reset-*`` headers do: "20ms", "1.5s", "6m0s".

    Rounded up to the millisecond, so a client that waits this long is never early.

    Args:
        seconds: The wait.
    """
    millis = max(0, math.ceil(round(seconds * 1000, 6)))
    if millis == 0:
        return "0s"
    if millis < 1000:
        return f"{millis}ms"
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs = str(rest // 1000) if rest % 1000 == 0 else f"{rest / 1000:.3f}".rstrip("0")
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def google_duration(seconds: float) -> str:
    """Format a wait as a protobuf ``Duration`` in JSON, as ``RetryInfo.retryDelay`` is: "3s".

    Args:
        seconds: The wait, rounded up to the millisecond.
    """
    millis = max(0, math.ceil(round(seconds * 1000, 6)))
    if millis % 1000 == 0:
        return f"{millis // 1000}s"
    return f"{millis / 1000:.3f}".rstrip("0") + "s"


def rfc3339(moment: datetime.datetime) -> str:
    """Format a UTC moment as Anthropic's reset headers do, rounded up to the second.

    Args:
        moment: A timezone-aware time.
    """
    utc = moment.astimezone(datetime.UTC)
    if utc.microsecond:
        utc = utc.replace(microsecond=0) + datetime.timedelta(seconds=1)
    return utc.strftime("%Y-%m-%dT%H:%M:%SZ")


def http_date(moment: datetime.datetime) -> str:
    """Format a moment as an HTTP ``date`` header.

    Args:
        moment: A timezone-aware time.
    """
    return email.utils.format_datetime(moment.astimezone(datetime.UTC), usegmt=True)


class _Meter:
    """Count one limited quantity per minute, as a token bucket or a fixed window."""

    __slots__ = ("_algorithm", "_level", "_updated", "_window", "limit")

    def __init__(self, limit: int, algorithm: RateLimitAlgorithm, now: float) -> None:
        self.limit = limit
        self._algorithm = algorithm
        self._level = 0.0
        self._updated = now
        self._window = now

    def _refresh(self, now: float) -> None:
        if self._algorithm == "token_bucket":
            drained = (now - self._updated) * self.limit / _MINUTE
            self._level = max(0.0, self._level - drained)
            self._updated = now
        elif now >= self._window + _MINUTE:
            self._window += _MINUTE * ((now - self._window) // _MINUTE)
            self._level = 0.0

    def wait(self, now: float, cost: int) -> float:
        """Return 0 if `cost` fits now, else the seconds until it would (inf if it never can)."""
        self._refresh(now)
        if self._level + cost <= self.limit:
            return 0.0
        if cost > self.limit:
            return math.inf
        if self._algorithm == "token_bucket":
            return (self._level + cost - self.limit) * _MINUTE / self.limit
        return self._window + _MINUTE - now

    def charge(self, now: float, cost: float) -> float:
        """Add `cost`; return the window it went to, so a later correction lands there too."""
        self._refresh(now)
        self._level += cost
        return self._window

    def correct(self, now: float, window: float, delta: float) -> None:
        """Apply a settlement; a fixed window that has already rolled over is left alone."""
        self._refresh(now)
        if self._algorithm == "token_bucket" or window == self._window:
            self._level = max(0.0, self._level + delta)

    def state(self, now: float) -> LimitState:
        """Return the limit, what remains and the seconds until it is whole again."""
        self._refresh(now)
        if self._algorithm == "token_bucket":
            reset = self._level * _MINUTE / self.limit
        else:
            reset = self._window + _MINUTE - now if self._level else 0.0
        remaining = max(0, math.floor(self.limit - self._level + 1e-9))
        return LimitState(limit=self.limit, remaining=remaining, reset_s=reset)

    @property
    def used(self) -> int:
        return math.ceil(self._level - 1e-9)


@attrs.frozen
class LimitState:
    """One limit as the rate-limit headers report it."""

    limit: int
    remaining: int
    reset_s: float


@attrs.frozen
class Denial:
    """Why a request was refused: the dimension that ran out and how long until it fits."""

    dimension: str
    wait_s: float
    limit: int
    used: int
    requested: int


class Admission:
    """The reservations one admitted request holds until it is settled."""

    __slots__ = ("_charges", "_settled", "limits")

    def __init__(
        self, charges: list[tuple[_Meter, str, float, float]], limits: dict[str, LimitState]
    ) -> None:
        self._charges = charges
        self._settled = False
        #: The state of each limit right after this request was charged, for its headers.
        self.limits = limits

    def settle(self, now: float, actual: dict[str, int]) -> None:
        """Replace each reservation with the real amount; only the first call counts.

        Args:
            now: The server's clock.
            actual: Real amounts per dimension; missing dimensions keep their reservation.
        """
        if self._settled:
            return
        self._settled = True
        for meter, dimension, window, reserved in self._charges:
            if dimension in actual:
                meter.correct(now, window, actual[dimension] - reserved)


class RateLimits:
    """The limits of one API family: requests, tokens, input tokens and output tokens per minute.

    Args:
        config: The server's configuration.
        now: The server's clock when the limits start counting.
    """

    __slots__ = ("_meters",)

    def __init__(self, config: MockConfig, now: float) -> None:
        limits = {
            "requests": config.requests_per_minute,
            "tokens": config.tokens_per_minute,
            "input_tokens": config.input_tokens_per_minute,
            "output_tokens": config.output_tokens_per_minute,
        }
        self._meters = {
            name: _Meter(limit, config.rate_limit_algorithm, now)
            for name, limit in limits.items()
            if limit is not None
        }

    def __bool__(self) -> bool:
        return bool(self._meters)

    def admit(self, now: float, input_tokens: int, output_tokens: int) -> Admission | Denial:
        """Reserve one request's cost in every dimension, or refuse it if any is short.

        Args:
            now: The server's clock.
            input_tokens: The request's input tokens.
            output_tokens: The most output it may produce (its ``max_tokens``).
        """
        costs = {
            "requests": 1,
            "tokens": input_tokens + output_tokens,
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
        }
        denial: Denial | None = None
        for name, meter in self._meters.items():
            wait = meter.wait(now, costs[name])
            if wait > 0 and (denial is None or wait > denial.wait_s):
                denial = Denial(name, wait, meter.limit, meter.used, costs[name])
        if denial is not None:
            return denial
        charges = [
            (meter, name, meter.charge(now, costs[name]), float(costs[name]))
            for name, meter in self._meters.items()
        ]
        return Admission(charges, self.state(now))

    def state(self, now: float) -> dict[str, LimitState]:
        """Return the state of each configured limit, for the rate-limit headers.

        Args:
            now: The server's clock.
        """
        return {name: meter.state(now) for name, meter in self._meters.items()}
