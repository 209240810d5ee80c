"""The mock server's Anthropic Messages API: answers, streams, thinking, caching and errors."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from corral.testing._mock.server import MockServer
from corral.testing._mock.text import count_mock_tokens, mock_answer

pytestmark = pytest.mark.anyio

HEADERS = {"x-api-key": "sk-ant-test", "anthropic-version": "2023-06-01"}
MODEL = "claude-sonnet-5"
ParseSSE = Callable[[str], list[tuple[str | None, Any]]]


def _messages(content: str, **extra: Any) -> dict[str, Any]:
    return {
        "model": MODEL,
        "max_tokens": 256,
        "messages": [{"role": "user", "content": content}],
        **extra,
    }


async def test_message_has_the_messages_api_shape(connect: Any) -> None:
    """A plain request gets a message with a text block, end_turn and honest usage."""
    async with connect(MockServer()) as client:
        response = await client.post(
            "/v1/messages", json=_messages("What is 12 * 3?"), headers=HEADERS
        )
    assert response.status_code == 200
    body = response.json()
    assert body["type"] == "message"
    assert body["role"] == "assistant"
    assert body["id"].startswith("msg_")
    assert body["content"] == [{"type": "text", "text": "36"}]
    assert body["stop_reason"] == "end_turn"
    assert body["stop_sequence"] is None
    usage = body["usage"]
    assert usage["input_tokens"] == count_mock_tokens("What is 12 * 3?")
    assert usage["output_tokens"] == 1
    assert usage["cache_read_input_tokens"] == usage["cache_creation_input_tokens"] == 0
    assert response.headers["request-id"].startswith("req_")


async def test_system_prompt_and_blocks_count_as_input(connect: Any) -> None:
    """The system prompt and every text block of every message count as input tokens."""
    body = {
        "model": MODEL,
        "max_tokens": 64,
        "system": [{"type": "text", "text": "Be brief."}],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "First question here"}]},
            {"role": "assistant", "content": "An answer."},
            {"role": "user", "content": "Second?"},
        ],
    }
    async with connect(MockServer()) as client:
        response = await client.post("/v1/messages", json=body, headers=HEADERS)
    texts = ["Be brief.", "First question here", "An answer.", "Second?"]
    assert response.json()["usage"]["input_tokens"] == sum(map(count_mock_tokens, texts))
    assert response.json()["content"][0]["text"] == mock_answer("Second?", 0)


async def test_max_tokens_cut_gives_stop_reason_max_tokens(connect: Any) -> None:
    """An answer cut by max_tokens stops with "max_tokens" and counts only what was sent."""
    async with connect(MockServer()) as client:
        response = await client.post(
            "/v1/messages",
            json=_messages("Describe a meadow.") | {"max_tokens": 2},
            headers=HEADERS,
        )
    body = response.json()
    assert body["stop_reason"] == "max_tokens"
    assert body["usage"]["output_tokens"] == count_mock_tokens(body["content"][0]["text"]) == 2


async def test_stream_has_every_event_in_order(connect: Any, parse_sse: ParseSSE) -> None:
    """The stream sends message_start, block start, ping, deltas, stops, delta and stop."""
    async with connect(MockServer()) as client:
        plain = await client.post("/v1/messages", json=_messages("Hello"), headers=HEADERS)
        response = await client.post(
            "/v1/messages", json=_messages("Hello", stream=True), headers=HEADERS
        )
    events = parse_sse(response.text)
    names = [name for name, _ in events]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(names[3:-3]) == {"content_block_delta"}
    assert all(name == data["type"] for name, data in events)
    start = events[0][1]["message"]
    assert start["content"] == []
    assert start["stop_reason"] is None
    text = "".join(data["delta"]["text"] for name, data in events if name == "content_block_delta")
    assert text == plain.json()["content"][0]["text"]
    delta = events[-2][1]
    assert delta["delta"]["stop_reason"] == "end_turn"
    assert delta["usage"]["output_tokens"] == plain.json()["usage"]["output_tokens"]


async def test_thinking_adds_a_thinking_block_and_counts_it(connect: Any) -> None:
    """With thinking on, a thinking block comes first and its tokens count as output."""
    async with connect(MockServer()) as client:
        plain = await client.post("/v1/messages", json=_messages("Hi"), headers=HEADERS)
        thinking = await client.post(
            "/v1/messages",
            json=_messages("Hi", thinking={"type": "enabled", "budget_tokens": 64}),
            headers=HEADERS,
        )
    body = thinking.json()
    assert [block["type"] for block in body["content"]] == ["thinking", "text"]
    assert body["content"][0]["signature"]
    spent = body["usage"]["output_tokens_details"]["thinking_tokens"]
    assert spent > 0
    assert body["usage"]["output_tokens"] == spent + plain.json()["usage"]["output_tokens"]


async def test_streamed_thinking_uses_thinking_and_signature_deltas(
    connect: Any, parse_sse: ParseSSE
) -> None:
    """A streamed thinking block is sent as thinking_delta events and one signature_delta."""
    async with connect(MockServer()) as client:
        response = await client.post(
            "/v1/messages",
            json=_messages("Hi", stream=True, thinking={"type": "adaptive"}),
            headers=HEADERS,
        )
    events = parse_sse(response.text)
    deltas = [data["delta"]["type"] for name, data in events if name == "content_block_delta"]
    assert "thinking_delta" in deltas
    assert deltas.count("signature_delta") == 1
    assert deltas.index("signature_delta") < deltas.index("text_delta")


async def test_cache_creation_then_read_leave_input_tokens_uncached(connect: Any) -> None:
    """A long system prompt is written to the cache once, then read; input_tokens excludes both."""
    system = "Rules of the house, to follow. " * 150  # 4650 characters: 1163 tokens
    prefix = count_mock_tokens(system)
    body = _messages("Hi", system=system)
    async with connect(MockServer()) as client:
        first = (await client.post("/v1/messages", json=body, headers=HEADERS)).json()["usage"]
        second = (await client.post("/v1/messages", json=body, headers=HEADERS)).json()["usage"]
    total = prefix + count_mock_tokens("Hi")
    assert first["cache_creation_input_tokens"] == prefix
    assert first["cache_read_input_tokens"] == 0
    assert first["input_tokens"] == total - prefix
    assert second["cache_creation_input_tokens"] == 0
    assert second["cache_read_input_tokens"] == prefix
    assert second["input_tokens"] == total - prefix


async def test_count_tokens_counts_the_input(connect: Any) -> None:
    """POST /v1/messages/count_tokens returns the input tokens and needs no max_tokens."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Count me, please."}]}
    async with connect(MockServer()) as client:
        response = await client.post("/v1/messages/count_tokens", json=body, headers=HEADERS)
    assert response.json() == {"input_tokens": count_mock_tokens("Count me, please.")}


