"""The mock server's knobs (`MockConfig`) and its statistics snapshot (`MockStatistics`)."""

from __future__ import annotations

import datetime
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, NamedTuple, TypeAlias

import attrs

from ..._errors import check_number

__all__ = ["LatencySpec", "MockConfig", "MockHit", "MockStatistics", "RateLimitAlgorithm"]

#: A latency: fixed seconds, a ``(low, high)`` uniform range, or a function of a seeded RNG.
LatencySpec: TypeAlias = float | tuple[float, float] | Callable[[random.Random], float]

#: How the mock counts rate limits: a continuously refilling bucket, or per-minute windows.
RateLimitAlgorithm: TypeAlias = Literal["token_bucket", "fixed_window"]


def _check_latency(_instance: object, _attribute: object, value: LatencySpec) -> None:
    if callable(value):
        return
    if isinstance(value, tuple):
        if len(value) != 2:
            raise ValueError(f"latency range must be (low, high), not {value!r:.100}")
        low, high = value
        check_number(low, "MockConfig.latency low", minimum=0)
        check_number(high, "MockConfig.latency high", minimum=0)
        if not low <= high:
            raise ValueError(f"latency range must satisfy 0 <= low <= high < inf, not {value!r}")
        return
    check_number(value, "MockConfig.latency (seconds)", minimum=0)


def _freeze_rates(value: Mapping[int, float]) -> Mapping[int, float]:
    if not isinstance(value, Mapping):
        raise TypeError(
            f"MockConfig.error_rates must be a mapping of status to rate, "
            f"not {type(value).__name__}"
        )
    rates = {}
    for status, rate in value.items():
        if isinstance(status, bool) or not isinstance(status, int):
            raise TypeError(f"error_rates keys must be HTTP error statuses, not {status!r:.40}")
        check_number(rate, f"MockConfig.error_rates[{status}] (the error rate)", minimum=0)
        rates[status] = float(rate)
    return rates


def _check_rates(_instance: object, _attribute: object, value: Mapping[int, float]) -> None:
    for status, rate in value.items():
        if not 400 <= status <= 599:
            raise ValueError(f"error_rates keys must be HTTP error statuses, not {status!r}")
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"error rate for {status} must be within [0, 1], not {rate!r}")
    if sum(value.values()) > 1.0 + 1e-9:
        raise ValueError(f"error rates add up to more than 1: {dict(value)!r}")


def _freeze_outages(value: Sequence[tuple[float, float]]) -> tuple[tuple[float, float], ...]:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise TypeError(
            f"MockConfig.outages must be a sequence of (start, end) windows, "
            f"not {type(value).__name__}"
        )
    windows = []
    for window in value:
        if not isinstance(window, Sequence) or isinstance(window, str | bytes) or len(window) != 2:
            raise TypeError(f"an outage window must be a (start, end) pair, not {window!r:.60}")
        for edge in window:
            check_number(edge, "MockConfig.outages: an outage window's edge", minimum=0)
        windows.append((float(window[0]), float(window[1])))
    return tuple(windows)


def _check_outages(
    _instance: object, _attribute: object, value: tuple[tuple[float, float], ...]
) -> None:
    for start, end in value:
        if not 0 <= start < end:
            raise ValueError(f"an outage window must satisfy 0 <= start < end, not {(start, end)}")


def _positive_or_none(
    _instance: object, attribute: attrs.Attribute[int | None], value: int | None
) -> None:
    check_number(value, f"MockConfig.{attribute.name}", minimum=1, integer=True, optional=True)


