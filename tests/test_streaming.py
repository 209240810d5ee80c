"""Streaming: TTFT and gaps in virtual time, retries only before the first delta, cancellation,
truncated streams, and the TTFT/TPOT statistics, on both backends."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

import anyio
import httpx2
import pytest
import stamina

import corral
from corral._streaming import CompletionStream
from corral.providers import Anthropic, OpenAI
from corral.testing._mock.server import MockServer

pytestmark = [pytest.mark.anyio, pytest.mark.virtual_time]

BASE = "http://127.0.0.1:9/v1"

# A step of a scripted stream body: wait this long, then send these bytes (or raise).
Step = tuple[float, bytes | Exception]


@pytest.fixture(autouse=True)
def _no_backoff_sleeps() -> Iterator[None]:
    """Remove stamina's backoff sleeps but keep each policy's attempt count."""
    with stamina.set_testing(True, attempts=100, cap=True):
        yield


class ScriptedBody(httpx2.AsyncByteStream):
    """A response body sent step by step, that records whether it was closed."""

    def __init__(self, steps: Sequence[Step]) -> None:
        self.steps = steps
        self.closed = False
        self.sent = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for delay, item in self.steps:
            if delay:
                await anyio.sleep(delay)
            if isinstance(item, Exception):
                raise item
            self.sent += 1
            yield item

    async def aclose(self) -> None:
        self.closed = True


def chunk(content: str | None = None, finish: str | None = None, **extra: Any) -> bytes:
    """Return one OpenAI ``chat.completion.chunk`` event."""
    delta = {} if content is None else {"content": content}
    body: dict[str, Any] = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        **extra,
    }
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def usage_chunk(prompt: int, completion: int) -> bytes:
    body = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "model": "gpt-4o-mini",
        "choices": [],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion},
    }
    return b"data: " + json.dumps(body).encode() + b"\n\n"


DONE = b"data: [DONE]\n\n"


def hello_steps(first: float = 1.5, gap: float = 0.25) -> list[Step]:
    """A stream whose first delta comes after *first* s and the next ones *gap* s apart."""
    return [
        (first, chunk("Hel")),
        (gap, chunk("lo, ")),
        (gap, chunk("world")),
        (0.0, chunk(finish="stop")),
        (0.0, usage_chunk(12, 5)),
        (0.0, DONE),
    ]


Answer = Callable[[httpx2.Request], httpx2.Response] | int | list[Step]


class StreamServer:
    """Answer each attempt of each request id from a script: a status, steps, or a callable."""

    def __init__(self, script: dict[str, list[Answer]] | None = None, default: Answer = 200):
        self.script = script or {}
        self.default = default
        self.hits: Counter[str] = Counter()
        self.bodies: list[ScriptedBody] = []
        self.sent: list[httpx2.Request] = []

    def client(self) -> httpx2.AsyncClient:
        return httpx2.AsyncClient(transport=httpx2.MockTransport(self.handle))

    async def handle(self, request: httpx2.Request) -> httpx2.Response:
        rid = request.headers.get("x-client-request-id", "?")
        n = self.hits[rid]
        self.hits[rid] += 1
        self.sent.append(request)
        steps = self.script.get(rid, [])
        answer = steps[n] if n < len(steps) else self.default
        if callable(answer):
            return answer(request)
        if isinstance(answer, int) and answer != 200:
            return httpx2.Response(answer, json={"error": {"message": f"scripted {answer}"}})
        body = ScriptedBody(answer if isinstance(answer, list) else hello_steps())
        self.bodies.append(body)
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, stream=body)


def req(i: int | str = 1, **kwargs: Any) -> corral.ChatRequest:
    return corral.ChatRequest(
        "gpt-4o-mini", [{"role": "user", "content": "Say hello"}], id=f"q{i}", **kwargs
    )


def client_for(server: StreamServer, **kwargs: Any) -> corral.Client:
    return corral.Client(OpenAI(BASE, api_key="sk-test"), http_client=server.client(), **kwargs)


async def test_ttft_and_gaps_are_measured_in_virtual_time() -> None:
    """complete_stream yields each delta as it arrives and records TTFT, gaps, latency, TPOT."""
    server = StreamServer()
    seen: list[tuple[str, float]] = []
    async with client_for(server) as client:
        start = anyio.current_time()
        async with client.complete_stream(req()) as stream:
            async for delta in stream:
                seen.append((delta, anyio.current_time() - start))
        completion = stream.completion
    assert seen == [("Hel", 1.5), ("lo, ", 1.75), ("world", 2.0)]
    assert completion.content == "Hello, world"
    assert completion.finish_reason == "stop"
    assert completion.usage == corral.Usage(12, 5)
    assert completion.ttft_s == pytest.approx(1.5)
    assert completion.inter_token_gaps_s == pytest.approx((0.25, 0.25))
    assert completion.latency_s == pytest.approx(2.0)
    # vLLM's TPOT: (latency - ttft) / (output_tokens - 1) = 0.5 / 4.
    assert completion.time_per_output_token_s == pytest.approx(0.125)
    assert completion.attempts == 1
    assert stream.statistics().deltas == 3
    assert stream.statistics().characters == len("Hello, world")


async def test_run_with_stream_true_reports_ttft_and_tpot_percentiles() -> None:
    """run(stream=True) streams every request and the statistics give TTFT and TPOT percentiles."""
    # Request i answers its first delta after i seconds, then two deltas 0.25 s apart.
    script: dict[str, list[Answer]] = {f"q{i}": [hello_steps(first=float(i))] for i in range(1, 6)}
    server = StreamServer(script)
    async with client_for(server, max_concurrency=5) as client:
        batch = await client.run([req(i) for i in range(1, 6)], stream=True)
    ttfts = [r.ttft_s for r in batch.completions]
    assert ttfts == pytest.approx([1.0, 2.0, 3.0, 4.0, 5.0])
    stats = batch.statistics
    assert stats.ttft_p50_s == pytest.approx(3.0)
    assert stats.ttft_p90_s == pytest.approx(4.6)
    assert stats.tpot_p50_s == pytest.approx(0.125)
    assert stats.tpot_p99_s == pytest.approx(0.125)
    assert all(len(r.inter_token_gaps_s) == 2 for r in batch.completions)
    assert all(body.closed for body in server.bodies)


async def test_run_without_stream_records_no_ttft() -> None:
    """A non-streamed run leaves ttft_s None and the TTFT percentiles empty."""

    def whole(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(
            200,
            json={
                "choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 2},
            },
        )

    server = StreamServer(default=whole)
    async with client_for(server) as client:
        batch = await client.run([req(1)])
    assert batch.completions[0].ttft_s is None
    assert batch.statistics.ttft_p50_s is None
    assert batch.statistics.tpot_p50_s is None


async def test_cancelling_mid_stream_closes_the_connection() -> None:
    """Cancelling the scope around complete_stream after the first delta closes the body."""
    server = StreamServer({"q1": [[(0.1, chunk("Hel")), (3600.0, chunk("never"))]]})
    got: list[str] = []
    async with client_for(server) as client:
        with anyio.move_on_after(5) as scope:
            async with client.complete_stream(req()) as stream:
                async for delta in stream:
                    got.append(delta)
        assert scope.cancelled_caught
        assert client.statistics().in_flight == 0
    assert got == ["Hel"]
    assert server.bodies[0].closed
    assert server.bodies[0].sent == 1


async def test_cancelling_a_streamed_run_closes_every_connection() -> None:
    """Cancelling run(stream=True) mid-stream closes every body and leaves nothing in flight."""
    steps: list[Step] = [(0.1, chunk("a")), (3600.0, chunk("b"))]
    server = StreamServer(default=steps)
    async with client_for(server, max_concurrency=4) as client:
        with anyio.move_on_after(1):
            await client.run([req(i) for i in range(4)], stream=True)
        assert client.statistics().in_flight == 0
    assert len(server.bodies) == 4
    assert all(body.closed for body in server.bodies)


async def test_leaving_the_block_early_closes_the_connection() -> None:
    """Breaking out of the delta loop and leaving the block closes the response."""
    server = StreamServer()
    async with client_for(server) as client:
        async with client.complete_stream(req()) as stream:
            async for _ in stream:
                break
        with pytest.raises(RuntimeError, match="not finished"):
            _ = stream.completion
    assert server.bodies[0].closed


async def test_truncated_stream_is_an_invalid_response_failure() -> None:
    """A stream that ends without [DONE] is a Failure of kind invalid_response, not a success."""
    server = StreamServer(default=hello_steps()[:3])
    async with client_for(server) as client:
        batch = await client.run([req(1)], stream=True)
    (result,) = batch.results
    assert isinstance(result, corral.Failure)
    assert result.error.kind is corral.ErrorKind.INVALID_RESPONSE
    assert "final event" in result.error.message
    assert result.attempts == 1 == server.hits["q1"]


async def test_truncated_stream_raises_from_complete_stream() -> None:
    """complete_stream raises InvalidResponseError at the end of a truncated stream."""
    server = StreamServer(default=hello_steps()[:3])
    got: list[str] = []

    async def consume(stream: CompletionStream) -> None:
        async for delta in stream:
            got.append(delta)

    async with client_for(server) as client, client.complete_stream(req()) as stream:
        with pytest.raises(corral.InvalidResponseError):
            await consume(stream)
        with pytest.raises(corral.InvalidResponseError):
            await stream.get_completion()
    assert got == ["Hel", "lo, ", "world"]
    assert client.statistics().failed == 1


async def test_errors_before_the_first_delta_are_retried() -> None:
    """A 503 and a connection drop before any delta are retried; the third attempt streams."""
    drop: list[Step] = [(0.0, httpx2.ReadError("connection reset"))]
    server = StreamServer({"q1": [503, drop, 200]})
    policy = corral.RetryPolicy(attempts=3)
    async with client_for(server, retry=policy) as client, client.complete_stream(req()) as s:
        completion = await s.get_completion()
    assert completion.content == "Hello, world"
    assert completion.attempts == 3 == server.hits["q1"]


async def test_an_error_event_before_the_first_delta_is_retried() -> None:
    """Anthropic's overloaded_error event inside a 200, before any text, is retried."""
    error_event = (
        b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error",'
        b'"message":"Overloaded"}}\n\n'
    )
    start = (
        b'event: message_start\ndata: {"type":"message_start","message":{"model":"claude",'
        b'"usage":{"input_tokens":3,"output_tokens":1}}}\n\n'
    )
    ok: list[Step] = [
        (0.0, start),
        (
            0.0,
            b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
            b'"delta":{"type":"text_delta","text":"hi"}}\n\n',
        ),
        (
            0.0,
            b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":'
            b'"end_turn"},"usage":{"output_tokens":2}}\n\n',
        ),
        (0.0, b'event: message_stop\ndata: {"type":"message_stop"}\n\n'),
    ]
    server = StreamServer({"q1": [[(0.0, start), (0.0, error_event)], ok]})
    provider = Anthropic("http://127.0.0.1:9", api_key="k")
    async with corral.Client(provider, http_client=server.client()) as client:
        batch = await client.run([req(1, max_tokens=10)], stream=True)
    (result,) = batch.results
    assert isinstance(result, corral.Completion)
    assert result.content == "hi"
    assert result.usage == corral.Usage(3, 2)
    assert result.attempts == 2 == server.hits["q1"]


