"""Tests for error classification, retry hints and the retry policy's validation."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import httpx2
import pytest
from hypothesis import given
from hypothesis import strategies as st

import corral
from corral import ErrorKind
from corral._flow.retry import classify_exception
from corral.providers import OpenAI
from corral.providers._headers import classify_status, parse_retry_after

STATUS_TABLE = [
    (400, ErrorKind.BAD_REQUEST, False),
    (401, ErrorKind.AUTHENTICATION, False),
    (403, ErrorKind.PERMISSION, False),
    (404, ErrorKind.NOT_FOUND, False),
    (408, ErrorKind.TIMEOUT, True),
    (409, ErrorKind.CONFLICT, True),
    (413, ErrorKind.BAD_REQUEST, False),
    (422, ErrorKind.BAD_REQUEST, False),
    (429, ErrorKind.RATE_LIMITED, True),
    (418, ErrorKind.BAD_REQUEST, False),
    (500, ErrorKind.SERVER_ERROR, True),
    (502, ErrorKind.SERVER_ERROR, True),
    (503, ErrorKind.OVERLOADED, True),
    (504, ErrorKind.TIMEOUT, True),
    (529, ErrorKind.OVERLOADED, True),
    (599, ErrorKind.SERVER_ERROR, True),
    (302, ErrorKind.INVALID_RESPONSE, False),
]


@pytest.mark.parametrize(("status", "kind", "retryable"), STATUS_TABLE)
def test_status_classification(status: int, kind: ErrorKind, retryable: bool) -> None:
    """Each HTTP status maps to its documented kind and retry decision."""
    assert classify_status(status) == (kind, retryable)


@pytest.mark.parametrize(("status", "kind", "retryable"), STATUS_TABLE)
def test_openai_adapter_uses_the_table(status: int, kind: ErrorKind, retryable: bool) -> None:
    """The OpenAI adapter classifies an error response like the table, keeping its message."""
    response = httpx2.Response(status, json={"error": {"message": "boom", "type": "x"}})
    info = OpenAI("http://127.0.0.1/v1").classify_error(response)
    assert (info.kind, info.retryable, info.status_code) == (kind, retryable, status)


def _req() -> httpx2.Request:
    return httpx2.Request("POST", "http://127.0.0.1/v1/chat/completions")


TRANSPORT_TABLE = [
    (httpx2.ConnectTimeout("t", request=_req()), ErrorKind.TIMEOUT),
    (httpx2.ReadTimeout("t", request=_req()), ErrorKind.TIMEOUT),
    (httpx2.WriteTimeout("t", request=_req()), ErrorKind.TIMEOUT),
    (httpx2.PoolTimeout("t", request=_req()), ErrorKind.TIMEOUT),
    (httpx2.ConnectError("refused", request=_req()), ErrorKind.CONNECTION),
    (httpx2.ReadError("reset", request=_req()), ErrorKind.CONNECTION),
    (httpx2.WriteError("pipe", request=_req()), ErrorKind.CONNECTION),
    (httpx2.RemoteProtocolError("closed", request=_req()), ErrorKind.CONNECTION),
    (ConnectionResetError(104, "reset"), ErrorKind.CONNECTION),
    (TimeoutError(), ErrorKind.TIMEOUT),
]


@pytest.mark.parametrize(("exc", "kind"), TRANSPORT_TABLE, ids=lambda v: type(v).__name__)
def test_transport_exceptions_are_retryable_kinds(exc: BaseException, kind: ErrorKind) -> None:
    """Timeouts and connection failures map to their kind and are retried."""
    info = classify_exception(exc)
    assert info.kind is kind
    assert info.retryable
    assert info.status_code is None


def test_decoding_errors_are_final() -> None:
    """A body that cannot be decoded is an invalid response, not retried."""
    info = classify_exception(httpx2.DecodingError("bad gzip", request=_req()))
    assert (info.kind, info.retryable) == (ErrorKind.INVALID_RESPONSE, False)


def test_non_transport_exceptions_are_bugs() -> None:
    """An exception that is not a transport failure is refused, so bugs propagate."""
    with pytest.raises(TypeError):
        classify_exception(KeyError("x"))


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "3"}, 3.0),
        ({"retry-after": "0.5"}, 0.5),
        ({"retry-after-ms": "250"}, 0.25),
        ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),
        ({"retry-after-ms": "nan", "retry-after": "9"}, 9.0),
        ({"retry-after": "-4"}, None),
        ({"retry-after": "NaN"}, None),
        ({"retry-after": "inf"}, None),
        ({"retry-after": "soon"}, None),
        ({"retry-after": ""}, None),
        ({"retry-after": "Wed, 21 Oct 2015 07:28:10 GMT"}, 10.0),
        ({"retry-after": "Wed, 21 Oct 2015 07:27:00 GMT"}, 0.0),
        ({}, None),
    ],
)
def test_retry_after_parsing(headers: dict[str, str], expected: float | None) -> None:
    """Retry hints are read in seconds, milliseconds or HTTP dates; hostile values are ignored."""
    now = datetime(2015, 10, 21, 7, 28, 0, tzinfo=UTC)
    assert parse_retry_after(httpx2.Headers(headers), now=now) == expected


@given(st.text(max_size=60))
def test_retry_after_never_crashes(value: str) -> None:
    """Any header text gives a finite non-negative wait or None, never an exception."""
    try:
        headers = httpx2.Headers({"retry-after": value, "retry-after-ms": value})
    except (UnicodeEncodeError, ValueError):
        return
    result = parse_retry_after(headers)
    assert result is None or (math.isfinite(result) and result >= 0)


@pytest.mark.parametrize(
    ("header", "status", "retryable"),
    [("true", 400, True), ("false", 500, False), ("false", 429, False), ("maybe", 500, True)],
)
def test_x_should_retry_overrides_the_status(header: str, status: int, retryable: bool) -> None:
    """The server's x-should-retry header overrides the status-based retry decision."""
    response = httpx2.Response(status, headers={"x-should-retry": header}, json={})
    assert OpenAI("http://127.0.0.1/v1").classify_error(response).retryable is retryable


