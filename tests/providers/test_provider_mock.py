"""corral's own adapters end to end against the mock server (in process), for all three APIs:
answers, streams, retries under injected faults, truncation, and cache usage normalisation."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx2
import pytest
import stamina

import corral
from corral.providers import Anthropic, Gemini, OpenAI
from corral.testing._mock.server import MockServer
from corral.testing._mock.text import CACHE_MIN_TOKENS, CHARS_PER_TOKEN

pytestmark = pytest.mark.anyio

PROVIDERS: dict[str, Callable[[], Any]] = {
    "openai": lambda: OpenAI("http://mock/v1", api_key="sk-test"),
    "anthropic": lambda: Anthropic("http://mock", api_key="sk-test"),
    "gemini": lambda: Gemini("http://mock", api_key="sk-test"),
}


@pytest.fixture(autouse=True)
def _no_backoff_sleeps() -> Iterator[None]:
    """Remove stamina's backoff sleeps but keep each policy's attempt count."""
    with stamina.set_testing(True, attempts=100, cap=True):
        yield


@asynccontextmanager
async def client_for(name: str, mock: MockServer, **kwargs: Any) -> AsyncIterator[corral.Client]:
    http = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=mock))
    async with http, corral.Client(PROVIDERS[name](), http_client=http, **kwargs) as client:
        yield client


def ask(i: int, text: str | None = None, **kwargs: Any) -> corral.ChatRequest:
    return corral.ChatRequest(
        "model-x",
        [{"role": "user", "content": text or f"What is {i} + {2 * i}?"}],
        max_tokens=kwargs.pop("max_tokens", 16),
        id=f"q{i}",
        **kwargs,
    )


@pytest.mark.parametrize("name", sorted(PROVIDERS))
async def test_answers_streams_and_statistics(name: str) -> None:
    """complete, complete_stream and run(stream=True) all answer the arithmetic correctly."""
    mock = MockServer(seed=7)
    async with client_for(name, mock) as client:
        one = await client.complete(ask(3))
        async with client.complete_stream(ask(4)) as stream:
            deltas = [d async for d in stream]
        batch = await client.run([ask(i) for i in range(10, 20)], stream=True)
    assert one.content == "9"
    assert one.finish_reason == "stop"
    assert one.usage.input_tokens > 0
    assert one.usage.output_tokens > 0
    assert "".join(deltas) == stream.completion.content == "12"
    assert stream.completion.usage.output_tokens > 0
    assert [c.content for c in batch.completions] == [str(3 * i) for i in range(10, 20)]
    assert batch.statistics.succeeded == 10
    assert batch.statistics.ttft_p50_s is not None
    assert isinstance(batch.completions[0].raw, dict)


@pytest.mark.parametrize("name", sorted(PROVIDERS))
async def test_a_long_answer_stops_for_length(name: str) -> None:
    """An answer cut by max_tokens ends with finish_reason 'length', streamed or not."""
    mock = MockServer(seed=7)
    async with client_for(name, mock) as client:
        text = "Tell me a story about a harbor."
        whole = await client.complete(ask(1, text, max_tokens=5))
        batch = await client.run([ask(2, text, max_tokens=5)], stream=True)
    (streamed,) = batch.completions
    for result in (whole, streamed):
        assert result.finish_reason == "length"
        assert result.usage.output_tokens == 5


@pytest.mark.parametrize("name", sorted(PROVIDERS))
@pytest.mark.parametrize("stream", [False, True])
async def test_injected_faults_are_retried_to_success(name: str, stream: bool) -> None:
    """Under 429/5xx faults every request still succeeds; attempts equal the server's hits."""
    overloaded = 529 if name == "anthropic" else 503
    mock = MockServer(seed=11, error_rates={429: 0.2, 500: 0.1, overloaded: 0.1}, retry_after=0)
    policy = corral.RetryPolicy(attempts=10)
    async with client_for(name, mock, retry=policy, max_concurrency=8) as client:
        batch = await client.run([ask(i) for i in range(40)], stream=stream)
    assert batch.statistics.succeeded == 40
    assert batch.statistics.retries > 0
    for result in batch.results:
        assert result.attempts == mock.hits_for(result.id)
    statuses = mock.statistics().hits_by_status
    assert statuses[200] == 40
    assert sum(statuses.values()) == batch.statistics.attempts


@pytest.mark.parametrize("name", sorted(PROVIDERS))
async def test_truncated_answers_are_invalid_responses(name: str) -> None:
    """Streams cut before their final event and JSON cut in half both fail as invalid_response."""
    mock = MockServer(seed=5, truncate_rate=1.0)
    async with client_for(name, mock, retry=corral.RetryPolicy(attempts=3)) as client:
        streamed = await client.run([ask(i) for i in range(5)], stream=True)
        whole = await client.run([ask(i) for i in range(5, 10)])
    for batch in (streamed, whole):
        assert batch.statistics.failures_by_kind == {"invalid_response": 5}
        assert all(r.attempts == 1 for r in batch.results)


@pytest.mark.parametrize("name", sorted(PROVIDERS))
async def test_cached_prompts_normalise_the_same_way(name: str) -> None:
    """On a cache hit, input_tokens still counts the whole prompt; the cached part is split out."""
    mock = MockServer(seed=3)
    system = "You are precise. " * (CACHE_MIN_TOKENS * CHARS_PER_TOKEN // 17 + 10)

    def cached(i: int) -> corral.ChatRequest:
        return corral.ChatRequest(
            "model-x",
            [{"role": "system", "content": system}, {"role": "user", "content": "What is 1 + 1?"}],
            max_tokens=8,
            id=f"c{i}",
        )

    async with client_for(name, mock) as client:
        first = await client.complete(cached(1))
        second = await client.complete(cached(2))
    assert first.usage.input_tokens == second.usage.input_tokens > CACHE_MIN_TOKENS
    assert first.usage.cached_input_tokens == 0
    assert second.usage.cached_input_tokens >= CACHE_MIN_TOKENS
    assert second.usage.cached_input_tokens <= second.usage.input_tokens
    if name == "anthropic":
        # Only Anthropic reports cache writes, on the request that filled the cache.
        assert first.usage.cache_write_tokens == second.usage.cached_input_tokens


@pytest.mark.parametrize("name", ["openai", "gemini"])
async def test_embeddings_against_the_mock(name: str) -> None:
    """Embedding requests return one vector per input at the asked dimension."""
    from corral._models import EmbeddingRequest

    mock = MockServer(seed=3)
    async with client_for(name, mock) as client:
        result = await client.complete(EmbeddingRequest("embed-x", ["a", "b", "c"], dimensions=16))
    assert [len(v) for v in result.vectors] == [16, 16, 16]


@pytest.mark.parametrize("name", sorted(PROVIDERS))
async def test_a_daily_quota_is_final(name: str) -> None:
    """Each API's daily-quota 429 becomes quota_exhausted after one attempt, never retried."""
    mock = MockServer(seed=3, daily_quota=2)
    async with client_for(name, mock, retry=corral.RetryPolicy(attempts=5)) as client:
        batch = await client.run([ask(i) for i in range(4)])
    assert batch.statistics.succeeded == 2
    assert batch.statistics.failures_by_kind == {"quota_exhausted": 2}
    assert all(r.attempts == 1 for r in batch.failures)