async def test_a_failure_after_the_first_delta_is_never_retried() -> None:
    """A connection reset after a delta is a connection Failure after one attempt."""
    steps: list[Step] = [(0.0, chunk("Hel")), (0.0, httpx2.ReadError("connection reset"))]
    server = StreamServer(default=steps)
    async with client_for(server, retry=corral.RetryPolicy(attempts=5)) as client:
        batch = await client.run([req(1)], stream=True)
        async with client.complete_stream(req(2)) as stream:
            with pytest.raises(corral.ConnectionFailedError):
                await stream.get_completion()
    (result,) = batch.results
    assert isinstance(result, corral.Failure)
    assert result.error.kind is corral.ErrorKind.CONNECTION
    assert result.attempts == 1 == server.hits["q1"]
    assert server.hits["q2"] == 1


async def test_exhausted_retries_raise_when_the_block_is_entered() -> None:
    """complete_stream raises the failure's exception on entry when every attempt failed."""
    server = StreamServer(default=401)
    async with client_for(server) as client:
        with pytest.raises(corral.AuthenticationError):
            async with client.complete_stream(req()):
                pytest.fail("the block must not run")  # pragma: no cover
        assert client.statistics().failed == 1
        assert client.statistics().in_flight == 0


async def test_request_timeout_bounds_the_wait_for_the_first_token() -> None:
    """An attempt with no first token within request_timeout is a retryable timeout."""
    slow: list[Step] = [(100.0, chunk("late"))]
    server = StreamServer({"q1": [slow, 200]})
    async with client_for(server, request_timeout=10, retry=corral.RetryPolicy(attempts=2)) as c:
        start = anyio.current_time()
        batch = await c.run([req(1)], stream=True)
    (result,) = batch.results
    assert isinstance(result, corral.Completion)
    assert result.attempts == 2
    assert server.bodies[0].closed
    # 10 s timeout, no backoff (testing mode), then 1.5 s to the first token and 0.5 s more.
    assert anyio.current_time() - start == pytest.approx(12.0, abs=0.01)


