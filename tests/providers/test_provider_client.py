"""The adapters inside the Client: refused requests, retry hints from bodies and headers in
virtual time, and failures reported inside 2xx answers."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
import stamina

import corral
from corral.providers import Anthropic, Gemini, OpenAI, Provider

pytestmark = pytest.mark.anyio

PAYLOADS = Path(__file__).parent / "payloads"


def recorded(provider: str, name: str) -> httpx2.Response:
    """Return the recorded answer of a payload file as a response."""
    data = json.loads((PAYLOADS / provider / f"{name}.json").read_text())["response"]
    return httpx2.Response(data["status"], headers=data.get("headers"), json=data["json"])


class Replay:
    """Answer the n-th request with the n-th response factory; count hits per path."""

    def __init__(self, *answers: Callable[[], httpx2.Response]) -> None:
        self.answers = list(answers)
        self.hits: Counter[str] = Counter()

    def handle(self, request: httpx2.Request) -> httpx2.Response:
        n = sum(self.hits.values())
        self.hits[request.url.path] += 1
        return self.answers[min(n, len(self.answers) - 1)]()

    def client(self, provider: Provider, **kwargs: object) -> corral.Client:
        http = httpx2.AsyncClient(transport=httpx2.MockTransport(self.handle))
        return corral.Client(provider, http_client=http, **kwargs)  # type: ignore[arg-type]


def chat(i: int = 1, **kwargs: Any) -> corral.ChatRequest:
    return corral.ChatRequest(
        "gemini-2.5-flash", [{"role": "user", "content": "hi"}], id=f"q{i}", **kwargs
    )


@pytest.fixture
def no_backoff() -> Iterator[None]:
    with stamina.set_testing(True, attempts=100, cap=True):
        yield


async def test_anthropic_without_max_tokens_fails_before_sending(no_backoff: None) -> None:
    """complete() raises InvalidRequestError; run() and stream() give bad_request, attempts 0."""
    server = Replay(lambda: recorded("anthropic", "chat-basic"))
    async with server.client(Anthropic("http://127.0.0.1:9", api_key="k")) as client:
        with pytest.raises(corral.InvalidRequestError, match="max_tokens"):
            await client.complete(chat(1))
        batch = await client.run([chat(2), chat(3, max_tokens=16)])
        async with client.stream([chat(4)]) as results:
            streamed = [r async for r in results]
        with pytest.raises(corral.InvalidRequestError, match="max_tokens"):
            async with client.complete_stream(chat(5)):
                pass  # pragma: no cover
        stats = client.statistics()
    refused, answered = batch.results
    assert isinstance(refused, corral.Failure)
    assert refused.error.kind is corral.ErrorKind.BAD_REQUEST
    assert "requires max_tokens" in refused.error.message
    assert refused.attempts == 0
    assert isinstance(answered, corral.Completion)
    assert answered.content == "9"
    assert [r.error.kind for r in streamed if isinstance(r, corral.Failure)] == ["bad_request"]
    assert server.hits == {"/v1/messages": 1}
    assert stats.failed == 2
    assert stats.succeeded == 1


def _cyclic() -> dict[str, Any]:
    loop: dict[str, Any] = {}
    loop["self"] = loop
    return loop


_NOT_JSON = {"set": {1, 2}, "bytes": b"bytes", "object": object(), "cycle": _cyclic()}


@pytest.mark.parametrize(
    ("provider", "where", "value"),
    [
        *(
            pytest.param(provider, "extra", value, id=f"{provider}-{name}")
            for provider in ("openai", "anthropic", "gemini")
            for name, value in _NOT_JSON.items()
        ),
        # Only OpenAI passes a message's own extra fields through.
        pytest.param("openai", "message", {1, 2}, id="openai-message-extra"),
    ],
)
async def test_a_body_that_is_not_json_is_refused_before_sending(
    no_backoff: None, provider: str, where: str, value: object
) -> None:
    """A non-JSON value in extra is a bad_request for that request alone; the batch goes on."""
    adapters: dict[str, Provider] = {
        "openai": OpenAI("http://127.0.0.1:9/v1", api_key="k"),
        "anthropic": Anthropic("http://127.0.0.1:9", api_key="k"),
        "gemini": Gemini("http://127.0.0.1:9", api_key="k"),
    }
    server = Replay(lambda: recorded(provider, "chat-basic"))

    def bad(i: int) -> corral.ChatRequest:
        if where == "extra":
            return chat(i, max_tokens=16, extra={"odd": value})
        message = corral.Message("user", "hi", extra={"odd": value})
        return corral.ChatRequest("gemini-2.5-flash", [message], id=f"q{i}", max_tokens=16)

    async with server.client(adapters[provider]) as client:
        with pytest.raises(corral.InvalidRequestError, match="not JSON") as raised:
            await client.complete(bad(1))
        batch = await client.run([bad(2), chat(3, max_tokens=16)])
        async with client.stream([bad(4)]) as results:
            streamed = [r async for r in results]
    assert isinstance(raised.value.__cause__, TypeError | ValueError | RecursionError)
    refused, answered = batch.results
    assert isinstance(refused, corral.Failure)
    assert refused.error.kind is corral.ErrorKind.BAD_REQUEST
    assert "must be a JSON value" in refused.error.message
    assert refused.attempts == 0
    assert isinstance(answered, corral.Completion)
    assert [r.error.kind for r in streamed if isinstance(r, corral.Failure)] == ["bad_request"]
    assert sum(server.hits.values()) == 1


@pytest.mark.virtual_time
async def test_gemini_body_retry_hint_is_honoured() -> None:
    """A 429 whose only hint is RetryInfo.retryDelay "3s" is retried exactly 3 s later."""
    server = Replay(
        lambda: recorded("gemini", "error-429-retry-info"),
        lambda: recorded("gemini", "chat-basic"),
    )
    provider = Gemini("http://127.0.0.1:9", api_key="k")
    policy = corral.RetryPolicy(attempts=3, wait_initial=10, wait_jitter=0)
    async with server.client(provider, retry=policy) as client:
        start = anyio.current_time()
        result = await client.complete(chat())
        elapsed = anyio.current_time() - start
    assert result.content == "9"
    assert result.attempts == 2
    assert sum(server.hits.values()) == 2
    assert elapsed == pytest.approx(3.0, abs=1e-3)


@pytest.mark.virtual_time
async def test_gemini_sub_second_retry_hint_is_honoured() -> None:
    """retryDelay "0.5s" waits half a second, not the policy's backoff."""
    server = Replay(
        lambda: recorded("gemini", "error-429-half-second"),
        lambda: recorded("gemini", "error-429-half-second"),
        lambda: recorded("gemini", "chat-basic"),
    )
    provider = Gemini("http://127.0.0.1:9", api_key="k")
    policy = corral.RetryPolicy(attempts=3, wait_initial=10, wait_jitter=0)
    async with server.client(provider, retry=policy) as client:
        start = anyio.current_time()
        result = await client.complete(chat())
    assert result.attempts == 3 == sum(server.hits.values())
    assert anyio.current_time() - start == pytest.approx(1.0, abs=1e-3)


