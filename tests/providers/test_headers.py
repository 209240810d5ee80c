"""Reading rate-limit headers and telling a daily-quota 429 apart from a passing one."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corral import LimitInfo
from corral.providers._headers import (
    is_quota_exhausted,
    parse_duration,
    parse_rate_limit_headers,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("20ms", 0.02),
        ("1h2m3.5s", 3723.5),
        ("0s", 0.0),
        ("1.5s", 1.5),
        ("250us", 0.00025),
        ("250µs", 0.00025),
        ("100ns", 1e-7),
        ("7m12.345s", 432.345),
        ("2", 2.0),
        ("0.5", 0.5),
        (" 3s ", 3.0),
        ("48h", 86_400.0),
    ],
)
def test_openai_durations_parse_to_seconds(text: str, seconds: float) -> None:
    """Go-style durations and plain seconds become seconds, clamped to one day."""
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text", ["", "s", "1x", "-1s", "1s-", "nan", "inf", "-3", "1..5s", "1s 2m", "abc", "9" * 80]
)
def test_malformed_durations_give_none(text: str) -> None:
    """Garbage, negative and non-finite durations are rejected, not guessed."""
    assert parse_duration(text) is None


def test_openai_headers_give_limits_remaining_and_resets() -> None:
    """The x-ratelimit-* family fills the requests and tokens limits."""
    headers = {
        "X-RateLimit-Limit-Requests": "60",
        "x-ratelimit-remaining-requests": "59",
        "x-ratelimit-reset-requests": "1s",
        "x-ratelimit-limit-tokens": "150000",
        "x-ratelimit-remaining-tokens": "149984",
        "x-ratelimit-reset-tokens": "6m0s",
    }
    info = parse_rate_limit_headers(headers)
    assert info.limits == {
        "requests": LimitInfo(limit=60, remaining=59, reset=1.0),
        "tokens": LimitInfo(limit=150_000, remaining=149_984, reset=360.0),
    }


def test_anthropic_headers_use_the_date_header_as_reference() -> None:
    """RFC 3339 resets are turned into seconds against the response's own Date header."""
    headers = {
        "date": "Sat, 01 Jun 2024 12:00:00 GMT",
        "anthropic-ratelimit-requests-limit": "50",
        "anthropic-ratelimit-requests-remaining": "0",
        "anthropic-ratelimit-requests-reset": "2024-06-01T12:00:30Z",
        "anthropic-ratelimit-tokens-limit": "90000",
        "anthropic-ratelimit-tokens-remaining": "80000",
        "anthropic-ratelimit-tokens-reset": "2024-06-01T12:00:01.500000+00:00",
        "anthropic-ratelimit-input-tokens-limit": "80000",
        "anthropic-ratelimit-input-tokens-remaining": "72000",
        "anthropic-ratelimit-input-tokens-reset": "2024-06-01T12:00:06Z",
        "anthropic-ratelimit-output-tokens-limit": "16000",
        "anthropic-ratelimit-output-tokens-remaining": "15000",
        "anthropic-ratelimit-output-tokens-reset": "2024-06-01T11:59:00Z",
    }
    info = parse_rate_limit_headers(headers, wall_now=datetime(2000, 1, 1, tzinfo=UTC))
    assert info.limits == {
        "requests": LimitInfo(limit=50, remaining=0, reset=30.0),
        "tokens": LimitInfo(limit=90_000, remaining=80_000, reset=1.5),
        "input_tokens": LimitInfo(limit=80_000, remaining=72_000, reset=6.0),
        # A reset in the past means it has already happened.
        "output_tokens": LimitInfo(limit=16_000, remaining=15_000, reset=0.0),
    }


def test_anthropic_resets_fall_back_to_the_wall_clock_without_a_date_header() -> None:
    """Without a Date header, a reset timestamp is measured from the given wall-clock time."""
    headers = {"anthropic-ratelimit-requests-reset": "2024-06-01T12:01:00Z"}
    info = parse_rate_limit_headers(headers, wall_now=datetime(2024, 6, 1, 12, 0, tzinfo=UTC))
    assert info.limits["requests"].reset == 60.0


def test_no_rate_limit_headers_give_an_empty_result() -> None:
    """A response without rate-limit headers teaches nothing."""
    info = parse_rate_limit_headers({"content-type": "application/json"})
    assert not info
    assert info.limits == {}


@pytest.mark.parametrize("value", ["-5", "NaN", "inf", "1e400", "12abc", "", "0x10"])
def test_hostile_limit_values_are_dropped(value: str) -> None:
    """Negative, non-finite and garbage counts are left out, not trusted."""
    info = parse_rate_limit_headers(
        {"x-ratelimit-remaining-requests": value, "x-ratelimit-limit-requests": value}
    )
    assert "requests" not in info.limits


def test_huge_values_are_clamped() -> None:
    """A limit of 1e30 is clamped to a sane maximum, and a zero limit is ignored."""
    info = parse_rate_limit_headers(
        {"x-ratelimit-limit-requests": "1e30", "x-ratelimit-limit-tokens": "0"}
    )
    assert info.limits["requests"].limit == 1e12
    assert info.limits["tokens"].limit is None


