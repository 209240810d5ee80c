"""The mock server's OpenAI API: chat completions, streaming, embeddings, models and errors."""

from __future__ import annotations

import array
import base64
import math
from collections.abc import Callable
from typing import Any

import pytest

from corral.testing._mock.server import MockServer
from corral.testing._mock.text import count_mock_tokens, mock_answer

pytestmark = pytest.mark.anyio

AUTH = {"authorization": "Bearer sk-test"}
ParseSSE = Callable[[str], list[tuple[str | None, Any]]]


def _chat(content: str, **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}], **extra}


async def test_arithmetic_prompt_is_answered_with_honest_usage(connect: Any) -> None:
    """ "What is A + B?" gets the sum, and usage counts the prompt and answer with the tokenizer."""
    prompt = "What is 3 + 6?"
    async with connect(MockServer()) as client:
        response = await client.post("/v1/chat/completions", json=_chat(prompt), headers=AUTH)
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-")
    assert body["model"] == "gpt-4o-mini"
    choice = body["choices"][0]
    assert choice["message"] == {
        "role": "assistant",
        "content": "9",
        "refusal": None,
        "annotations": [],
    }
    assert choice["finish_reason"] == "stop"
    usage = body["usage"]
    assert usage["prompt_tokens"] == count_mock_tokens(prompt)
    assert usage["completion_tokens"] == 1
    assert usage["total_tokens"] == usage["prompt_tokens"] + 1
    assert usage["prompt_tokens_details"]["cached_tokens"] == 0
    assert usage["completion_tokens_details"]["reasoning_tokens"] == 0
    assert response.headers["x-request-id"].startswith("req_")
    assert int(response.headers["openai-processing-ms"]) >= 0
    assert "date" in response.headers


async def test_other_prompts_get_a_seeded_sentence(connect: Any) -> None:
    """Non-arithmetic prompts get a sentence that depends on prompt and seed, and nothing else."""
    prompt = "Tell me about rivers."
    contents = []
    for seed in (1, 1, 2):
        async with connect(MockServer(seed=seed)) as client:
            response = await client.post("/v1/chat/completions", json=_chat(prompt), headers=AUTH)
        contents.append(response.json()["choices"][0]["message"]["content"])
    assert contents[0] == contents[1] == mock_answer(prompt, 1)
    assert contents[2] == mock_answer(prompt, 2) != contents[0]
    assert contents[0].endswith(".")


async def test_max_tokens_truncates_with_finish_reason_length(connect: Any) -> None:
    """An answer longer than max_tokens is cut to the budget and finishes with "length"."""
    prompt = "Describe a garden."
    assert count_mock_tokens(mock_answer(prompt, 0)) > 3
    async with connect(MockServer()) as client:
        response = await client.post(
            "/v1/chat/completions", json=_chat(prompt, max_completion_tokens=3), headers=AUTH
        )
    body = response.json()
    content = body["choices"][0]["message"]["content"]
    assert body["choices"][0]["finish_reason"] == "length"
    assert mock_answer(prompt, 0).startswith(content)
    assert body["usage"]["completion_tokens"] == count_mock_tokens(content) == 3


async def test_stream_matches_the_plain_answer(connect: Any, parse_sse: ParseSSE) -> None:
    """A stream carries the same text in deltas, then finish, usage chunk and [DONE]."""
    prompt = "Describe a canyon."
    async with connect(MockServer()) as client:
        plain = (await client.post("/v1/chat/completions", json=_chat(prompt), headers=AUTH)).json()
        response = await client.post(
            "/v1/chat/completions",
            json=_chat(prompt, stream=True, stream_options={"include_usage": True}),
            headers=AUTH,
        )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [data for _, data in parse_sse(response.text)]
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == plain["choices"][0]["message"]["content"]
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == plain["usage"]
    assert all(chunk["usage"] is None for chunk in chunks[:-1])


async def test_stream_without_include_usage_has_no_usage(connect: Any, parse_sse: ParseSSE) -> None:
    """Without stream_options.include_usage no chunk carries a usage field."""
    async with connect(MockServer()) as client:
        response = await client.post(
            "/v1/chat/completions", json=_chat("Hi", stream=True), headers=AUTH
        )
    events = parse_sse(response.text)
    assert events[-1][1] == "[DONE]"
    assert all("usage" not in data for _, data in events[:-1])


