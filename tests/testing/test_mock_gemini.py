"""The mock server's Gemini API: generateContent, streaming, embeddings, errors and retry hints."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from corral.testing._mock.server import MockServer
from corral.testing._mock.text import count_mock_tokens, mock_answer

pytestmark = pytest.mark.anyio

HEADERS = {"x-goog-api-key": "AIza-test"}
BASE = "/v1beta/models/gemini-2.5-flash"
ParseSSE = Callable[[str], list[tuple[str | None, Any]]]


def _request(text: str, **config: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"contents": [{"role": "user", "parts": [{"text": text}]}]}
    if config:
        body["generationConfig"] = config
    return body


async def test_generate_content_has_candidates_and_usage_metadata(connect: Any) -> None:
    """generateContent answers with a model candidate, STOP and usageMetadata without zeros."""
    body = _request("What is 2 + 2?") | {"systemInstruction": {"parts": [{"text": "Be exact."}]}}
    async with connect(MockServer()) as client:
        response = await client.post(f"{BASE}:generateContent", json=body, headers=HEADERS)
    assert response.status_code == 200
    data = response.json()
    (candidate,) = data["candidates"]
    assert candidate["content"] == {"parts": [{"text": "4"}], "role": "model"}
    assert candidate["finishReason"] == "STOP"
    usage = data["usageMetadata"]
    prompt = count_mock_tokens("Be exact.") + count_mock_tokens("What is 2 + 2?")
    assert usage["promptTokenCount"] == prompt
    assert usage["candidatesTokenCount"] == 1
    assert usage["totalTokenCount"] == prompt + 1
    assert "cachedContentTokenCount" not in usage
    assert "thoughtsTokenCount" not in usage
    assert data["modelVersion"] == "gemini-2.5-flash"
    assert data["responseId"]


async def test_max_output_tokens_gives_max_tokens_finish(connect: Any) -> None:
    """maxOutputTokens cuts the answer and the finish reason is MAX_TOKENS."""
    async with connect(MockServer()) as client:
        response = await client.post(
            f"{BASE}:generateContent",
            json=_request("Describe a harbor.", maxOutputTokens=2),
            headers=HEADERS,
        )
    (candidate,) = response.json()["candidates"]
    assert candidate["finishReason"] == "MAX_TOKENS"
    assert count_mock_tokens(candidate["content"]["parts"][0]["text"]) == 2
    assert response.json()["usageMetadata"]["candidatesTokenCount"] == 2


async def test_thinking_models_report_thoughts_tokens(connect: Any) -> None:
    """A thinking model reports thoughtsTokenCount, included in totalTokenCount."""
    async with connect(MockServer()) as client:
        response = await client.post(
            "/v1beta/models/gemini-2.5-thinking:generateContent",
            json=_request("Hi"),
            headers=HEADERS,
        )
    usage = response.json()["usageMetadata"]
    assert usage["thoughtsTokenCount"] > 0
    assert usage["totalTokenCount"] == (
        usage["promptTokenCount"] + usage["candidatesTokenCount"] + usage["thoughtsTokenCount"]
    )


async def test_sse_stream_carries_the_same_text(connect: Any, parse_sse: ParseSSE) -> None:
    """streamGenerateContent?alt=sse sends text chunks; the last has finishReason and usage."""
    async with connect(MockServer()) as client:
        plain = await client.post(f"{BASE}:generateContent", json=_request("Hi"), headers=HEADERS)
        response = await client.post(
            f"{BASE}:streamGenerateContent?alt=sse", json=_request("Hi"), headers=HEADERS
        )
    assert response.headers["content-type"].startswith("text/event-stream")
    assert "\r\n\r\n" in response.text
    chunks = [data for _, data in parse_sse(response.text)]
    assert len(chunks) > 1
    text = "".join(chunk["candidates"][0]["content"]["parts"][0]["text"] for chunk in chunks)
    assert text == plain.json()["candidates"][0]["content"]["parts"][0]["text"]
    assert all("finishReason" not in chunk["candidates"][0] for chunk in chunks[:-1])
    assert chunks[-1]["candidates"][0]["finishReason"] == "STOP"
    assert chunks[-1]["usageMetadata"] == plain.json()["usageMetadata"]


async def test_stream_without_alt_is_a_json_array(connect: Any) -> None:
    """streamGenerateContent without alt=sse streams one JSON array of responses."""
    async with connect(MockServer()) as client:
        response = await client.post(
            f"{BASE}:streamGenerateContent", json=_request("Hi"), headers=HEADERS
        )
    chunks = json.loads(response.text)
    assert isinstance(chunks, list)
    text = "".join(chunk["candidates"][0]["content"]["parts"][0]["text"] for chunk in chunks)
    assert text == mock_answer("Hi", 0)


async def test_embed_and_batch_embed_agree(connect: Any) -> None:
    """embedContent and batchEmbedContents give the same vector, at the asked dimensionality."""
    content = {"parts": [{"text": "alpha"}]}
    async with connect(MockServer()) as client:
        one = await client.post(
            "/v1beta/models/text-embedding-004:embedContent",
            json={"content": content, "outputDimensionality": 16},
            headers=HEADERS,
        )
        batch = await client.post(
            "/v1beta/models/text-embedding-004:batchEmbedContents",
            json={
                "requests": [
                    {"model": "models/text-embedding-004", "content": content},
                    {
                        "model": "models/text-embedding-004",
                        "content": content,
                        "outputDimensionality": 16,
                    },
                ]
            },
            headers=HEADERS,
        )
    vector = one.json()["embedding"]["values"]
    full, short = (item["values"] for item in batch.json()["embeddings"])
    assert len(vector) == 16
    assert len(full) == 768
    assert short == vector


async def test_count_tokens(connect: Any) -> None:
    """countTokens returns the input's totalTokens."""
    async with connect(MockServer()) as client:
        response = await client.post(
            f"{BASE}:countTokens", json=_request("Hello!"), headers=HEADERS
        )
    assert response.json() == {"totalTokens": count_mock_tokens("Hello!")}


