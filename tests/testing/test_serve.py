"""serve() and run_mock_server() on real loopback ports, used by httpx2 and the official SDKs."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from typing import Any

import anyio
import httpx2
import pytest

from corral.testing._mock.config import MockConfig
from corral.testing._mock.server import MockServer
from corral.testing._mock.text import count_mock_tokens, mock_answer
from corral.testing._serve import (
    RunningServer,
    parse_error_rates,
    parse_latency,
    run_mock_server,
    serve,
)

pytest.importorskip("hypercorn")

pytestmark = pytest.mark.anyio

OPENAI = {"authorization": "Bearer sk-test"}
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "What is 3 + 6?"}]}


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def no_fd_leak() -> Iterator[None]:
    """Fail the test if it leaves file descriptors open."""
    if not os.path.isdir("/proc/self/fd"):
        yield
        return
    before = _open_fds()
    yield
    assert _open_fds() <= before


async def test_serve_picks_a_free_port_and_answers(no_fd_leak: None) -> None:
    """Port 0 binds a free port; the URL answers over real HTTP; exiting frees the port."""
    server = MockServer()
    async with serve(server) as running:
        assert running.port > 0
        assert running.url == running.base_url == f"http://127.0.0.1:{running.port}"
        assert running.app is server
        assert str(running.port) in repr(running)
        async with httpx2.AsyncClient(base_url=running.url) as client:
            response = await client.post("/v1/chat/completions", json=CHAT, headers=OPENAI)
            models = await client.get("/v1/models", headers=OPENAI)
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "9"
    assert response.headers["content-length"] == str(len(response.content))
    assert len(response.headers.get_list("date")) == 1
    assert models.status_code == 200
    assert server.statistics().total_hits == 2
    with pytest.raises(OSError, match=r"onnect|refused"):
        async with await anyio.connect_tcp("127.0.0.1", running.port):
            pass


async def test_any_asgi_app_is_served_even_without_lifespan(no_fd_leak: None) -> None:
    """A bare ASGI app that refuses the lifespan protocol is served all the same."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise RuntimeError("HTTP only")
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async with serve(app) as running, httpx2.AsyncClient() as client:
        response = await client.get(running.url + "/anything")
    assert response.status_code == 204


async def test_missing_hypercorn_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without hypercorn, serve() says which extra to install."""
    monkeypatch.setitem(sys.modules, "hypercorn.config", None)
    with pytest.raises(ImportError, match=r"corral\[server\]"):
        async with serve(MockServer()):
            pass


async def test_an_error_in_the_block_propagates_unwrapped(no_fd_leak: None) -> None:
    """An exception raised inside serve()'s block reaches the caller as itself."""
    with pytest.raises(LookupError, match="boom"):
        async with serve(MockServer()):
            raise LookupError("boom")


async def test_cancelling_the_block_shuts_the_server_down(no_fd_leak: None) -> None:
    """Cancelling the scope around serve() stops the server and frees its port."""
    with anyio.move_on_after(0.2):
        async with serve(MockServer()) as running:
            await anyio.sleep_forever()
    with pytest.raises(OSError, match=r"onnect|refused"):
        async with await anyio.connect_tcp("127.0.0.1", running.port):
            pass


async def test_keep_alive_connections_do_not_delay_shutdown() -> None:
    """An idle keep-alive connection still open at exit does not hold the server up."""
    async with httpx2.AsyncClient() as client:
        async with serve(MockServer()) as running:
            await client.get(running.url + "/v1/models", headers=OPENAI)
            exit_started = time.perf_counter()
        assert time.perf_counter() - exit_started < 2.0


async def test_streams_arrive_event_by_event() -> None:
    """With chunk_delay, the first event reaches the client while the stream is still going."""
    server = MockServer(chunk_delay=0.02)
    body = CHAT | {"stream": True, "messages": [{"role": "user", "content": "Tell me more."}]}
    in_flight_at_first: list[int] = []
    lines: list[str] = []
    async with (
        serve(server) as running,
        httpx2.AsyncClient(base_url=running.url) as client,
        client.stream("POST", "/v1/chat/completions", json=body, headers=OPENAI) as response,
    ):
        # Read to the end: on trio, httpx2's generators left half-read warn when collected.
        async for line in response.aiter_lines():
            if line and not lines:
                in_flight_at_first.append(server.statistics().in_flight)
            if line:
                lines.append(line)
    assert in_flight_at_first == [1]
    assert lines[-1] == "data: [DONE]"
    assert len(lines) > 5
    assert server.statistics().hits_by_status == {200: 1}


