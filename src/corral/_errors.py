"""The exceptions corral raises.

Per-request failures inside :meth:`corral.Client.run` and :meth:`corral.Client.stream` are
*values* (:class:`corral.Failure`), never exceptions. :meth:`corral.Client.complete` raises the
:class:`RequestFailed` subclass that matches the failure's :class:`corral.ErrorKind`, so a
caller can catch exactly what it can handle.

The tree::

    CorralError
    ├── ConfigurationError (also ValueError)        bad arguments, missing key, bad policy
    │   └── ConfigurationTypeError (also TypeError) an argument of the wrong type
    ├── InvalidRequestError (also ValueError)       a request corral refuses to send
    ├── InvalidInputError (also ValueError)         bad JSONL input, with line numbers
    ├── JobError                                    a JSONL job cannot start or continue
    │   ├── JobMismatchError                        the output belongs to another input or run
    │   ├── CorruptOutputError                      a malformed record mid-file
    │   ├── OutputLostError                         records the manifest counts are gone
    │   ├── JobLockedError                          another run is writing the same output
    │   └── OutputWriteError                        writing or syncing the output failed
    └── RequestFailed                               one request failed; .info, .request_id
        ├── RateLimitedError                        rate_limited, quota_exhausted
        ├── OverloadedError                         overloaded
        ├── ServerError                             server_error, conflict
        ├── RequestTimeoutError                     timeout
        ├── ConnectionFailedError                   connection
        ├── BadRequestError                         bad_request
        │   ├── ContextLengthError                  context_length
        │   └── ContentFilterError                  content_filter
        ├── AuthenticationError                     authentication
        ├── PermissionDeniedError                   permission
        ├── NotFoundError                           not_found
        ├── InvalidResponseError                    invalid_response
        ├── BudgetExhaustedError                    budget_exhausted
        └── CircuitOpenError                        circuit_open

Cancellation is never turned into any of these: it propagates as the backend's own cancellation
exception. Bugs propagate unchanged.

Every :class:`ErrorKind` has one row in :data:`KIND_POLICIES`: whether it is retried, whether it
counts for the circuit breaker, whether it signals overload to adaptive concurrency, and the
exception above that :meth:`corral.Client.complete` raises for it.

The rule for argument errors, in every public constructor and function: an argument of the
wrong *type* raises :class:`ConfigurationTypeError` (a ``TypeError``); an argument of the right
type with a wrong *value* raises :class:`ConfigurationError` (a ``ValueError``). Both are
``ConfigurationError``, so one ``except`` catches every bad argument. The message names the
argument as the user wrote it (``RetryPolicy.attempts``), says what is accepted, and shows what
was received: the value for a wrong value, only the type for a wrong type (so that a key passed
in the wrong place is never echoed; arguments that may hold a key, such as URLs and headers,
never show their value). :func:`check_number` and :func:`check_type` build these messages.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Final, NamedTuple

import httpx2

if TYPE_CHECKING:
    from ._models import ErrorInfo


class ErrorKind(enum.StrEnum):
    """Why a request failed. Provider errors are normalised into these kinds."""

    RATE_LIMITED = "rate_limited"
    QUOTA_EXHAUSTED = "quota_exhausted"
    OVERLOADED = "overloaded"
    SERVER_ERROR = "server_error"
    CONFLICT = "conflict"
    TIMEOUT = "timeout"
    CONNECTION = "connection"
    BAD_REQUEST = "bad_request"
    AUTHENTICATION = "authentication"
    PERMISSION = "permission"
    NOT_FOUND = "not_found"
    CONTEXT_LENGTH = "context_length"
    CONTENT_FILTER = "content_filter"
    INVALID_RESPONSE = "invalid_response"
    BUDGET_EXHAUSTED = "budget_exhausted"
    CIRCUIT_OPEN = "circuit_open"


class CorralError(Exception):
    """Base class of every exception corral raises on purpose."""


class ConfigurationError(CorralError, ValueError):
    """An argument or policy is invalid, or a required setting (such as an API key) is missing."""


class ConfigurationTypeError(ConfigurationError, TypeError):
    """An argument has the wrong type (see the rule for argument errors above)."""


class InvalidRequestError(CorralError, ValueError):
    """A request cannot be sent as it stands (for example a required field is missing)."""


class InvalidInputError(CorralError, ValueError):
    """A JSONL input file has bad lines; nothing was sent.

    Args:
        problems: ``(line_number, message)`` pairs, one per bad line, in file order.
    """

    def __init__(self, problems: list[tuple[int, str]]) -> None:
        self.problems = problems
        shown = "\n".join(f"  line {n}: {msg}" for n, msg in problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        super().__init__(f"{len(problems)} bad input line(s):\n{shown}{more}")


class RequestFailed(CorralError):
    """One request failed after corral's retries.

    Args:
        info: What went wrong, as a value.
        request_id: The ``id`` of the request that failed.
        attempts: How many HTTP attempts were made.
    """

    def __init__(self, info: ErrorInfo, *, request_id: str, attempts: int) -> None:
        self.info = info
        self.request_id = request_id
        self.attempts = attempts
        status = f" (HTTP {info.status_code})" if info.status_code is not None else ""
        super().__init__(
            f"request {request_id!r} failed: {info.kind.value}{status}: {info.message} "
            f"[attempts={attempts}]"
        )

    @property
    def kind(self) -> ErrorKind:
        """The failure's kind."""
        return self.info.kind


