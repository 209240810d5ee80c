"""One rule for argument errors, checked on every public constructor a user calls.

The rule (written in ``corral._errors`` and docs/concepts.md): an argument of the wrong type
raises ``TypeError``, one of the right type with a wrong value raises ``ValueError``; both are
:class:`corral.ConfigurationError`, and the message names the argument, what it accepts and
what it got (the value, or only the type for a wrong type, so that a key passed in the wrong
place is never echoed).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from corral import (
    AdaptiveConcurrency,
    Budget,
    ChatRequest,
    CircuitBreaker,
    Client,
    ConfigurationError,
    EmbeddingRequest,
    Message,
    ModelPrice,
    Pricing,
    RateLimit,
    RetryPolicy,
)
from corral.providers import Anthropic, Gemini, OpenAI

KEY = "sk-test-0123456789"
MESSAGES = [Message("user", "hi")]


def _chat(**kwargs: Any) -> ChatRequest:
    return ChatRequest(**{"model": "m", "messages": MESSAGES, **kwargs})


def _embed(**kwargs: Any) -> EmbeddingRequest:
    return EmbeddingRequest(**{"model": "m", "input": "x", **kwargs})


def _message(**kwargs: Any) -> Message:
    return Message(**{"role": "user", "content": "hi", **kwargs})


def _openai(**kwargs: Any) -> OpenAI:
    return OpenAI(**{"api_key": KEY, **kwargs})


def _anthropic(**kwargs: Any) -> Anthropic:
    return Anthropic(**{"api_key": KEY, **kwargs})


def _gemini(**kwargs: Any) -> Gemini:
    return Gemini(**{"api_key": KEY, **kwargs})


def _client(**kwargs: Any) -> Client:
    return Client(OpenAI(api_key=KEY), **kwargs)


# (constructor, argument, a wrong type, a wrong value or None when every value of the right type
# is accepted, what the wrong value's message shows). Arguments that may hold a key by mistake
# (URLs) never show their value.
CASES: list[tuple[Callable[..., object], str, object, object, str]] = [
    (RetryPolicy, "attempts", "3", 0, "0"),
    (RetryPolicy, "timeout", "1", -1.0, "-1.0"),
    (RetryPolicy, "max_retry_after", [1], float("nan"), "nan"),
    (RateLimit, "requests_per_minute", "60", -1, "-1"),
    (RateLimit, "burst", None, 60, "60"),
    (RateLimit, "learn_from_headers", "yes", None, ""),
    (RateLimit, "token_counter", 3, None, ""),
    (CircuitBreaker, "failure_threshold", 2.5, 0, "0"),
    (CircuitBreaker, "reset_timeout", "30", 0, "0"),
    (CircuitBreaker, "wait", 1, None, ""),
    (Budget, "max_cost_usd", "1", -1.0, "-1.0"),
    (Budget, "max_tokens", 1.5, -1, "-1"),
    (Pricing, "models", ["gpt"], {"": ModelPrice(1.0, 1.0)}, "''"),
    (Pricing, "fallback", 3, {"input_per_mtok": -1.0, "output_per_mtok": 1.0}, "-1"),
    (AdaptiveConcurrency, "max_concurrency", "8", 0, "0"),
    (AdaptiveConcurrency, "initial", 2.0, 0, "0"),
    (AdaptiveConcurrency, "decrease", "0.5", 1.5, "1.5"),
    (_chat, "model", 1, "", "''"),
    (_chat, "max_tokens", "5", 0, "0"),
    (_chat, "temperature", "hot", -1.0, "-1.0"),
    (_chat, "messages", 1, [], "empty"),
    (_chat, "stop", 1, None, ""),
    (_chat, "id", 1, "", "''"),
    (_chat, "extra", [], None, ""),
    (_embed, "model", None, "", "''"),
    (_embed, "dimensions", "3", 0, "0"),
    (_embed, "input", 1, [], "empty"),
    (_message, "role", 1, "wizard", "'wizard'"),
    (_message, "content", 1, None, ""),
    (_message, "name", 1, None, ""),
    (_openai, "base_url", 1, "ftp://example.com", "http"),
    (OpenAI, "api_key", 1, None, ""),
    (_openai, "organization", 1, None, ""),
    (_anthropic, "base_url", 1, "example.com", "http"),
    (_anthropic, "headers", ["x"], None, ""),
    (_gemini, "api_version", 1, "", "''"),
    (_client, "max_concurrency", 8.0, "8", "'8'"),
    (_client, "request_timeout", "60", 0, "0"),
    (_client, "transport", 1, "quic", "'quic'"),
    (_client, "retry", 5, None, ""),
    (_client, "http_client", "x", None, ""),
]
VALUE_CASES = [case for case in CASES if case[3] is not None]


def _ids(case: tuple[Callable[..., object], str, object, object, str]) -> str:
    return f"{getattr(case[0], '__name__', '?').lstrip('_')}.{case[1]}"


@pytest.mark.parametrize("case", CASES, ids=[_ids(c) for c in CASES])
def test_a_wrong_type_raises_a_type_error(
    case: tuple[Callable[..., object], str, object, object, str],
) -> None:
    """A wrong type is a TypeError and a ConfigurationError, naming the argument and the type."""
    build, name, wrong_type, _, _ = case
    with pytest.raises(TypeError) as caught:
        build(**{name: wrong_type})
    assert isinstance(caught.value, ConfigurationError)
    message = str(caught.value)
    assert name in message
    assert type(wrong_type).__name__ in message


@pytest.mark.parametrize("case", VALUE_CASES, ids=[_ids(c) for c in VALUE_CASES])
def test_a_wrong_value_raises_a_value_error(
    case: tuple[Callable[..., object], str, object, object, str],
) -> None:
    """A wrong value is a ConfigurationError (a ValueError, not a TypeError) naming both."""
    build, name, _, wrong_value, shown = case
    with pytest.raises(ConfigurationError) as caught:
        build(**{name: wrong_value})
    assert isinstance(caught.value, ValueError)
    assert not isinstance(caught.value, TypeError)
    message = str(caught.value)
    assert name in message
    assert shown in message


def test_a_key_given_as_a_wrong_type_is_not_echoed() -> None:
    """A key passed where a number goes is named by its type only, never shown."""
    with pytest.raises(TypeError) as caught:
        RetryPolicy(timeout=KEY)  # type: ignore[arg-type]
    assert KEY not in str(caught.value)
