"""The conformance kit against the recorded payloads: every built-in adapter passes, the three
map the same exchanges to the same normalised results, and the kit catches broken adapters."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx2
import pytest

import corral
from corral.providers import Anthropic, Gemini, OpenAI, Provider, ProviderError
from corral.providers._anthropic import parse_usage as anthropic_usage
from corral.testing._conformance import (
    Case,
    RecordedResponse,
    check_provider,
    load_cases,
    render_events,
)

PAYLOADS = Path(__file__).parent / "payloads"
KEY = "sk-canary-7f3a9c1e5b"
PROVIDERS: dict[str, Any] = {
    "openai": lambda: OpenAI("https://api.openai.com/v1", api_key=KEY),
    "anthropic": lambda: Anthropic("https://api.anthropic.com", api_key=KEY),
    "gemini": lambda: Gemini("https://generativelanguage.googleapis.com", api_key=KEY),
}


def cases(provider: str) -> dict[str, Case]:
    return {c.name.removeprefix(f"{provider}-"): c for c in load_cases(PAYLOADS / provider)}


def outcome(provider: Provider, case: Case) -> Any:
    """Parse a case's recorded answer the way the client does: a result or an error kind."""
    if case.stream:
        assert isinstance(case.request, corral.ChatRequest)
        built = provider.build_stream_request(case.request)  # type: ignore[attr-defined]
        response = case.response.to_httpx(built)
        parser = provider.stream_parser(case.request)  # type: ignore[attr-defined]
        try:
            text = "".join(parser.feed(e) for e in httpx2.EventSource(response))
            result = parser.result()
        except ProviderError as exc:
            return exc.info.kind
        except corral.providers.InvalidResponse:
            return corral.ErrorKind.INVALID_RESPONSE
        assert text == result.content
        return (result.content, result.finish_reason, result.usage)
    assert isinstance(case.request, corral.ChatRequest)
    built = provider.build_request(case.request)
    response = case.response.to_httpx(built)
    if response.status_code >= 400:
        return provider.classify_error(response).kind
    result = provider.parse_response(case.request, response)
    return (result.content, result.finish_reason, result.usage)


@pytest.mark.parametrize("name", sorted(PROVIDERS))
def test_builtin_adapter_passes_the_kit(name: str) -> None:
    """Every recorded case of a built-in adapter conforms, credentials checks included."""
    loaded = load_cases(PAYLOADS / name)
    report = check_provider(PROVIDERS[name](), loaded, api_key=KEY)
    assert report.passed
    assert [o.name for o in report.outcomes] == [c.name for c in loaded]
    assert len(loaded) >= 19
    kinds = {c.expect.kind for c in loaded if c.expect.kind is not None}
    # Each provider's error bodies cover at least these kinds.
    assert {
        corral.ErrorKind.BAD_REQUEST,
        corral.ErrorKind.AUTHENTICATION,
        corral.ErrorKind.PERMISSION,
        corral.ErrorKind.NOT_FOUND,
        corral.ErrorKind.RATE_LIMITED,
        corral.ErrorKind.SERVER_ERROR,
        corral.ErrorKind.OVERLOADED,
        corral.ErrorKind.CONTEXT_LENGTH,
        corral.ErrorKind.INVALID_RESPONSE,
    } <= kinds


# What each exchange, recorded once per API, must normalise to, for all three adapters.
SAME_RESULT: dict[str, Any] = {
    "chat-basic": ("9", "stop", corral.Usage(21, 1)),
    "chat-length": ("Once upon a time", "length", corral.Usage(12, 5)),
    "chat-tool-call": ("", "tool_calls", corral.Usage(60, 15)),
    "chat-tool-result": ("18°C in Paris.", "stop", corral.Usage(90, 8)),
    "stream-ok": ("Hello, world", "stop", corral.Usage(12, 3)),
    "stream-truncated": corral.ErrorKind.INVALID_RESPONSE,
    "error-401": corral.ErrorKind.AUTHENTICATION,
    "error-403": corral.ErrorKind.PERMISSION,
    "error-404": corral.ErrorKind.NOT_FOUND,
    "error-429": corral.ErrorKind.RATE_LIMITED,
    "error-500": corral.ErrorKind.SERVER_ERROR,
    "error-context": corral.ErrorKind.CONTEXT_LENGTH,
}
# Gemini's 429 recording is named for the retry hint it carries.
ALIASES = {("gemini", "error-429"): "error-429-retry-info"}


