"""Embeddings through complete/run/stream for OpenAI and Gemini; Anthropic refuses them cleanly."""

from __future__ import annotations

import json
from collections import Counter

import httpx2
import pytest
from hypothesis import given
from hypothesis import strategies as st

import corral
from corral._models import EmbeddingRequest, EmbeddingResult
from corral.providers import Anthropic, Gemini, OpenAI, Provider
from corral.testing._mock.server import MockServer

pytestmark = pytest.mark.anyio


def mock_client(mock: MockServer) -> httpx2.AsyncClient:
    return httpx2.AsyncClient(transport=httpx2.ASGITransport(app=mock))


@pytest.mark.parametrize(
    "provider",
    [OpenAI("http://mock/v1", api_key="k"), Gemini("http://mock", api_key="k")],
    ids=["openai", "gemini"],
)
async def test_complete_returns_one_vector_per_input(provider: Provider) -> None:
    """complete() on an EmbeddingRequest returns an EmbeddingResult, one vector per text."""
    mock = MockServer(seed=1)
    async with mock_client(mock) as http, corral.Client(provider, http_client=http) as client:
        one = await client.complete(EmbeddingRequest("embed-model", "hello", id="e1"))
        many = await client.complete(
            EmbeddingRequest("embed-model", ["hello", "world", "hello"], dimensions=8)
        )
    assert isinstance(one, EmbeddingResult)
    assert one.ok
    assert one.id == "e1"
    assert len(one.vectors) == 1
    assert len(many.vectors) == 3
    assert all(len(v) == 8 for v in many.vectors)
    # The mock's vectors are a function of the text: equal texts, equal vectors.
    assert many.vectors[0] == many.vectors[2] != many.vectors[1]
    assert one.attempts == 1
    assert mock.hits_for("e1") == 1


async def test_gemini_uses_embed_content_for_one_text_and_batch_for_many() -> None:
    """One text goes to :embedContent, a sequence to :batchEmbedContents."""
    mock = MockServer(seed=1)
    provider = Gemini("http://mock", api_key="k")
    async with mock_client(mock) as http, corral.Client(provider, http_client=http) as client:
        await client.complete(EmbeddingRequest("gemini-embedding-001", "a"))
        await client.complete(EmbeddingRequest("gemini-embedding-001", ["a", "b"]))
    paths = mock.statistics().hits_by_path
    assert paths == {
        "/v1beta/models/gemini-embedding-001:embedContent": 1,
        "/v1beta/models/gemini-embedding-001:batchEmbedContents": 1,
    }


async def test_run_and_stream_mix_chat_and_embedding_requests() -> None:
    """run() and stream() take chat and embedding requests together; each gets its own result."""
    mock = MockServer(seed=2)
    requests: list[corral.ChatRequest | EmbeddingRequest] = []
    for i in range(6):
        if i % 2:
            requests.append(EmbeddingRequest("text-embedding-3-small", f"t{i}", id=f"r{i}"))
        else:
            requests.append(
                corral.ChatRequest("gpt-4o-mini", [{"role": "user", "content": "hi"}], id=f"r{i}")
            )
    provider = OpenAI("http://mock/v1", api_key="k")
    async with mock_client(mock) as http, corral.Client(provider, http_client=http) as client:
        batch = await client.run(requests)
        async with client.stream(requests) as results:
            streamed = [r async for r in results]
    assert [r.id for r in batch.results] == [f"r{i}" for i in range(6)]
    assert [type(r).__name__ for r in batch.results] == ["Completion", "EmbeddingResult"] * 3
    assert len(batch.embeddings) == 3
    assert len(batch.completions) == 3
    assert batch.statistics.succeeded == 6
    successes: list[corral.Completion | EmbeddingResult] = [*batch.completions, *batch.embeddings]
    assert batch.statistics.usage.input_tokens == sum(r.usage.input_tokens for r in successes)
    assert sorted(r.id for r in streamed) == sorted(r.id for r in batch.results)
    assert all(r.ok for r in streamed)


async def test_run_stream_true_leaves_embeddings_unstreamed() -> None:
    """stream=True streams chat requests only; embedding requests still get their vectors."""
    mock = MockServer(seed=2)
    provider = OpenAI("http://mock/v1", api_key="k")
    async with mock_client(mock) as http, corral.Client(provider, http_client=http) as client:
        batch = await client.run(
            [
                EmbeddingRequest("text-embedding-3-small", "x", id="e"),
                corral.ChatRequest("gpt-4o-mini", [{"role": "user", "content": "hi"}], id="c"),
            ],
            stream=True,
        )
    embedding, completion = batch.results
    assert isinstance(embedding, EmbeddingResult)
    assert isinstance(completion, corral.Completion)
    assert completion.ttft_s is not None


async def test_anthropic_has_no_embeddings() -> None:
    """Anthropic: complete() raises InvalidRequestError; run() gives a bad_request Failure."""
    hits: Counter[str] = Counter()

    def handler(request: httpx2.Request) -> httpx2.Response:
        hits[request.url.path] += 1
        return httpx2.Response(500)

    provider = Anthropic("http://127.0.0.1:9", api_key="k")
    http = httpx2.AsyncClient(transport=httpx2.MockTransport(handler))
    request = EmbeddingRequest("voyage-3", "hello", id="e1")
    async with http, corral.Client(provider, http_client=http) as client:
        with pytest.raises(corral.InvalidRequestError, match="anthropic has no embeddings API"):
            await client.complete(request)
        batch = await client.run([request])
        async with client.stream([request]) as results:
            streamed = [r async for r in results]
    (failure,) = batch.results
    assert isinstance(failure, corral.Failure)
    assert failure.error.kind is corral.ErrorKind.BAD_REQUEST
    assert failure.attempts == 0
    assert failure.id == "e1"
    assert streamed == [failure]
    assert batch.statistics.failures_by_kind == {"bad_request": 1}
    assert not hits