async def test_several_choices_are_answered(connect: Any) -> None:
    """n=2 gives two choices whose tokens add up in usage."""
    async with connect(MockServer()) as client:
        response = await client.post("/v1/chat/completions", json=_chat("Hi", n=2), headers=AUTH)
    body = response.json()
    assert [choice["index"] for choice in body["choices"]] == [0, 1]
    texts = [choice["message"]["content"] for choice in body["choices"]]
    assert texts == [mock_answer("Hi", 0, 0), mock_answer("Hi", 0, 1)]
    assert body["usage"]["completion_tokens"] == sum(map(count_mock_tokens, texts))


async def test_reasoning_models_report_reasoning_tokens(connect: Any) -> None:
    """Models named like o3-mini spend reasoning tokens, counted inside completion_tokens."""
    async with connect(MockServer()) as client:
        plain = await client.post("/v1/chat/completions", json=_chat("Hi"), headers=AUTH)
        response = await client.post(
            "/v1/chat/completions", json=_chat("Hi") | {"model": "o3-mini"}, headers=AUTH
        )
    usage = response.json()["usage"]
    reasoning = usage["completion_tokens_details"]["reasoning_tokens"]
    assert reasoning > 0
    assert usage["completion_tokens"] == reasoning + plain.json()["usage"]["completion_tokens"]


async def test_long_first_message_is_cached_on_the_second_request(connect: Any) -> None:
    """A >= 1024-token system prompt is reported as cached (in 128-token steps) when repeated."""
    system = "You are a careful assistant. " * 200  # 5800 characters: 1450 tokens
    prefix_tokens = count_mock_tokens(system)
    assert prefix_tokens == 1450
    body = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": "Hi"}],
    }
    async with connect(MockServer()) as client:
        first = (await client.post("/v1/chat/completions", json=body, headers=AUTH)).json()
        second = (await client.post("/v1/chat/completions", json=body, headers=AUTH)).json()
        other = dict(body, messages=[{"role": "user", "content": "Short."}])
        third = (await client.post("/v1/chat/completions", json=other, headers=AUTH)).json()
    assert first["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    assert second["usage"]["prompt_tokens_details"]["cached_tokens"] == 1024 + 3 * 128
    assert second["usage"]["prompt_tokens"] == first["usage"]["prompt_tokens"] == 1450 + 1
    assert third["usage"]["prompt_tokens_details"]["cached_tokens"] == 0


async def test_embeddings_are_deterministic_unit_vectors(connect: Any) -> None:
    """Embeddings are unit vectors derived from the input; dimensions are honoured."""
    async with connect(MockServer()) as client:
        full = await client.post(
            "/v1/embeddings",
            json={"model": "text-embedding-3-small", "input": ["alpha", "beta", "alpha"]},
            headers=AUTH,
        )
        short = await client.post(
            "/v1/embeddings",
            json={"model": "text-embedding-3-large", "input": "alpha", "dimensions": 8},
            headers=AUTH,
        )
    body = full.json()
    assert body["object"] == "list"
    vectors = [item["embedding"] for item in body["data"]]
    assert [item["index"] for item in body["data"]] == [0, 1, 2]
    assert all(len(vector) == 1536 for vector in vectors)
    assert vectors[0] == vectors[2] != vectors[1]
    assert math.isclose(math.fsum(v * v for v in vectors[0]), 1.0, rel_tol=1e-6)
    tokens = sum(map(count_mock_tokens, ["alpha", "beta", "alpha"]))
    assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}
    (item,) = short.json()["data"]
    assert len(item["embedding"]) == 8


async def test_embeddings_in_base64_decode_to_the_float_vectors(connect: Any) -> None:
    """encoding_format=base64 sends little-endian float32 bytes of the same vector."""
    request = {"model": "text-embedding-3-small", "input": "alpha", "dimensions": 16}
    async with connect(MockServer()) as client:
        floats = await client.post("/v1/embeddings", json=request, headers=AUTH)
        packed = await client.post(
            "/v1/embeddings", json=request | {"encoding_format": "base64"}, headers=AUTH
        )
    decoded = array.array("f", base64.b64decode(packed.json()["data"][0]["embedding"]))
    expected = floats.json()["data"][0]["embedding"]
    assert list(decoded) == pytest.approx(expected, abs=1e-6)


