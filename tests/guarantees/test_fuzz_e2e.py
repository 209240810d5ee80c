"""Bad input everywhere, end to end: a real loopback server answers a batch with hostile bytes.

A raw TCP listener (no HTTP library on the server side) answers each request of a
``Client.run`` batch with what hypothesis drew for it: a random or odd status, hostile
``Retry-After`` / rate-limit headers, random JSON, mutated recorded bodies, random bytes, JSON
nested past the recursion limit, event streams cut anywhere, bodies shorter than their
``content-length``. Whatever the answers, the batch must not raise, every input must get
exactly one result with its id, and the whole run must end within the retry deadline (plus
slack): hostile hints are ignored or capped, never waited out.

The test is synchronous and runs each example with ``anyio.run`` on the backend under test,
so hypothesis drives the examples on asyncio and on trio alike.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import attrs
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import corral
from corral import ChatRequest, Completion, EmbeddingRequest, EmbeddingResult, ErrorKind, Failure
from corral.providers import Anthropic, Gemini, OpenAI
from corral.testing import render_events

PAYLOADS = Path(__file__).parent.parent / "providers" / "payloads"

POLICY = corral.RetryPolicy(
    attempts=2,
    timeout=1.5,
    wait_initial=0.01,
    wait_max=0.01,
    wait_jitter=0.0,
    max_retry_after=0.2,
)
REQUEST_TIMEOUT = 0.5
# The deadline always wins: the batch ends within it, plus time to set up and tear down.
BOUND_S = POLICY.timeout + 2.5  # type: ignore[operator]


@attrs.frozen
class Answer:
    """What the server sends for one request id: raw bytes, then it closes the connection."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    framing: str  # "length", "close" (no length), "short" (length larger than the body)

    def wire(self) -> bytes:
        lines = [f"HTTP/1.1 {self.status} Fuzz".encode()]
        lines += [f"{k}: {v}".encode("latin-1") for k, v in self.headers]
        lines.append(b"connection: close")
        if self.framing == "length":
            lines.append(b"content-length: %d" % len(self.body))
        elif self.framing == "short":
            lines.append(b"content-length: %d" % (len(self.body) + 17))
        return b"\r\n".join(lines) + b"\r\n\r\n" + self.body


def _load_json(provider: str, prefix: str) -> list[Any]:
    found = []
    for path in sorted((PAYLOADS / provider).glob(f"{prefix}*.json")):
        response = json.loads(path.read_text(encoding="utf-8"))["response"]
        if "json" in response:
            found.append(response["json"])
        elif "events" in response:
            found.append(response["events"])
    return found


BODIES = {name: _load_json(name, "chat-") + _load_json(name, "error-") for name in ("openai",)}
for _name in ("anthropic", "gemini"):
    BODIES[_name] = _load_json(_name, "chat-") + _load_json(_name, "error-")
STREAMS = {name: _load_json(name, "stream-") for name in ("openai", "anthropic", "gemini")}

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=8)
    | st.sampled_from(["choices", "content", "usage", "error", "candidates", "data", "type"]),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(["choices", "message", "content", "usage", "error", "type", "data"])
            | st.text(max_size=4),
            inner,
            max_size=4,
        )
    ),
    max_leaves=12,
)
HINTS = st.sampled_from(
    [
        "NaN", "-1", "inf", "1e309", "0", "0.05", "99999999999", "Wed, 21 Oct 2015 07:28:00 GMT",
        "Fri, 31 Dec 9999 23:59:59 GMT", "Mon, 99 Foo 2024", "garbage", "1e-400", "",
    ]
)  # fmt: skip
HINT_NAMES = st.sampled_from(
    [
        "retry-after", "retry-after-ms", "x-should-retry", "x-ratelimit-limit-requests",
        "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests",
        "x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens",
        "anthropic-ratelimit-requests-limit", "anthropic-ratelimit-requests-remaining",
        "anthropic-ratelimit-requests-reset", "anthropic-ratelimit-tokens-remaining", "date",
    ]
)  # fmt: skip
CONTENT_TYPES = st.sampled_from(
    ["application/json", "text/event-stream", "text/html", "application/json; charset=utf-8"]
)

DEEP = b"[" * 50_000 + b"]" * 50_000


@st.composite
def answers(draw: st.DrawFn, provider: str) -> Answer:
    """Draw one hostile answer for *provider*'s endpoints."""
    kind = draw(st.sampled_from(["json", "recorded", "stream", "bytes", "deep"]))
    content_type = "application/json"
    if kind == "json":
        body = json.dumps(draw(JSON)).encode()
    elif kind == "recorded":
        document = draw(st.sampled_from(BODIES[provider]))
        body = json.dumps(document).encode()
        cut = draw(st.integers(0, len(body)))
        body = body[:cut] if draw(st.booleans()) else body
    elif kind == "stream":
        body = render_events(draw(st.sampled_from(STREAMS[provider]))).encode()
        body = body[: draw(st.integers(0, len(body)))]
        content_type = "text/event-stream"
    elif kind == "bytes":
        body = draw(st.binary(max_size=64))
    else:
        body = DEEP
    if draw(st.integers(0, 4)) == 0:
        content_type = draw(CONTENT_TYPES)
    status = draw(
        st.sampled_from([200, 200, 200, 201, 204, 302, 400, 401, 404, 408, 429, 500, 503, 529])
        | st.integers(100, 599)
    )
    headers = [("content-type", content_type)]
    headers += draw(st.lists(st.tuples(HINT_NAMES, HINTS), max_size=3))
    if status in (204, 304) or status < 200:
        body = b""  # a body there would be read as the next response
    framing = draw(st.sampled_from(["length", "length", "close", "short"]))
    return Answer(status, tuple(headers), body, framing)