@pytest.mark.parametrize("scenario", sorted(SAME_RESULT))
def test_the_three_adapters_agree_on_the_same_exchange(scenario: str) -> None:
    """The same exchange, recorded in each API's own shape, normalises to the same result."""
    results = {}
    for name in PROVIDERS:
        recorded = cases(name).get(ALIASES.get((name, scenario), scenario))
        if recorded is not None:
            results[name] = outcome(PROVIDERS[name](), recorded)
    assert len(results) >= 2
    assert results == dict.fromkeys(results, SAME_RESULT[scenario])


def test_cache_heavy_usage_matches_hand_computed_totals() -> None:
    """Cache-heavy answers of all three APIs normalise to the totals computed by hand."""
    openai = outcome(PROVIDERS["openai"](), cases("openai")["chat-cache-heavy"])[2]
    anthropic = outcome(PROVIDERS["anthropic"](), cases("anthropic")["chat-cache-heavy"])[2]
    gemini = outcome(PROVIDERS["gemini"](), cases("gemini")["chat-cache-heavy"])[2]
    deepseek = outcome(PROVIDERS["openai"](), cases("openai")["chat-deepseek-cache"])[2]
    # OpenAI: prompt_tokens 2006 already includes cached_tokens 1920; completion 300 includes
    # reasoning 128.
    assert openai == corral.Usage(2006, 300, 1920, 0, 128)
    # DeepSeek: hit 1920 + miss 86 = prompt 2006.
    assert deepseek == corral.Usage(1920 + 86, 300, 1920)
    # Anthropic: 50 uncached + 1920 read + 36 written = 2006 input; output 300 as is.
    assert anthropic == corral.Usage(50 + 1920 + 36, 300, 1920, 36, 0)
    # Gemini: promptTokenCount 2006 includes the 1920 cached; output = 172 candidates + 128
    # thoughts; input + output = totalTokenCount 2306.
    assert gemini == corral.Usage(2006, 172 + 128, 1920, 0, 128)
    for usage in (openai, anthropic, gemini, deepseek):
        assert usage.total_tokens == 2306


def test_kit_flags_an_adapter_that_puts_the_key_in_the_url() -> None:
    """An adapter that sends the key as ?key= fails the kit with a message saying so."""

    class KeyInUrl(Gemini):
        __slots__ = ()

        def build_request(self, request: corral.ChatRequest) -> httpx2.Request:
            built = super().build_request(request)
            return httpx2.Request(
                "POST",
                built.url.copy_add_param("key", KEY),
                headers=built.headers,
                content=built.content,
            )

    with pytest.raises(AssertionError) as info:
        check_provider(KeyInUrl(api_key=KEY), [cases("gemini")["chat-basic"]], api_key=KEY)
    message = str(info.value)
    assert "gemini-chat-basic" in message
    assert "'key' query parameter" in message
    assert "API key appears in the request URL" in message
    assert KEY not in message