async def test_a_vector_count_mismatch_is_an_invalid_response() -> None:
    """An answer with fewer vectors than inputs is an invalid_response failure."""

    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, json={"data": [{"index": 0, "embedding": [1.0]}]})

    http = httpx2.AsyncClient(transport=httpx2.MockTransport(handler))
    provider = OpenAI("http://127.0.0.1:9/v1", api_key="k")
    async with http, corral.Client(provider, http_client=http) as client:
        with pytest.raises(corral.InvalidResponseError, match="2 embedding"):
            await client.complete(EmbeddingRequest("m", ["a", "b"]))


async def test_openai_embedding_body_is_what_the_api_documents() -> None:
    """The OpenAI body has model, input, encoding_format, dimensions, and extra fields."""
    seen: list[dict[str, object]] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(json.loads(request.content))
        return httpx2.Response(200, json={"data": [{"index": 0, "embedding": [0.5]}]})

    http = httpx2.AsyncClient(transport=httpx2.MockTransport(handler))
    provider = OpenAI("http://127.0.0.1:9/v1", api_key="k")
    async with http, corral.Client(provider, http_client=http) as client:
        await client.complete(EmbeddingRequest("m", "a", dimensions=1, extra={"user": "u1"}))
    assert seen == [
        {"model": "m", "input": "a", "encoding_format": "float", "dimensions": 1, "user": "u1"}
    ]


def test_embedding_request_validates_its_fields() -> None:
    """Empty input, non-string items and a non-positive dimension count are refused."""
    with pytest.raises(ValueError, match="empty"):
        EmbeddingRequest("m", [])
    with pytest.raises(TypeError, match="string"):
        EmbeddingRequest("m", ["a", 3])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="dimensions"):
        EmbeddingRequest("m", "a", dimensions=0)
    with pytest.raises(ValueError, match="model"):
        EmbeddingRequest("", "a")
    assert EmbeddingRequest("m", ["a", "b"]).input == ("a", "b")
    assert EmbeddingRequest("m", "a").texts == ["a"]


def test_embedding_request_from_openai_keeps_extra_fields() -> None:
    """from_openai maps model, input and dimensions and keeps the rest in extra."""
    request = EmbeddingRequest.from_openai(
        {"model": "m", "input": ["a"], "dimensions": 4, "encoding_format": "base64"}, id="x"
    )
    assert request == EmbeddingRequest(
        "m", ("a",), dimensions=4, id="x", extra={"encoding_format": "base64"}
    )


_floats = st.floats(allow_nan=False, allow_infinity=False, width=32)
_text = st.text(max_size=20)
_usage = st.builds(corral.Usage, *(st.integers(0, 10**9) for _ in range(5)))


@given(
    st.builds(
        EmbeddingRequest,
        st.text(min_size=1, max_size=10),
        st.one_of(_text, st.lists(_text, min_size=1, max_size=4)),
        dimensions=st.none() | st.integers(1, 4096),
        id=st.text(min_size=1, max_size=10),
        extra=st.dictionaries(st.text(max_size=5), st.integers()),
    )
)
def test_embedding_request_round_trips_through_json(request: EmbeddingRequest) -> None:
    """An EmbeddingRequest survives to_json / from_json unchanged."""
    assert corral.from_json(corral.to_json(request), EmbeddingRequest) == request


@given(
    st.builds(
        EmbeddingResult,
        st.text(min_size=1, max_size=10),
        st.text(max_size=10),
        st.lists(st.lists(_floats, max_size=4), max_size=3),
        _usage,
        cost_usd=st.none() | st.floats(0, 10, allow_nan=False),
        latency_s=st.floats(0, 100, allow_nan=False),
        attempts=st.integers(0, 10),
    )
)
def test_embedding_result_round_trips_as_a_result(result: EmbeddingResult) -> None:
    """An EmbeddingResult read back as a Result is an equal EmbeddingResult."""
    back: corral.Result = corral.from_json(corral.to_json(result), corral.Result)  # type: ignore[arg-type]
    assert isinstance(back, EmbeddingResult)
    assert back == result


@given(
    ttft=st.none() | st.floats(0, 100, allow_nan=False),
    gaps=st.lists(st.floats(0, 10, allow_nan=False), max_size=5),
)
def test_streamed_completion_round_trips_as_a_result(ttft: float | None, gaps: list[float]) -> None:
    """A Completion with TTFT and gaps reads back as an equal Completion."""
    completion = corral.Completion(
        "c", "m", "text", "stop", corral.Usage(1, 2), ttft_s=ttft, inter_token_gaps_s=gaps
    )
    back: corral.Result = corral.from_json(corral.to_json(completion), corral.Result)  # type: ignore[arg-type]
    assert isinstance(back, corral.Completion)
    assert back == completion
    assert back.inter_token_gaps_s == tuple(gaps)