async def test_models_are_listed_in_anthropic_shape(connect: Any) -> None:
    """GET /v1/models with anthropic-version lists models the Anthropic way."""
    async with connect(MockServer()) as client:
        response = await client.get("/v1/models", headers=HEADERS)
    body = response.json()
    assert body["has_more"] is False
    assert body["data"][0]["type"] == "model"
    assert body["first_id"] == body["data"][0]["id"]


@pytest.mark.parametrize(
    ("headers", "status", "kind"),
    [
        ({"anthropic-version": "2023-06-01"}, 401, "authentication_error"),
        ({"x-api-key": "wrong", "anthropic-version": "2023-06-01"}, 401, "authentication_error"),
        ({"x-api-key": "sk-ant-right"}, 400, "invalid_request_error"),
    ],
)
async def test_headers_are_required(
    connect: Any, headers: dict[str, str], status: int, kind: str
) -> None:
    """x-api-key (the configured one, if any) and anthropic-version are required."""
    async with connect(MockServer(api_key="sk-ant-right")) as client:
        response = await client.post("/v1/messages", json=_messages("Hi"), headers=headers)
    assert response.status_code == status
    body = response.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == kind
    assert body["request_id"].startswith("req_")
    assert "sk-ant-right" not in response.text


@pytest.mark.parametrize(
    "body",
    [
        {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]},
        {"model": MODEL, "max_tokens": 10, "messages": []},
        {"max_tokens": 10, "messages": [{"role": "user", "content": "Hi"}]},
        {"model": MODEL, "max_tokens": 10, "messages": [{"role": "system", "content": "Hi"}]},
    ],
)
async def test_invalid_bodies_are_invalid_request_errors(
    connect: Any, body: dict[str, Any]
) -> None:
    """Missing max_tokens, messages or model, or a bad role, get a 400 invalid_request_error."""
    async with connect(MockServer()) as client:
        response = await client.post("/v1/messages", json=body, headers=HEADERS)
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


async def test_injected_529_is_overloaded_with_retry_after(connect: Any) -> None:
    """A 529 is an overloaded_error with a Retry-After header."""
    async with connect(MockServer(error_rates={529: 1.0}, retry_after=7)) as client:
        response = await client.post("/v1/messages", json=_messages("Hi"), headers=HEADERS)
    assert response.status_code == 529
    assert response.json()["error"] == {"type": "overloaded_error", "message": "Overloaded"}
    assert response.headers["retry-after"] == "7"


async def test_prompt_too_long_is_refused(connect: Any) -> None:
    """Input plus max_tokens over the context window gets "prompt is too long"."""
    async with connect(MockServer(context_window=100)) as client:
        response = await client.post("/v1/messages", json=_messages("x" * 400), headers=HEADERS)
    assert response.status_code == 400
    assert "prompt is too long" in response.json()["error"]["message"]
