"""What a provider's response says about limits and retries, read from its headers and body.

Flow control consumes what this module returns (:class:`corral.RateLimitHeaders`, a retry hint
in seconds, an :class:`corral.ErrorKind`) and never reads a header itself:

- rate-limit headers: OpenAI's ``x-ratelimit-*`` and Anthropic's ``anthropic-ratelimit-*``
  (:func:`parse_rate_limit_headers`, and :func:`read_rate_limits` for the hot path);
- retry hints: ``retry-after-ms``, ``Retry-After`` as seconds or an HTTP date
  (:func:`parse_retry_after`), ``x-should-retry`` (:func:`should_retry_override`) and Gemini's
  ``google.rpc.RetryInfo`` (:func:`gemini_retry_delay`);
- quota verdicts: a 429 that means a daily quota or billing limit (:func:`is_quota_exhausted`,
  :func:`gemini_quota_verdict`);
- status classification (:func:`classify_status`).

Every parser here is total: hostile or broken values give None (or are clamped), never an
exception. Numbers go through :func:`parse_number` and HTTP dates through
:func:`parse_http_date`, the only parsers of each.
"""

from __future__ import annotations

import email.utils
import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

import httpx2

from .._errors import default_retryable
from .._models import ErrorKind, LimitInfo, RateLimitHeaders
from .._transport.httpx_internals import header_fields

# No __all__: nothing here is public; adapters and the client import what they use.

# Hostile or broken headers are clamped to these, never trusted blindly.
_MAX_LIMIT: Final = 1e12
_MAX_RESET_S: Final = 86_400.0

# An empty reading, shared: most responses carry no rate-limit header at all.
_NO_LIMITS: Final = RateLimitHeaders()


# -- the two primitive parsers -------------------------------------------------------------------


def parse_number(text: object, *, ceiling: float = math.inf) -> float | None:
    """Return a finite, non-negative number from a header value, or None.

    Args:
        text: The header value (anything that is not a string gives None).
        ceiling: The largest value returned; larger ones are clamped to it.
    """
    if not isinstance(text, str):
        return None
    try:
        value = float(text.strip())
    except ValueError:
        return None
    if not math.isfinite(value) or value < 0:
        return None
    return min(value, ceiling)