@pytest.mark.virtual_time
async def test_gemini_retry_hint_beyond_the_deadline_fails_at_once() -> None:
    """A 3 s body hint against a 2 s deadline fails at once, without sleeping."""
    server = Replay(lambda: recorded("gemini", "error-429-retry-info"))
    provider = Gemini("http://127.0.0.1:9", api_key="k")
    async with server.client(provider, retry=corral.RetryPolicy(attempts=5, timeout=2)) as c:
        start = anyio.current_time()
        batch = await c.run([chat()])
    (failure,) = batch.results
    assert isinstance(failure, corral.Failure)
    assert failure.error.kind is corral.ErrorKind.RATE_LIMITED
    assert failure.error.retry_after_s == 3.0
    assert "deadline" in failure.error.message
    assert anyio.current_time() - start < 1e-3
    assert sum(server.hits.values()) == 1


async def test_gemini_daily_quota_is_not_retried(no_backoff: None) -> None:
    """A per-day QuotaFailure is quota_exhausted and final: one attempt only."""
    server = Replay(lambda: recorded("gemini", "error-daily-quota"))
    provider = Gemini("http://127.0.0.1:9", api_key="k")
    async with server.client(provider, retry=corral.RetryPolicy(attempts=5)) as client:
        with pytest.raises(corral.RateLimitedError) as info:
            await client.complete(chat())
    assert info.value.kind is corral.ErrorKind.QUOTA_EXHAUSTED
    assert info.value.attempts == 1


async def test_gemini_blocked_prompt_is_a_content_filter_failure(no_backoff: None) -> None:
    """A 200 with promptFeedback.blockReason and no candidates fails as content_filter."""
    server = Replay(lambda: recorded("gemini", "prompt-blocked"))
    provider = Gemini("http://127.0.0.1:9", api_key="k")
    async with server.client(provider) as client:
        batch = await client.run([chat()])
        with pytest.raises(corral.ContentFilterError, match="blocked the prompt"):
            await client.complete(chat(2))
    (failure,) = batch.results
    assert isinstance(failure, corral.Failure)
    assert failure.error.kind is corral.ErrorKind.CONTENT_FILTER
    assert failure.error.status_code == 200
    assert failure.attempts == 1


@pytest.mark.virtual_time
async def test_anthropic_529_is_retried_after_its_retry_after() -> None:
    """A 529 overloaded_error with retry-after: 3 is retried 3 s later and then succeeds."""
    server = Replay(
        lambda: recorded("anthropic", "error-529"), lambda: recorded("anthropic", "chat-basic")
    )
    provider = Anthropic("http://127.0.0.1:9", api_key="k")
    async with server.client(provider, retry=corral.RetryPolicy(attempts=2)) as client:
        start = anyio.current_time()
        result = await client.complete(chat(max_tokens=16))
    assert result.attempts == 2
    assert result.usage == corral.Usage(21, 1)
    assert anyio.current_time() - start == pytest.approx(3.0, abs=1e-3)