@asynccontextmanager
async def hostile_server(script: dict[str, Answer]) -> AsyncIterator[int]:
    """Listen on 127.0.0.1; answer each request by its ``x-client-request-id`` from *script*."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port: int = listener.extra(anyio.abc.SocketAttribute.local_port)

    async def handle(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            try:
                data = b""
                while b"\r\n\r\n" not in data and len(data) < 1_000_000:
                    data += await stream.receive()
                head, _, rest = data.partition(b"\r\n\r\n")
                fields = {}
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    fields[name.strip().lower()] = value.strip()
                length = int(fields.get(b"content-length", b"0"))
                while len(rest) < length:
                    rest += await stream.receive()
                rid = fields.get(b"x-client-request-id", b"?").decode()
                await stream.send(script[rid].wire())
            except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                pass

    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handle, tg)
        try:
            yield port
        finally:
            tg.cancel_scope.cancel()


def _provider(name: str, port: int) -> Any:
    url = f"http://127.0.0.1:{port}"
    if name == "openai":
        return OpenAI(url + "/v1", api_key="sk-fuzz-e2e")
    if name == "anthropic":
        return Anthropic(url, api_key="sk-ant-fuzz-e2e")
    return Gemini(url, api_key="AIza-fuzz-e2e")


def _requests(name: str, n: int, embeddings: bool) -> list[ChatRequest | EmbeddingRequest]:
    out: list[ChatRequest | EmbeddingRequest] = []
    for i in range(n):
        if embeddings and name != "anthropic" and i % 2:
            out.append(EmbeddingRequest("fuzz-embed", ["a", "b"], id=f"r{i}"))
        else:
            out.append(
                ChatRequest(
                    "fuzz-model", [{"role": "user", "content": f"q{i}"}], max_tokens=8, id=f"r{i}"
                )
            )
    return out


async def run_batch(
    name: str, script: list[Answer], stream: bool, embeddings: bool
) -> tuple[list[Any], list[ChatRequest | EmbeddingRequest]]:
    requests = _requests(name, len(script), embeddings and not stream)
    by_id = {r.id: a for r, a in zip(requests, script, strict=True)}
    async with (
        hostile_server(by_id) as port,
        corral.Client(
            _provider(name, port),
            max_concurrency=3,
            retry=POLICY,
            request_timeout=REQUEST_TIMEOUT,
        ) as client,
    ):
        batch = await client.run(requests, stream=stream)
    return list(batch.results), requests


def _hostile(
    status: int, body: bytes, *headers: tuple[str, str], framing: str = "length"
) -> Answer:
    return Answer(status, (("content-type", "application/json"), *headers), body, framing)


FAR_FUTURE = ("retry-after", "Fri, 31 Dec 9999 23:59:59 GMT")
OK_BODY = json.dumps(
    {"choices": [{"message": {"content": "ok"}, "finish_reason": "stop"}], "usage": {}}
).encode()


@pytest.mark.parametrize("name", ["openai", "anthropic", "gemini"])
@settings(
    max_examples=4,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data(), stream=st.booleans(), embeddings=st.booleans())
@example(data=None, stream=False, embeddings=False)
def test_hostile_server_batch(
    anyio_backend_name: str,
    anyio_backend_options: dict[str, Any],
    name: str,
    data: st.DataObject | None,
    stream: bool,
    embeddings: bool,
) -> None:
    """Every input of a batch gets one result, in bounded time, whatever the server sends.

    The explicit example replays the regressions: JSON nested past the recursion limit (once a
    RecursionError that crashed the batch), a token count of 1e400 (once an OverflowError), a
    Retry-After in the year 9999 on a 429 (failed at once, not waited out), and a body cut
    short of its content-length.
    """
    if data is None:
        script = [
            _hostile(200, DEEP),
            _hostile(
                200, b'{"choices":[{"message":{"content":"x"}}],"usage":{"prompt_tokens":1e400}}'
            ),
            _hostile(429, b'{"error":{"message":"slow down"}}', FAR_FUTURE),
            _hostile(200, OK_BODY, framing="short"),
            _hostile(500, DEEP, ("retry-after", "NaN"), ("retry-after-ms", "-5")),
        ]
    else:
        script = data.draw(st.lists(answers(name), min_size=1, max_size=5), label="script")
    started = time.monotonic()
    results, requests = anyio.run(
        run_batch,
        name,
        script,
        stream,
        embeddings,
        backend=anyio_backend_name,
        backend_options=anyio_backend_options,
    )
    elapsed = time.monotonic() - started
    assert [r.id for r in results] == [r.id for r in requests]
    for result, request in zip(results, requests, strict=True):
        if isinstance(result, Failure):
            assert isinstance(result.error.kind, ErrorKind)
            assert 0 <= result.attempts <= POLICY.attempts
        elif isinstance(request, EmbeddingRequest):
            assert isinstance(result, EmbeddingResult)
            assert len(result.vectors) == len(request.texts)
        else:
            assert isinstance(result, Completion)
    assert elapsed < BOUND_S, f"the batch took {elapsed:.1f}s"
    if data is None:
        kinds = [r.error.kind if isinstance(r, Failure) else None for r in results]
        assert kinds[0] is ErrorKind.INVALID_RESPONSE
        assert kinds[1] is ErrorKind.INVALID_RESPONSE
        assert kinds[2] is ErrorKind.RATE_LIMITED
        assert results[2].attempts == 1  # the hint is beyond max_retry_after: no second try