def _number(
    *, minimum: float, maximum: float | None = None, integer: bool = False
) -> Callable[[object, attrs.Attribute[Any], Any], None]:
    def check(_instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        check_number(
            value, f"MockConfig.{attribute.name}", minimum=minimum, maximum=maximum, integer=integer
        )

    return check


def _flag(_instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"MockConfig.{attribute.name} must be True or False, not {value!r:.40}")


def _seed(_instance: object, _attribute: object, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"MockConfig.seed must be an integer, not {value!r:.40}")


def _key(_instance: object, _attribute: object, value: Any) -> None:
    if value is not None and not isinstance(value, str):
        # Never repeat the value: it may be a real key passed by mistake.
        raise TypeError(f"MockConfig.api_key must be a string or None, not {type(value).__name__}")


def _aware_or_none(_instance: object, _attribute: object, value: datetime.datetime | None) -> None:
    if value is None:
        return
    if not isinstance(value, datetime.datetime):
        raise TypeError(f"clock_origin must be a datetime or None, not {type(value).__name__}")
    if value.tzinfo is None:
        raise ValueError("clock_origin must be timezone-aware")


_probability = _number(minimum=0.0, maximum=1.0)
_seconds = _number(minimum=0.0)


@attrs.frozen(kw_only=True)
class MockConfig:
    """Configure a `MockServer`: timing, faults, rate-limit emulation and auth.

    Every random choice (latency, injected errors, faults, ids) comes from a generator seeded with
    `seed` and, when the client sends ``X-Client-Request-Id``, with that id and how many times the
    server has seen it, so a retry of a request draws anew while the whole run stays reproducible
    whatever the interleaving.

    Args:
        latency: Seconds before each admitted request is answered: a number, a ``(low, high)``
            uniform range, or a callable that takes a seeded `random.Random` and returns seconds.
        chunk_delay: Seconds between two events of a streamed response (time per output chunk).
        error_rates: HTTP status -> probability of answering an admitted request with that error,
            in the API's own error envelope (for example ``{429: 0.02, 500: 0.01, 529: 0.01}``).
        retry_after: Seconds sent as ``Retry-After`` with injected 429/503/529 errors and outages.
        seed: Seed of every random choice.
        requests_per_minute: Emulated RPM limit, per API family (OpenAI, Anthropic, Gemini).
        tokens_per_minute: Emulated TPM limit on input plus output tokens, per API family.
        input_tokens_per_minute: Emulated Anthropic-style input-token limit (ITPM).
        output_tokens_per_minute: Emulated Anthropic-style output-token limit (OTPM).
        rate_limit_algorithm: ``"token_bucket"`` (capacity refills continuously, as OpenAI and
            Anthropic describe their limits) or ``"fixed_window"`` (counters reset every minute
            since the server started).
        outages: ``(start_s, end_s)`` windows, relative to the server's start, during which every
            request fails with 503 (529 on Anthropic paths).
        daily_quota: Requests per day (since the server started) after which every request gets a
            quota-exhausted 429 with no short retry hint.
        stall_rate: Probability that an admitted request stalls `stall_seconds` before answering.
        stall_seconds: How long a stalled request sleeps: longer than any client timeout.
        drop_rate: Probability that the connection is dropped instead of answered.
        truncate_rate: Probability that a response is cut short: a stream ends without its final
            event, a JSON body is cut in half.
        api_key: If set, the only key accepted; otherwise any non-empty key is.
        context_window: Largest input plus ``max_tokens`` accepted, else a context-length 400.
        clock_origin: Wall-clock time of the server's start, for ``date`` headers, ``created``
            fields and RFC 3339 reset times; None takes the real time when the server starts.
        record_hits: Keep the hit log and per-request-id counts; turn off for huge runs whose
            memory is measured (error draws then follow arrival order).
    """

    latency: LatencySpec = attrs.field(default=0.0, validator=_check_latency)
    chunk_delay: float = attrs.field(default=0.0, validator=_seconds)
    error_rates: Mapping[int, float] = attrs.field(
        factory=dict, converter=_freeze_rates, validator=_check_rates
    )
    retry_after: float = attrs.field(default=1.0, validator=_seconds)
    seed: int = attrs.field(default=0, validator=_seed)
    requests_per_minute: int | None = attrs.field(default=None, validator=_positive_or_none)
    tokens_per_minute: int | None = attrs.field(default=None, validator=_positive_or_none)
    input_tokens_per_minute: int | None = attrs.field(default=None, validator=_positive_or_none)
    output_tokens_per_minute: int | None = attrs.field(default=None, validator=_positive_or_none)
    rate_limit_algorithm: RateLimitAlgorithm = attrs.field(
        default="token_bucket", validator=attrs.validators.in_(("token_bucket", "fixed_window"))
    )
    outages: tuple[tuple[float, float], ...] = attrs.field(
        default=(), converter=_freeze_outages, validator=_check_outages
    )
    daily_quota: int | None = attrs.field(default=None, validator=_positive_or_none)
    stall_rate: float = attrs.field(default=0.0, validator=_probability)
    stall_seconds: float = attrs.field(default=3600.0, validator=_seconds)
    drop_rate: float = attrs.field(default=0.0, validator=_probability)
    truncate_rate: float = attrs.field(default=0.0, validator=_probability)
    api_key: str | None = attrs.field(default=None, repr=False, validator=_key)
    context_window: int = attrs.field(default=1_000_000, validator=_number(minimum=1, integer=True))
    clock_origin: datetime.datetime | None = attrs.field(default=None, validator=_aware_or_none)
    record_hits: bool = attrs.field(default=True, validator=_flag)


class MockHit(NamedTuple):
    """One answered (or dropped) request in the hit log: a tuple, so it unpacks as one.

    Attributes:
        request_id: The client's ``X-Client-Request-Id`` header, or None.
        path: The request path, for example ``/v1/chat/completions``.
        status: The HTTP status answered; 0 when no response was delivered (connection dropped,
            client gone).
    """

    request_id: str | None
    path: str
    status: int


@attrs.frozen
class MockStatistics:
    """A snapshot of what a `MockServer` has seen since it was created or reset.

    Attributes:
        total_hits: Requests received, including those still in flight.
        hits_by_path: Requests received per path.
        hits_by_status: Finished requests per status answered (0: no response delivered).
        in_flight: Requests being handled right now.
        peak_in_flight: The most requests ever handled at once.
        hit_log: Finished requests in the order they finished (empty if ``record_hits`` is off).
    """

    total_hits: int
    hits_by_path: Mapping[str, int]
    hits_by_status: Mapping[int, int]
    in_flight: int
    peak_in_flight: int
    hit_log: tuple[MockHit, ...] = attrs.field(repr=lambda log: f"<{len(log)} hits>")