def parse_http_date(text: object) -> datetime | None:
    """Return the time an HTTP date (RFC 9110, ``Date`` and ``Retry-After``) names, or None.

    A date without a zone is read as UTC, so the result is always timezone-aware.

    Args:
        text: The header value (anything that is not a string gives None).
    """
    if not isinstance(text, str):
        return None
    try:
        when = email.utils.parsedate_to_datetime(text.strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


# -- durations and timestamps --------------------------------------------------------------------

_DURATION_PART: Final = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_UNIT_SECONDS: Final = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


def parse_duration(text: str) -> float | None:
    """Return a duration in seconds from OpenAI's ``x-ratelimit-reset-*`` format, or None.

    Accepts Go-style durations (``"1s"``, ``"6m0s"``, ``"20ms"``, ``"1h2m3.5s"``) and plain
    seconds (``"1.5"``). Negative, NaN, infinite and malformed values give None; values longer
    than a day are clamped to a day. Gemini's ``RetryInfo.retryDelay`` (``"30s"``) is read the
    same way.

    Args:
        text: The header value.
    """
    text = text.strip()
    if not text or len(text) > 64:
        return None
    seconds: float
    try:
        seconds = float(text)
    except ValueError:
        parts = _DURATION_PART.findall(text)
        if not parts or "".join(n + u for n, u in parts) != text:
            return None
        seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return min(seconds, _MAX_RESET_S)


def _parse_timestamp(text: str, reference: datetime) -> float | None:
    """Return seconds from `reference` until an RFC 3339 timestamp, or None."""
    text = text.strip()
    if not text or len(text) > 64:
        return None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    try:
        delta = (when - reference).total_seconds()
    except OverflowError:
        return None
    return min(max(delta, 0.0), _MAX_RESET_S)


def _reference_time(headers: Mapping[str, str], wall_now: datetime | None) -> datetime:
    # The server's own Date header is the best reference for its timestamps: it cancels any
    # skew between the two clocks (at one second's resolution).
    when = parse_http_date(headers.get("date"))
    if when is not None:
        return when
    return wall_now if wall_now is not None else datetime.now(UTC)


# -- rate-limit headers --------------------------------------------------------------------------

# Header name parts -> corral's limit names, per provider family.
_OPENAI_NAMES: Final = {"requests": "requests", "tokens": "tokens"}
_ANTHROPIC_NAMES: Final = {
    "requests": "requests",
    "tokens": "tokens",
    "input-tokens": "input_tokens",
    "output-tokens": "output_tokens",
}


def parse_rate_limit_headers(
    headers: Mapping[str, str], *, wall_now: datetime | None = None
) -> RateLimitHeaders:
    """Read the rate-limit headers of OpenAI-compatible and Anthropic responses.

    OpenAI-style: ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}``, resets as durations
    (``"6m0s"``). Anthropic: ``anthropic-ratelimit-{requests,tokens,input-tokens,
    output-tokens}-{limit,remaining,reset}``, resets as RFC 3339 timestamps, turned into seconds
    against the response's ``Date`` header (or `wall_now` when it has none). A value that does
    not parse is left out; nothing here raises on bad input.

    Args:
        headers: The response headers; names are matched case-insensitively.
        wall_now: The wall-clock time to use when the response has no ``Date`` header;
            defaults to the current time.
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    found: dict[str, dict[str, float]] = {}

    def put(name: str, field: str, value: float | None) -> None:
        if value is not None:
            found.setdefault(name, {})[field] = value

    for suffix, name in _OPENAI_NAMES.items():
        for field in ("limit", "remaining"):
            raw = lowered.get(f"x-ratelimit-{field}-{suffix}")
            if raw is not None:
                put(name, field, parse_number(raw, ceiling=_MAX_LIMIT))
        raw = lowered.get(f"x-ratelimit-reset-{suffix}")
        if raw is not None:
            put(name, "reset", parse_duration(raw))

    reference: datetime | None = None
    for infix, name in _ANTHROPIC_NAMES.items():
        for field in ("limit", "remaining"):
            raw = lowered.get(f"anthropic-ratelimit-{infix}-{field}")
            if raw is not None:
                put(name, field, parse_number(raw, ceiling=_MAX_LIMIT))
        raw = lowered.get(f"anthropic-ratelimit-{infix}-reset")
        if raw is not None:
            if reference is None:
                reference = _reference_time(lowered, wall_now)
            put(name, "reset", _parse_timestamp(raw, reference))

    limits = {
        name: LimitInfo(
            # Under one per minute is no limit a real service sets: believing it would pace the
            # client to a standstill.
            limit=limit if (limit := fields.get("limit", 0.0)) >= 1 else None,
            remaining=fields.get("remaining"),
            reset=fields.get("reset"),
        )
        for name, fields in found.items()
    }
    return RateLimitHeaders(limits)


def read_rate_limits(headers: Mapping[str, str]) -> RateLimitHeaders:
    """Return what *headers* say about rate limits, cheaply when they say nothing.

    The same reading as :func:`parse_rate_limit_headers`, for every response the client
    receives: most responses from local servers carry no rate-limit header, and a scan of the
    lower-cased names httpx2 keeps beats building the mapping that the full parse needs.

    Args:
        headers: The response headers.
    """
    if isinstance(headers, httpx2.Headers) and b"ratelimit" not in b"\n".join(
        [name for _, name, _ in header_fields(headers)]
    ):
        return _NO_LIMITS
    return parse_rate_limit_headers(headers)


# -- retry hints ---------------------------------------------------------------------------------


def parse_retry_after(headers: Mapping[str, str], *, now: datetime | None = None) -> float | None:
    """Return the server's requested wait in seconds, or None when it gave no usable hint.

    Reads ``retry-after-ms`` (OpenAI, milliseconds) first, then ``Retry-After`` as seconds or as
    an HTTP date. Negative, NaN, infinite and unparseable values are ignored (an unusable
    ``retry-after-ms`` falls back to ``Retry-After``). A date in the past means 0. Long hints
    are returned as they are: the client honours a hint only up to
    :attr:`corral.RetryPolicy.max_retry_after` and the request's deadline, and fails the
    request at once, as ``rate_limited``, when the hint is longer.

    Args:
        headers: The response headers (case-insensitive mapping).
        now: The current wall-clock time, for HTTP-date hints; defaults to now.
    """
    ms = parse_number(headers.get("retry-after-ms"))
    if ms is not None:
        return ms / 1000.0
    raw = headers.get("retry-after")
    if raw is None:
        return None
    seconds = parse_number(raw)
    if seconds is not None:
        return seconds
    when = parse_http_date(raw)
    if when is None:
        return None
    now = now or datetime.now(UTC)
    return max((when - now).total_seconds(), 0.0)


def should_retry_override(headers: Mapping[str, str]) -> bool | None:
    """Return the server's ``x-should-retry`` verdict, or None when it gave none.

    Args:
        headers: The response headers.
    """
    value = headers.get("x-should-retry")
    if value is None:
        return None
    value = value.strip().lower()
    if value == "true":
        return True
    if value == "false":
        return False
    return None


def gemini_retry_delay(details: Any) -> float | None:
    """Return the wait a Google API error's ``google.rpc.RetryInfo`` detail asks for, or None.

    Args:
        details: The error's ``details`` list (any shape).
    """
    if not isinstance(details, list):
        return None
    for detail in details:
        if not isinstance(detail, dict):
            continue
        if not str(detail.get("@type", "")).endswith("google.rpc.RetryInfo"):
            continue
        delay = detail.get("retryDelay")
        if isinstance(delay, str):
            return parse_duration(delay)
        if isinstance(delay, dict):
            try:
                value = float(delay.get("seconds") or 0) + float(delay.get("nanos") or 0) / 1e9
            except (TypeError, ValueError, OverflowError):
                return None
            # Like Retry-After: negative, NaN and infinite hints are no hint at all.
            return value if math.isfinite(value) and value >= 0 else None
    return None


# -- quota verdicts ------------------------------------------------------------------------------

_DAILY_WORDS: Final = re.compile(
    r"per[ _-]?day|daily|\bRPD\b|\bTPD\b|requests per day|tokens per day|quota", re.IGNORECASE
)
_PER_DAY_ID: Final = re.compile(r"per[ _-]?day|daily", re.IGNORECASE)


def is_quota_exhausted(status: int, headers: Mapping[str, str], body: object) -> bool:
    """Tell a 429 that means "daily quota or billing exhausted" from a passing rate limit.

    Such a 429 will not clear within any retry budget, so it should fail fast instead of
    waiting. Recognised:

    - OpenAI (and compatibles): ``error.code`` or ``error.type`` ``"insufficient_quota"``;
    - Gemini: a ``google.rpc.QuotaFailure`` detail whose violation names a per-day quota
      (its ``quotaId`` or ``quotaMetric`` mentions ``PerDay``); per-minute violations are not;
    - any provider: an error message that mentions a daily limit, "per day", RPD/TPD or
      "quota", unless the server also asked for a short wait (``Retry-After`` of a minute or
      less), which marks a passing limit.

    Args:
        status: The HTTP status; anything other than 429 gives False.
        headers: The response headers.
        body: The decoded JSON body (any shape, or None).
    """
    if status != 429:
        return False
    error = body.get("error") if isinstance(body, Mapping) else None
    if not isinstance(error, Mapping):
        error = body if isinstance(body, Mapping) else {}
    code = error.get("code")
    kind = error.get("type")
    if "insufficient_quota" in (code, kind):
        return True
    details = error.get("details")
    if isinstance(details, list):
        verdict = gemini_quota_verdict(details)
        if verdict is not None:
            return verdict
    message = error.get("message")
    if not isinstance(message, str) or not _DAILY_WORDS.search(message):
        return False
    lowered = {k.lower(): v for k, v in headers.items()}
    hint = parse_number(lowered.get("retry-after"), ceiling=_MAX_LIMIT)
    return hint is None or hint > 60


def gemini_quota_verdict(details: Any) -> bool | None:
    """Return True for a per-day ``google.rpc.QuotaFailure``, False for another, else None.

    Args:
        details: A Google API error's ``details`` list (any shape).
    """
    if not isinstance(details, list):
        return None
    seen_failure = False
    for detail in details:
        if not isinstance(detail, Mapping):
            continue
        if not str(detail.get("@type", "")).endswith("google.rpc.QuotaFailure"):
            continue
        seen_failure = True
        violations = detail.get("violations")
        if not isinstance(violations, list):
            continue
        for violation in violations:
            if not isinstance(violation, Mapping):
                continue
            ids = " ".join(
                str(violation.get(key, "")) for key in ("quotaId", "quotaMetric", "description")
            )
            if _PER_DAY_ID.search(ids):
                return True
    return False if seen_failure else None


# -- status classification -----------------------------------------------------------------------

# The kind of each status with a meaning of its own. Every other 5xx is a server error and every
# other 4xx a bad request; whether a kind is retried is the kind's policy (corral._errors).
_STATUS: Final[dict[int, ErrorKind]] = {
    400: ErrorKind.BAD_REQUEST,
    401: ErrorKind.AUTHENTICATION,
    403: ErrorKind.PERMISSION,
    404: ErrorKind.NOT_FOUND,
    408: ErrorKind.TIMEOUT,
    409: ErrorKind.CONFLICT,
    413: ErrorKind.BAD_REQUEST,
    422: ErrorKind.BAD_REQUEST,
    429: ErrorKind.RATE_LIMITED,
    503: ErrorKind.OVERLOADED,
    504: ErrorKind.TIMEOUT,
    529: ErrorKind.OVERLOADED,
}


def classify_status(status: int) -> tuple[ErrorKind, bool]:
    """Return the error kind and retry decision for an HTTP status that is not a success.

    Args:
        status: The HTTP status code.
    """
    kind = _STATUS.get(status)
    if kind is None:
        if status >= 500:
            kind = ErrorKind.SERVER_ERROR
        elif 300 <= status < 400:
            # Redirects are never followed for API calls: a key must not travel to another
            # origin.
            kind = ErrorKind.INVALID_RESPONSE
        else:
            kind = ErrorKind.BAD_REQUEST
    return kind, default_retryable(kind)