async def test_long_system_instruction_is_cached_on_repeat(connect: Any) -> None:
    """A long systemInstruction is reported as cachedContentTokenCount the second time."""
    system = "Answer like a ship's captain. " * 150
    body = _request("Hi") | {"systemInstruction": {"parts": [{"text": system}]}}
    async with connect(MockServer()) as client:
        first = await client.post(f"{BASE}:generateContent", json=body, headers=HEADERS)
        second = await client.post(f"{BASE}:generateContent", json=body, headers=HEADERS)
    assert "cachedContentTokenCount" not in first.json()["usageMetadata"]
    usage = second.json()["usageMetadata"]
    assert usage["cachedContentTokenCount"] == count_mock_tokens(system)
    assert usage["promptTokenCount"] == count_mock_tokens(system) + count_mock_tokens("Hi")


@pytest.mark.parametrize(
    ("headers", "path", "status", "name"),
    [
        ({}, f"{BASE}:generateContent", 403, "PERMISSION_DENIED"),
        ({"x-goog-api-key": "wrong"}, f"{BASE}:generateContent", 401, "UNAUTHENTICATED"),
        (HEADERS, f"{BASE}:generateContent?key=AIza-right", 400, "INVALID_ARGUMENT"),
        (HEADERS, f"{BASE}:nonsense", 404, "NOT_FOUND"),
    ],
)
async def test_errors_use_google_envelope(
    connect: Any, headers: dict[str, str], path: str, status: int, name: str
) -> None:
    """Missing, wrong and in-URL keys, and unknown methods, get Google's error envelope."""
    async with connect(MockServer(api_key="AIza-right")) as client:
        response = await client.post(path, json=_request("Hi"), headers=headers)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["code"] == status
    assert error["status"] == name
    assert error["message"]


async def test_429_carries_retry_info_in_the_body_only(connect: Any) -> None:
    """An injected 429 has a google.rpc.RetryInfo detail and no Retry-After header."""
    async with connect(MockServer(error_rates={429: 1.0}, retry_after=3)) as client:
        response = await client.post(
            f"{BASE}:generateContent", json=_request("Hi"), headers=HEADERS
        )
    assert response.status_code == 429
    error = response.json()["error"]
    assert error["status"] == "RESOURCE_EXHAUSTED"
    details = {detail["@type"]: detail for detail in error["details"]}
    assert details["type.googleapis.com/google.rpc.RetryInfo"]["retryDelay"] == "3s"
    assert "retry-after" not in response.headers


async def test_generation_config_is_validated(connect: Any) -> None:
    """A non-integer maxOutputTokens gets INVALID_ARGUMENT."""
    async with connect(MockServer()) as client:
        response = await client.post(
            f"{BASE}:generateContent", json=_request("Hi", maxOutputTokens="many"), headers=HEADERS
        )
    assert response.status_code == 400
    assert response.json()["error"]["status"] == "INVALID_ARGUMENT"