class RateLimitedError(RequestFailed):
    """The provider kept answering 429, or its quota is exhausted."""


class OverloadedError(RequestFailed):
    """The provider said it is overloaded (503, Anthropic's 529)."""


class ServerError(RequestFailed):
    """The provider failed with a 5xx or a conflict."""


class RequestTimeoutError(RequestFailed):
    """An attempt or the whole request's deadline timed out."""


class ConnectionFailedError(RequestFailed):
    """The connection could not be made or broke before a response arrived."""


class BadRequestError(RequestFailed):
    """The provider rejected the request as malformed (a final 4xx)."""


class ContextLengthError(BadRequestError):
    """The prompt plus ``max_tokens`` does not fit the model's context window."""


class ContentFilterError(BadRequestError):
    """The provider's content filter refused the request."""


class AuthenticationError(RequestFailed):
    """The API key is missing or wrong (401)."""


class PermissionDeniedError(RequestFailed):
    """The key may not use this model or endpoint (403)."""


class NotFoundError(RequestFailed):
    """The model or endpoint does not exist (404)."""


class InvalidResponseError(RequestFailed):
    """The provider's answer could not be understood, or a stream ended early."""


class BudgetExhaustedError(RequestFailed):
    """The client's budget cannot fit this request; it was not sent."""


class CircuitOpenError(RequestFailed):
    """The circuit breaker for this endpoint is open; the request was not sent."""


def exception_for(info: ErrorInfo, *, request_id: str, attempts: int) -> RequestFailed:
    """Build the exception that matches *info*'s kind.

    Args:
        info: The failure to raise.
        request_id: The request's id.
        attempts: How many HTTP attempts were made.
    """
    return KIND_POLICIES[info.kind].exception(info, request_id=request_id, attempts=attempts)


class KindPolicy(NamedTuple):
    """What one :class:`ErrorKind` means to every part of corral that reacts to failures.

    Args:
        retryable: Whether a failure of this kind is retried unless the provider says otherwise
            (``x-should-retry``, a documented error type).
        breaker: Whether it counts as the upstream failing, for the circuit breaker.
        overload: Whether it tells adaptive concurrency that the server is overloaded (the
            other failures say nothing about capacity).
        exception: The exception :meth:`corral.Client.complete` raises for it.
    """

    retryable: bool
    breaker: bool
    overload: bool
    exception: type[RequestFailed]