def test_kit_flags_wrong_usage_normalisation(monkeypatch: pytest.MonkeyPatch) -> None:
    """An Anthropic usage parser that forgets the cache tokens fails the cache-heavy case."""

    def forgetful(raw: Any) -> corral.Usage:
        usage = anthropic_usage(raw)
        return corral.Usage(raw["input_tokens"], usage.output_tokens, usage.cached_input_tokens)

    monkeypatch.setattr("corral.providers._anthropic.parse_usage", forgetful)
    report = check_provider(
        PROVIDERS["anthropic"](), list(cases("anthropic").values()), raise_on_failure=False
    )
    failed = {o.name: o.problems for o in report.failures}
    assert "anthropic-chat-cache-heavy" in failed
    assert any("does not include the cached" in p for p in failed["anthropic-chat-cache-heavy"])
    assert "anthropic-chat-basic" not in failed
    assert "FAILED anthropic-chat-cache-heavy" in str(report)


def test_kit_flags_a_truncated_stream_taken_for_a_success() -> None:
    """A parser that reports success without the final event fails the truncated-stream case."""

    class Lenient(OpenAI):
        __slots__ = ()

        def stream_parser(self, request: corral.ChatRequest) -> Any:
            parser = super().stream_parser(request)
            parser._done = True  # claims the stream finished whatever arrived
            return parser

    report = check_provider(
        Lenient(api_key=KEY), [cases("openai")["stream-truncated"]], raise_on_failure=False
    )
    (failure,) = report.failures
    assert any("expected a invalid_response failure" in p for p in failure.problems)


def test_kit_flags_a_wrong_error_mapping() -> None:
    """An adapter that calls every error retryable fails the final-error cases."""

    class AlwaysRetry(Anthropic):
        __slots__ = ()

        def classify_error(self, response: httpx2.Response) -> corral.ErrorInfo:
            info = super().classify_error(response)
            return corral.ErrorInfo(
                info.kind, info.message, info.status_code, True, info.retry_after_s
            )

    report = check_provider(
        AlwaysRetry(api_key=KEY), list(cases("anthropic").values()), raise_on_failure=False
    )
    failed = {o.name for o in report.failures}
    assert "anthropic-error-401" in failed
    assert "anthropic-error-529" not in failed


def test_kit_flags_a_repr_that_shows_the_key() -> None:
    """An adapter whose repr shows the key fails the kit."""

    class Leaky(OpenAI):
        __slots__ = ()

        def __repr__(self) -> str:
            return f"Leaky({self._api_key.reveal()})"

    report = check_provider(Leaky(api_key=KEY), [], api_key=KEY, raise_on_failure=False)
    assert not report.passed
    assert report.failures[0].problems == ("the adapter's repr shows the API key",)


def test_kit_reports_an_adapter_that_crashes() -> None:
    """An adapter that raises while parsing is reported, not propagated."""

    class Crashing(OpenAI):
        __slots__ = ()

        def parse_response(self, request: corral.ChatRequest, response: httpx2.Response) -> Any:
            raise KeyError("choices")

    report = check_provider(
        Crashing(api_key=KEY), [cases("openai")["chat-basic"]], raise_on_failure=False
    )
    assert report.failures[0].problems == ("raised KeyError: 'choices'",)


def test_load_cases_names_the_file_of_a_bad_case(tmp_path: Path) -> None:
    """A case without a request fails to load with the file and case named."""
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"name": "oops", "response": {"status": 200}}]))
    with pytest.raises(ValueError, match=r"bad\.json: bad case 'oops'"):
        load_cases(bad)


def test_rendered_events_read_back_through_httpx2() -> None:
    """render_events writes an event stream that httpx2's SSE reader reads back exactly."""
    events: list[dict[str, Any]] = [
        {"event": "message_start", "data": {"a": 1}},
        {"data": "line one\nline two"},
        {"data": "[DONE]"},
    ]
    response = RecordedResponse(
        200, {"content-type": "text/event-stream"}, render_events(events)
    ).to_httpx(httpx2.Request("POST", "http://x"))
    read = [(e.event, e.data) for e in httpx2.EventSource(response)]
    assert read == [
        ("message_start", '{"a":1}'),
        ("message", "line one\nline two"),
        ("message", "[DONE]"),
    ]