async def test_drop_closes_the_connection_without_a_body() -> None:
    """drop_rate=1 gives a real client a protocol error, and the hit is logged with status 0."""
    server = MockServer(drop_rate=1.0)
    async with serve(server) as running, httpx2.AsyncClient(base_url=running.url) as client:
        with pytest.raises(httpx2.RemoteProtocolError):
            await client.post("/v1/chat/completions", json=CHAT, headers=OPENAI)
    assert server.statistics().hits_by_status == {0: 1}


async def test_stalled_request_ends_when_the_client_times_out() -> None:
    """A stall outlasts the client's read timeout; the server notices the disconnect."""
    server = MockServer(stall_rate=1.0, stall_seconds=60)
    async with serve(server) as running:
        async with httpx2.AsyncClient(base_url=running.url, timeout=0.3) as client:
            with pytest.raises(httpx2.ReadTimeout):
                await client.post("/v1/chat/completions", json=CHAT, headers=OPENAI)
        with anyio.fail_after(5):
            await server.wait_idle()
    assert server.statistics().hits_by_status == {0: 1}


async def test_run_mock_server_serves_until_cancelled() -> None:
    """run_mock_server() reports where it listens, serves its config, and stops on cancel."""
    ready: list[RunningServer] = []
    listening = anyio.Event()

    def on_ready(running: RunningServer) -> None:
        ready.append(running)
        listening.set()

    async with anyio.create_task_group() as group:
        group.start_soon(lambda: run_mock_server(MockConfig(seed=9), port=0, on_ready=on_ready))
        with anyio.fail_after(5):
            await listening.wait()
        prompt = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hey"}]}
        async with httpx2.AsyncClient(base_url=ready[0].url) as client:
            response = await client.post("/v1/chat/completions", json=prompt, headers=OPENAI)
        group.cancel_scope.cancel()
    assert response.json()["choices"][0]["message"]["content"] == mock_answer("Hey", 9)
    assert ready[0].app.config.seed == 9


@pytest.mark.parametrize(
    ("text", "value"), [("0.05", 0.05), ("0.01-0.2", (0.01, 0.2)), (" 2 ", 2.0)]
)
def test_parse_latency(text: str, value: object) -> None:
    """Command-line latencies are seconds or a LOW-HIGH range."""
    assert parse_latency(text) == value


@pytest.mark.parametrize("text", ["fast", "-1", "0.5-0.1", "1-x", "inf"])
def test_parse_latency_refuses_nonsense(text: str) -> None:
    """Unparsable, negative, inverted or infinite latencies are refused."""
    with pytest.raises(ValueError, match="latency"):
        parse_latency(text)


def test_parse_error_rates() -> None:
    """Command-line error rates are STATUS=RATE pairs, checked like the server's config."""
    assert parse_error_rates("429=0.02, 500=0.01") == {429: 0.02, 500: 0.01}
    assert parse_error_rates("") == {}
    for bad in ("429", "429=x", "abc=0.1", "429=0.9,500=0.9", "200=0.1"):
        with pytest.raises(ValueError, match=r"error|rate"):
            parse_error_rates(bad)


# -- the official SDKs as third-party clients --------------------------------------------------