header_names = st.sampled_from(
    [
        f"{prefix}-{field}-{name}"
        for prefix in ("x-ratelimit",)
        for field in ("limit", "remaining", "reset")
        for name in ("requests", "tokens")
    ]
    + [
        f"anthropic-ratelimit-{name}-{field}"
        for name in ("requests", "tokens", "input-tokens", "output-tokens")
        for field in ("limit", "remaining", "reset")
    ]
    + ["date", "retry-after"]
)
header_values = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        ["-1", "nan", "inf", "1e999", "0", "1h1h1h", "2024-13-45T99:99:99Z", "Mon, 99 Foo"]
    ),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.datetimes().map(lambda d: d.isoformat()),
)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(header_names, header_values, max_size=12))
def test_hostile_headers_never_crash_and_give_sane_numbers(headers: dict[str, str]) -> None:
    """Any header values parse without raising, into finite, non-negative, clamped numbers."""
    info = parse_rate_limit_headers(headers)
    for limit in info.limits.values():
        for value in (limit.limit, limit.remaining, limit.reset):
            assert value is None or 0 <= value <= 1e12
        assert limit.reset is None or limit.reset <= 86_400


@pytest.mark.parametrize(
    ("status", "headers", "body", "expected"),
    [
        # OpenAI: billing quota exhausted.
        (
            429,
            {},
            {"error": {"message": "You exceeded your current quota", "code": "insufficient_quota"}},
            True,
        ),
        (429, {}, {"error": {"type": "insufficient_quota", "message": "..."}}, True),
        # OpenAI: a per-minute limit, with a short hint.
        (
            429,
            {"retry-after": "2"},
            {
                "error": {
                    "message": "Rate limit reached for gpt-4o on tokens per min (TPM)",
                    "type": "requests",
                    "code": "rate_limit_exceeded",
                }
            },
            False,
        ),
        # OpenAI: requests per day.
        (
            429,
            {},
            {"error": {"message": "Rate limit reached on requests per day (RPD): Limit 200"}},
            True,
        ),
        # A daily message, but the server asks for a short wait: a passing limit.
        (429, {"retry-after": "5"}, {"error": {"message": "daily limit nearly reached"}}, False),
        # Gemini: a per-day QuotaFailure.
        (
            429,
            {},
            {
                "error": {
                    "code": 429,
                    "status": "RESOURCE_EXHAUSTED",
                    "message": "You exceeded your current quota.",
                    "details": [
                        {
                            "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                            "violations": [
                                {
                                    "quotaMetric": "generativelanguage.googleapis.com/"
                                    "generate_content_free_tier_requests",
                                    "quotaId": "GenerateRequestsPerDayPerProjectPerModel-FreeTier",
                                }
                            ],
                        },
                        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "9s"},
                    ],
                }
            },
            True,
        ),
        # Gemini: a per-minute QuotaFailure says "quota" too, but is a passing limit.
        (
            429,
            {},
            {
                "error": {
                    "code": 429,
                    "status": "RESOURCE_EXHAUSTED",
                    "message": "You exceeded your current quota.",
                    "details": [
                        {
                            "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                            "violations": [
                                {"quotaId": "GenerateRequestsPerMinutePerProjectPerModel"}
                            ],
                        }
                    ],
                }
            },
            False,
        ),
        # Anthropic: a daily limit.
        (
            429,
            {},
            {
                "type": "error",
                "error": {"type": "rate_limit_error", "message": "Daily token limit exceeded."},
            },
            True,
        ),
        # Anthropic: a per-minute limit.
        (
            429,
            {"retry-after": "13"},
            {
                "type": "error",
                "error": {
                    "type": "rate_limit_error",
                    "message": "Number of request tokens has exceeded your per-minute rate limit",
                },
            },
            False,
        ),
        # Not a 429 at all.
        (403, {}, {"error": {"code": "insufficient_quota"}}, False),
        (500, {}, None, False),
        # Odd bodies.
        (429, {}, None, False),
        (429, {}, "quota exceeded", False),
        (429, {}, [1, 2, 3], False),
        (429, {}, {"error": "quota"}, False),
        (429, {}, {"error": {"details": "not a list", "message": 7}}, False),
        (429, {"retry-after": "junk"}, {"message": "quota exhausted"}, True),
    ],
)
def test_quota_exhaustion_is_told_apart(
    status: int, headers: dict[str, str], body: Any, expected: bool
) -> None:
    """Daily and billing quotas fail fast; per-minute limits and non-429s do not."""
    assert is_quota_exhausted(status, headers, body) is expected


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(["error", "code", "type", "message", "details", "violations", "@type"])
            | st.text(max_size=8),
            children,
            max_size=4,
        )
    ),
    max_leaves=20,
)


@settings(max_examples=100, deadline=None)
@given(
    st.sampled_from([200, 400, 429, 500]),
    st.dictionaries(st.sampled_from(["retry-after", "x"]), st.text(max_size=10), max_size=2),
    json_values,
)
def test_quota_check_never_crashes_on_any_json(
    status: int, headers: dict[str, str], body: Any
) -> None:
    """Any JSON shape at all gives a plain True or False, never an exception."""
    assert is_quota_exhausted(status, headers, body) in (True, False)