# The one table of error kinds. Every ErrorKind has a row: the check below fails at import
# when one is missing, and tests/test_error_kinds.py checks each row against the tree above.
KIND_POLICIES: Final[Mapping[str, KindPolicy]] = MappingProxyType(
    {
        # kind                        retryable breaker overload exception
        ErrorKind.RATE_LIMITED: KindPolicy(True, False, True, RateLimitedError),
        ErrorKind.QUOTA_EXHAUSTED: KindPolicy(False, False, False, RateLimitedError),
        ErrorKind.OVERLOADED: KindPolicy(True, True, True, OverloadedError),
        ErrorKind.SERVER_ERROR: KindPolicy(True, True, False, ServerError),
        ErrorKind.CONFLICT: KindPolicy(True, False, False, ServerError),
        ErrorKind.TIMEOUT: KindPolicy(True, True, True, RequestTimeoutError),
        ErrorKind.CONNECTION: KindPolicy(True, True, False, ConnectionFailedError),
        ErrorKind.BAD_REQUEST: KindPolicy(False, False, False, BadRequestError),
        ErrorKind.CONTEXT_LENGTH: KindPolicy(False, False, False, ContextLengthError),
        ErrorKind.CONTENT_FILTER: KindPolicy(False, False, False, ContentFilterError),
        ErrorKind.AUTHENTICATION: KindPolicy(False, False, False, AuthenticationError),
        ErrorKind.PERMISSION: KindPolicy(False, False, False, PermissionDeniedError),
        ErrorKind.NOT_FOUND: KindPolicy(False, False, False, NotFoundError),
        ErrorKind.INVALID_RESPONSE: KindPolicy(False, False, False, InvalidResponseError),
        ErrorKind.BUDGET_EXHAUSTED: KindPolicy(False, False, False, BudgetExhaustedError),
        ErrorKind.CIRCUIT_OPEN: KindPolicy(False, False, False, CircuitOpenError),
    }
)

if missing := [kind.value for kind in ErrorKind if kind not in KIND_POLICIES]:
    raise RuntimeError(f"corral._errors.KIND_POLICIES has no row for {missing}")


def default_retryable(kind: ErrorKind | str) -> bool:
    """Return whether a failure of *kind* is retried unless the provider says otherwise.

    Args:
        kind: The :class:`ErrorKind` (or its string value).
    """
    return KIND_POLICIES[kind].retryable


def check_number(
    value: object,
    name: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    above: bool = False,
    integer: bool = False,
    optional: bool = False,
) -> None:
    """Raise a :class:`ConfigurationError`, naming *name*, unless *value* is a usable number.

    Usable means a real number (never a bool), finite and within a float's range (so that
    arithmetic with the clock cannot overflow), and within the bounds. Another type (a bool, a
    float where an integer is needed) raises :class:`ConfigurationTypeError`.

    Args:
        value: The value given.
        name: The argument's name as the user wrote it, such as ``RetryPolicy.timeout``.
        minimum: The lowest allowed value.
        maximum: The highest allowed value.
        above: Whether *minimum* itself is excluded.
        integer: Whether the value must be an ``int``.
        optional: Whether None is allowed.
    """
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        kind = "an integer" if integer else "a number"
        accepted = f"{kind} or None" if optional else kind
        raise ConfigurationTypeError(f"{name} must be {accepted}, got {type(value).__name__}")
    if integer and not isinstance(value, int):
        raise ConfigurationTypeError(f"{name} must be an integer, got float {value!r}")
    try:
        finite = math.isfinite(value)
    except OverflowError:
        finite = False  # an int beyond a float's range
    if not finite:
        raise ConfigurationError(f"{name} must be a finite number, got {value!r:.100}")
    if minimum is not None and (value <= minimum if above else value < minimum):
        sign = ">" if above else ">="
        raise ConfigurationError(f"{name} must be {sign} {minimum:g}, got {value!r}")
    if maximum is not None and value > maximum:
        raise ConfigurationError(f"{name} must be <= {maximum:g}, got {value!r}")


