"""The retry policy, and the classification of transport exceptions.

The policy is executed by stamina (see :mod:`corral._attempt`). Which error kinds are retried is
the kinds' table in :mod:`corral._errors`; the server's hints are read by
``corral.providers._headers``.
"""

from __future__ import annotations

import attrs
import httpx2

from .._errors import ResponseRefused, check_number, default_retryable
from .._models import ErrorInfo, ErrorKind

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


def classify_exception(exc: BaseException) -> ErrorInfo:
    """Return the error for a transport exception raised before a response arrived.

    Args:
        exc: The exception httpx2 (or a transport) raised.
    """
    name = type(exc).__name__
    detail = str(exc) or name
    if isinstance(exc, httpx2.TimeoutException | TimeoutError):
        kind = ErrorKind.TIMEOUT
    elif isinstance(exc, httpx2.TooManyRedirects | httpx2.DecodingError | ResponseRefused):
        kind = ErrorKind.INVALID_RESPONSE
    elif isinstance(exc, httpx2.TransportError | OSError):
        # Connect, read and write errors, protocol errors, resets and broken pipes: the server
        # may never have seen the request, or died answering it. Both are worth another try.
        kind = ErrorKind.CONNECTION
    else:
        raise TypeError(f"not a transport exception: {exc!r}") from exc
    return ErrorInfo(kind, f"{name}: {detail}", retryable=default_retryable(kind))