@pytest.mark.parametrize(
    ("status", "code", "kind", "retryable"),
    [
        (400, "context_length_exceeded", ErrorKind.CONTEXT_LENGTH, False),
        (400, "content_filter", ErrorKind.CONTENT_FILTER, False),
        (429, "insufficient_quota", ErrorKind.QUOTA_EXHAUSTED, False),
        (429, "rate_limit_exceeded", ErrorKind.RATE_LIMITED, True),
    ],
)
def test_openai_error_codes_refine_the_kind(
    status: int, code: str, kind: ErrorKind, retryable: bool
) -> None:
    """OpenAI's error codes turn a generic 400/429 into the precise kind."""
    response = httpx2.Response(
        status, json={"error": {"message": "m", "type": "invalid_request_error", "code": code}}
    )
    info = OpenAI("http://127.0.0.1/v1").classify_error(response)
    assert (info.kind, info.retryable, info.provider_code) == (kind, retryable, code)


def test_non_json_error_bodies_keep_their_text() -> None:
    """An error body that is not JSON still yields a kind and shows the server's text."""
    response = httpx2.Response(502, text="<html>Bad gateway</html>")
    info = OpenAI("http://127.0.0.1/v1").classify_error(response)
    assert info.kind is ErrorKind.SERVER_ERROR
    assert "Bad gateway" in info.message


def test_redirects_are_reported_not_followed() -> None:
    """A redirect is a final error that names where it pointed."""
    response = httpx2.Response(302, headers={"location": "http://elsewhere.invalid/"})
    info = OpenAI("http://127.0.0.1/v1").classify_error(response)
    assert info.kind is ErrorKind.INVALID_RESPONSE
    assert not info.retryable
    assert "not followed" in info.message


@pytest.mark.parametrize(
    "kwargs",
    [
        {"attempts": 0},
        {"attempts": 1.5},
        {"timeout": 0},
        {"timeout": -1.0},
        {"timeout": math.nan},
        {"wait_initial": -1},
        {"max_retry_after": math.inf},
    ],
)
def test_bad_policies_are_refused(kwargs: dict[str, float]) -> None:
    """RetryPolicy rejects nonsensical values with a ConfigurationError naming the field."""
    with pytest.raises(corral.ConfigurationError, match=next(iter(kwargs))):
        corral.RetryPolicy(**kwargs)  # type: ignore[arg-type]