def check_type(value: object, name: str, expected: type | tuple[type, ...], what: str) -> None:
    """Raise :class:`ConfigurationTypeError`, naming *name*, unless *value* is an *expected*.

    Args:
        value: The value given.
        name: The argument's name as the user wrote it.
        expected: The accepted type or types.
        what: The accepted types in words, for the message (``"a string"``).
    """
    if not isinstance(value, expected):
        raise ConfigurationTypeError(f"{name} must be {what}, got {type(value).__name__}")


class JobError(CorralError):
    """A JSONL job cannot start or continue. Records already written stay valid."""


class JobMismatchError(JobError):
    """The existing output was made from another input or with other parameters.

    Args:
        output: The output file.
        differences: One human-readable line per difference.
    """

    def __init__(self, output: str, differences: list[str]) -> None:
        self.output = output
        self.differences = differences
        listed = "\n".join(f"  - {d}" for d in differences)
        super().__init__(
            f"{output} belongs to a different job, so it cannot be resumed:\n{listed}\n"
            f"Use another output file, or pass --restart (restart=True) to start over; the "
            f"existing files are then kept with a .bak suffix."
        )


class CorruptOutputError(JobError):
    """A record in the middle of an output or errors file is malformed.

    Only the last line of a file may be torn (a crash mid-write); it is repaired on resume. A bad
    line followed by good ones means the file was edited or damaged, and corral will not guess.

    Args:
        path: The damaged file.
        line: The bad line's number, from 1.
        reason: What is wrong with it.
    """

    def __init__(self, path: str, line: int, reason: str) -> None:
        self.path = path
        self.line = line
        self.reason = reason
        super().__init__(
            f"{path}, line {line}: {reason}. Only a torn last line is repaired automatically; "
            f"fix or remove this line (or pass --restart to start over)."
        )


class OutputLostError(JobError):
    """An output or errors file holds less than its manifest says was written and synced.

    The file was truncated, replaced or deleted after the job wrote it. Resuming would send again,
    and pay again for, every request whose record is gone, so corral refuses.

    Args:
        path: The file that lost records.
        manifest: The manifest that counts them.
        expected: ``(records, bytes)`` the manifest says were synced.
        found: ``(records, bytes)`` the file holds now.
    """

    def __init__(
        self, path: str, manifest: str, expected: tuple[int, int], found: tuple[int, int]
    ) -> None:
        self.path = path
        self.manifest = manifest
        self.expected = expected
        self.found = found
        super().__init__(
            f"{path} holds {found[0]:,} record(s) ({found[1]:,} bytes), but {manifest} says "
            f"{expected[0]:,} record(s) ({expected[1]:,} bytes) were written: the file was "
            f"truncated, replaced or deleted since. Resuming would send those requests again "
            f"and pay for them twice. Restore the file, or pass --restart (restart=True) to start "
            f"over; the existing files are then kept with a .bak suffix."
        )


class JobLockedError(JobError):
    """Another run is writing to the same output file.

    Args:
        output: The output file.
    """

    def __init__(self, output: str) -> None:
        self.output = output
        super().__init__(f"another corral run is writing {output}; wait for it to finish")


class OutputWriteError(JobError):
    """Writing or syncing an output file failed; the job stopped.

    Every record counted as done is complete on disk. Fix the cause (free space, a failing disk)
    and rerun the same command to resume.

    Args:
        path: The file that could not be written.
        error: The operating system's error.
    """

    def __init__(self, path: str, error: OSError) -> None:
        self.path = path
        self.error = error
        reason = error.strerror or str(error)
        super().__init__(
            f"could not write {path}: {reason}. Results counted as done are safe on disk; "
            f"fix the cause and rerun the same command to resume."
        )


class ResponseRefused(httpx2.RemoteProtocolError):
    """A response the transport refuses by its caps: sent again, it would be refused again.

    A :class:`httpx2.RemoteProtocolError`, so code that handles httpx2's errors handles it;
    corral reports it as ``invalid_response`` and does not retry it.
    """