async def test_a_server_that_ignores_the_stream_flag_still_answers() -> None:
    """A JSON answer to a streamed request is parsed whole and counts as one delta."""

    def whole(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(
            200,
            json={
                "model": "m",
                "choices": [{"message": {"content": "whole"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1},
            },
        )

    server = StreamServer(default=whole)
    async with client_for(server) as client, client.complete_stream(req()) as stream:
        deltas = [d async for d in stream]
    assert deltas == ["whole"]
    assert stream.completion.content == "whole"
    assert stream.completion.ttft_s is not None


async def test_a_non_event_stream_answer_is_an_invalid_response() -> None:
    """A 2xx that is neither an event stream nor JSON fails as invalid_response."""

    def html(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, headers={"content-type": "text/html"}, content=b"<html>")

    server = StreamServer(default=html)
    async with client_for(server) as client:
        batch = await client.run([req(1)], stream=True)
    (result,) = batch.results
    assert isinstance(result, corral.Failure)
    assert result.error.kind is corral.ErrorKind.INVALID_RESPONSE
    assert "text/html" in result.error.message


async def test_streaming_needs_a_streaming_provider() -> None:
    """A provider without stream support makes complete_stream and stream=True fail at once."""

    class ChatOnly:
        name = "chat-only"
        endpoint = BASE

        def __init__(self) -> None:
            self._inner = OpenAI(BASE, api_key="k")

        def build_request(self, request: corral.ChatRequest) -> httpx2.Request:
            return self._inner.build_request(request)

        def parse_response(
            self, request: corral.ChatRequest, response: httpx2.Response
        ) -> corral.Completion:
            return self._inner.parse_response(request, response)

        def classify_error(self, response: httpx2.Response) -> corral.ErrorInfo:
            return self._inner.classify_error(response)

    server = StreamServer()
    async with corral.Client(ChatOnly(), http_client=server.client()) as client:
        with pytest.raises(corral.ConfigurationError, match="does not stream"):
            async with client.complete_stream(req()):
                pass  # pragma: no cover
        with pytest.raises(corral.ConfigurationError, match="does not stream"):
            await client.run([req()], stream=True)
    assert server.hits.total() == 0


async def test_ttft_against_the_served_mock_follows_its_latency() -> None:
    """Against the mock served on loopback, TTFT follows its latency and gaps its chunk delay."""
    from corral.testing._serve import serve

    mock = MockServer(latency=2.0, chunk_delay=0.5, seed=3)
    async with serve(mock) as server:
        provider = OpenAI(server.url + "/v1", api_key="sk-test")
        async with corral.Client(provider) as client:
            text = "Tell me a long story about a lighthouse keeper."
            request = corral.ChatRequest(
                "gpt-4o-mini", [{"role": "user", "content": text}], max_tokens=8, id="m1"
            )
            async with client.complete_stream(request) as stream:
                completion = await stream.get_completion()
    assert completion.ttft_s is not None
    assert 2.0 <= completion.ttft_s <= 2.0 + 2 * 0.5 + 0.01
    assert len(completion.inter_token_gaps_s) >= 3
    assert all(gap == pytest.approx(0.5, abs=0.01) for gap in completion.inter_token_gaps_s)
    assert completion.usage.output_tokens == 8
    assert completion.finish_reason == "length"
    assert mock.hits_for("m1") == 1