async def test_openai_sdk_chat_embeddings_and_models(no_fd_leak: None) -> None:
    """The openai SDK parses chat completions, embeddings (base64 by default) and models."""
    openai = pytest.importorskip("openai")
    server = MockServer()
    async with (
        serve(server) as running,
        openai.AsyncOpenAI(
            base_url=running.url + "/v1", api_key="sk-test", max_retries=0
        ) as client,
    ):
        completion = await client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "What is 3 + 6?"}],
            extra_headers={"X-Client-Request-Id": "sdk-1"},
        )
        embedding = await client.embeddings.create(
            model="text-embedding-3-small", input=["alpha", "beta"], dimensions=32
        )
        models = [model.id async for model in client.models.list()]
    assert completion.choices[0].message.content == "9"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == count_mock_tokens("What is 3 + 6?")
    assert completion.usage.completion_tokens == 1
    assert [len(item.embedding) for item in embedding.data] == [32, 32]
    assert embedding.usage.prompt_tokens == 3
    assert "gpt-4o-mini" in models
    assert server.hits_for("sdk-1") == 1


async def test_openai_sdk_errors_are_typed(no_fd_leak: None) -> None:
    """The openai SDK maps the mock's error envelope to its typed exceptions."""
    openai = pytest.importorskip("openai")
    async with (
        serve(MockServer(error_rates={429: 1.0})) as running,
        openai.AsyncOpenAI(
            base_url=running.url + "/v1", api_key="sk-test", max_retries=0
        ) as client,
    ):
        with pytest.raises(openai.RateLimitError) as caught:
            await client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}]
            )
    assert caught.value.status_code == 429
    assert caught.value.code == "rate_limit_exceeded"
    assert caught.value.response.headers["retry-after"] == "1"


async def test_openai_sdk_stream_with_usage(anyio_backend_name: str, no_fd_leak: None) -> None:
    """The openai SDK streams deltas that add up to the answer, then the usage chunk."""
    openai = pytest.importorskip("openai")
    if anyio_backend_name == "trio":
        # The SDK stops reading at [DONE] without closing its SSE generators, which trio
        # reports as a ResourceWarning when they are collected: an SDK issue, not the mock's.
        pytest.skip("the openai SDK leaves its stream generators open on trio")
    prompt = "Tell me about lanterns."
    async with (
        serve(MockServer()) as running,
        openai.AsyncOpenAI(
            base_url=running.url + "/v1", api_key="sk-test", max_retries=0
        ) as client,
    ):
        stream = await client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": prompt}],
            stream=True,
            stream_options={"include_usage": True},
        )
        async with stream:
            chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == mock_answer(prompt, 0)
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == count_mock_tokens(text)


async def test_anthropic_sdk_messages_and_stream(no_fd_leak: None) -> None:
    """The anthropic SDK parses messages and accumulates a stream into the same message."""
    anthropic = pytest.importorskip("anthropic")
    prompt = "Tell me about orchards."
    async with (
        serve(MockServer()) as running,
        anthropic.AsyncAnthropic(
            base_url=running.url, api_key="sk-ant-test", max_retries=0
        ) as client,
    ):
        message = await client.messages.create(
            model="claude-sonnet-5",
            max_tokens=256,
            messages=[{"role": "user", "content": prompt}],
        )
        async with client.messages.stream(
            model="claude-sonnet-5",
            max_tokens=256,
            messages=[{"role": "user", "content": prompt}],
        ) as stream:
            texts = [text async for text in stream.text_stream]
            final = await stream.get_final_message()
    assert message.content[0].type == "text"
    assert message.content[0].text == mock_answer(prompt, 0)
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens == count_mock_tokens(prompt)
    assert "".join(texts) == message.content[0].text
    assert final.content[0].text == message.content[0].text
    assert final.usage.output_tokens == message.usage.output_tokens
    assert final.stop_reason == "end_turn"


async def test_anthropic_sdk_overloaded_is_typed(no_fd_leak: None) -> None:
    """The anthropic SDK turns the mock's 529 into its OverloadedError."""
    anthropic = pytest.importorskip("anthropic")
    async with (
        serve(MockServer(error_rates={529: 1.0})) as running,
        anthropic.AsyncAnthropic(
            base_url=running.url, api_key="sk-ant-test", max_retries=0
        ) as client,
    ):
        with pytest.raises(anthropic.APIStatusError) as caught:
            await client.messages.create(
                model="claude-sonnet-5",
                max_tokens=16,
                messages=[{"role": "user", "content": "Hi"}],
            )
    assert caught.value.status_code == 529
    assert type(caught.value).__name__ == "OverloadedError"
