"""Retry policy, error classification and server retry hints.

The policy is executed by stamina (see :mod:`corral._client`); this module decides *what* is
retryable and *how long* the server asked us to wait.
"""

from __future__ import annotations

import email.utils
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Final

import attrs
import httpx2

from .._errors import check_number
from .._models import ErrorInfo, ErrorKind
from .._transport.limits import ResponseRefused

__all__ = ["RetryPolicy"]


def _positive(inst: object, attribute: attrs.Attribute[float], value: float | None) -> None:
    check_number(value, f"RetryPolicy.{attribute.name}", minimum=0, above=True, optional=True)


def _positive_required(inst: object, attribute: attrs.Attribute[float], value: float) -> None:
    check_number(value, f"RetryPolicy.{attribute.name}", minimum=0, above=True)


def _non_negative(inst: object, attribute: attrs.Attribute[float], value: float) -> None:
    check_number(value, f"RetryPolicy.{attribute.name}", minimum=0)


def _check_attempts(inst: object, attribute: attrs.Attribute[int], value: int) -> None:
    check_number(value, "RetryPolicy.attempts", minimum=1, integer=True)


@attrs.frozen
class RetryPolicy:
    """How corral retries a failed request.

    Only the retryable kinds are retried: ``rate_limited``, ``overloaded``, ``server_error``,
    ``conflict``, ``timeout`` and ``connection`` (HTTP 408, 409, 429, 5xx, connection errors and
    timeouts). A server's retry hint (``Retry-After``, ``retry-after-ms``, Gemini's
    ``RetryInfo``) replaces the exponential backoff for that wait.

    Args:
        attempts: The most HTTP attempts per request, the first included. 1 disables retries.
        timeout: The deadline in seconds for all attempts of one request together, backoff
            included; None for no deadline. The deadline always wins over a retry hint.
        wait_initial: The first backoff in seconds.
        wait_max: The longest backoff in seconds.
        wait_jitter: The most random jitter added to a backoff, in seconds.
        wait_exp_base: The exponential base of the backoff.
        max_retry_after: The longest server-requested wait corral will honour; a longer hint
            fails the request at once, as ``rate_limited``, with the hint recorded.
    """

    attempts: int = attrs.field(default=5, validator=_check_attempts)
    timeout: float | None = attrs.field(default=300.0, validator=_positive)
    wait_initial: float = attrs.field(default=0.5, validator=_non_negative)
    wait_max: float = attrs.field(default=30.0, validator=_non_negative)
    wait_jitter: float = attrs.field(default=1.0, validator=_non_negative)
    wait_exp_base: float = attrs.field(default=2.0, validator=_positive_required)
    max_retry_after: float = attrs.field(default=120.0, validator=_non_negative)

    @classmethod
    def none(cls) -> RetryPolicy:
        """Return a policy that makes exactly one attempt."""
        return cls(attempts=1)


# Status -> (kind, retryable). Everything 5xx that is not listed is a retryable server error;
# every other 4xx is a final bad request.
_STATUS: Final[dict[int, tuple[ErrorKind, bool]]] = {
    400: (ErrorKind.BAD_REQUEST, False),
    401: (ErrorKind.AUTHENTICATION, False),
    403: (ErrorKind.PERMISSION, False),
    404: (ErrorKind.NOT_FOUND, False),
    408: (ErrorKind.TIMEOUT, True),
    409: (ErrorKind.CONFLICT, True),
    413: (ErrorKind.BAD_REQUEST, False),
    422: (ErrorKind.BAD_REQUEST, False),
    429: (ErrorKind.RATE_LIMITED, True),
    503: (ErrorKind.OVERLOADED, True),
    504: (ErrorKind.TIMEOUT, True),
    529: (ErrorKind.OVERLOADED, True),
}


def classify_status(status: int) -> tuple[ErrorKind, bool]:
    """Return the error kind and retry decision for an HTTP status that is not a success.

    Args:
        status: The HTTP status code.
    """
    known = _STATUS.get(status)
    if known is not None:
        return known
    if status >= 500:
        return ErrorKind.SERVER_ERROR, True
    if 300 <= status < 400:
        # Redirects are never followed for API calls: a key must not travel to another origin.
        return ErrorKind.INVALID_RESPONSE, False
    return ErrorKind.BAD_REQUEST, False


def classify_exception(exc: BaseException) -> ErrorInfo:
    """Return the error for a transport exception raised before a response arrived.

    Args:
        exc: The exception httpx2 (or a transport) raised.
    """
    name = type(exc).__name__
    detail = str(exc) or name
    if isinstance(exc, httpx2.TimeoutException | TimeoutError):
        return ErrorInfo(ErrorKind.TIMEOUT, f"{name}: {detail}", retryable=True)
    if isinstance(exc, httpx2.TooManyRedirects):
        return ErrorInfo(ErrorKind.INVALID_RESPONSE, f"{name}: {detail}")
    if isinstance(exc, httpx2.DecodingError | ResponseRefused):
        # Over a response cap, or undecodable: the same server would answer the same again.
        return ErrorInfo(ErrorKind.INVALID_RESPONSE, f"{name}: {detail}")
    if isinstance(exc, httpx2.TransportError | OSError):
        # Connect, read and write errors, protocol errors, resets and broken pipes: the server
        # may never have seen the request, or died answering it. Both are worth another try.
        return ErrorInfo(ErrorKind.CONNECTION, f"{name}: {detail}", retryable=True)
    raise TypeError(f"not a transport exception: {exc!r}") from exc


def parse_retry_after(headers: Mapping[str, str], *, now: datetime | None = None) -> float | None:
    """Return the server's requested wait in seconds, or None when it gave no usable hint.

    Reads ``retry-after-ms`` (OpenAI, milliseconds) first, then ``Retry-After`` as seconds or as
    an HTTP date. Negative, NaN, infinite and unparseable values are ignored (an unusable
    ``retry-after-ms`` falls back to ``Retry-After``). A date in the past means 0. Long hints
    are returned as they are: the client honours a hint only up to
    :attr:`RetryPolicy.max_retry_after` and the request's deadline, and fails the request at
    once, as ``rate_limited``, when the hint is longer.

    Args:
        headers: The response headers (case-insensitive mapping).
        now: The current wall-clock time, for HTTP-date hints; defaults to now.
    """
    ms = headers.get("retry-after-ms")
    if ms is not None:
        value = _finite_non_negative(ms)
        if value is not None:
            return value / 1000.0
    raw = headers.get("retry-after")
    if raw is None:
        return None
    value = _finite_non_negative(raw)
    if value is not None:
        return value
    try:
        when = email.utils.parsedate_to_datetime(raw.strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    now = now or datetime.now(UTC)
    return max((when - now).total_seconds(), 0.0)


def _finite_non_negative(text: str) -> float | None:
    try:
        value = float(text.strip())
    except (ValueError, AttributeError):
        return None
    if not math.isfinite(value) or value < 0:
        return None
    return value


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