async def test_token_list_inputs_count_one_token_each(connect: Any) -> None:
    """Pre-tokenised input (a list of ids) counts one token per id."""
    async with connect(MockServer()) as client:
        response = await client.post(
            "/v1/embeddings",
            json={"model": "text-embedding-3-small", "input": [[1, 2, 3], [4, 5]]},
            headers=AUTH,
        )
    assert response.json()["usage"]["prompt_tokens"] == 5


async def test_models_are_listed_and_retrieved(connect: Any) -> None:
    """GET /v1/models lists models; GET /v1/models/{id} returns one."""
    async with connect(MockServer()) as client:
        listed = await client.get("/v1/models", headers=AUTH)
        one = await client.get("/v1/models/gpt-4o-mini", headers=AUTH)
    assert listed.json()["object"] == "list"
    ids = [model["id"] for model in listed.json()["data"]]
    assert "gpt-4o-mini" in ids
    assert one.json()["id"] == "gpt-4o-mini"
    assert one.json()["object"] == "model"


@pytest.mark.parametrize(
    ("headers", "code"),
    [({}, None), ({"authorization": "Basic abc"}, None), ({"authorization": "Bearer no"}, "x")],
)
async def test_keys_are_checked(connect: Any, headers: dict[str, str], code: str | None) -> None:
    """A missing key is refused; with api_key set, only that exact key is accepted."""
    server = MockServer(api_key="sk-right")
    async with connect(server) as client:
        refused = await client.post("/v1/chat/completions", json=_chat("Hi"), headers=headers)
        accepted = await client.post(
            "/v1/chat/completions", json=_chat("Hi"), headers={"authorization": "Bearer sk-right"}
        )
    assert refused.status_code == 401
    error = refused.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["code"] == ("invalid_api_key" if code else None)
    assert "sk-right" not in refused.text
    assert accepted.status_code == 200


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": [{"role": "user", "content": "Hi"}]}, "model"),
        ({"model": "gpt-4o-mini"}, "messages"),
        ({"model": "gpt-4o-mini", "messages": []}, "messages"),
        ({"model": "gpt-4o-mini", "messages": [{"role": "robot", "content": "x"}]}, None),
        (_chat("Hi", max_tokens=0), "max_tokens"),
        (_chat("Hi", max_tokens="ten"), "max_tokens"),
        (_chat("Hi", stream_options={"include_usage": True}), "stream_options"),
    ],
)
async def test_invalid_bodies_get_a_400(
    connect: Any, body: dict[str, Any], param: str | None
) -> None:
    """Bodies the real API refuses get a 400 invalid_request_error naming the field."""
    async with connect(MockServer()) as client:
        response = await client.post("/v1/chat/completions", json=body, headers=AUTH)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    if param is not None:
        assert error["param"] == param


async def test_malformed_json_gets_a_400(connect: Any) -> None:
    """A body that is not JSON gets a 400 in OpenAI's envelope."""
    async with connect(MockServer()) as client:
        response = await client.post("/v1/chat/completions", content=b"{nope", headers=AUTH)
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


async def test_context_window_overflow_is_a_context_length_error(connect: Any) -> None:
    """Input plus max_tokens beyond context_window gets code context_length_exceeded."""
    async with connect(MockServer(context_window=50)) as client:
        response = await client.post(
            "/v1/chat/completions", json=_chat("x" * 160, max_tokens=20), headers=AUTH
        )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "context_length_exceeded"


async def test_unknown_paths_and_methods_are_refused(connect: Any) -> None:
    """An unknown path is a 404 and a wrong method a 405, in OpenAI's envelope."""
    async with connect(MockServer()) as client:
        missing = await client.post("/v1/nothing", json={}, headers=AUTH)
        wrong = await client.get("/v1/chat/completions", headers=AUTH)
    assert missing.status_code == 404
    assert "error" in missing.json()
    assert wrong.status_code == 405
    assert "error" in wrong.json()
