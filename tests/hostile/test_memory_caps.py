"""Memory stays bounded whatever a server sends: heads, bodies and compressed answers are capped.

Each attack runs through ``Client.run`` on both of corral's transports, next to honest
requests: the hostile request ends as one ``invalid_response`` Failure after a single attempt,
the others succeed, and the server could hand the client only a bounded number of bytes before
it stopped reading (the server's own count, which does not depend on the machine).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import anyio
import pytest

import corral
from corral import ErrorKind, RetryPolicy
from corral.providers import OpenAI

from ..transport.transport_helpers import Peer, raw_server
from .memory_bombs import (
    ATTACK,
    STALE,
    Tally,
    bomb,
    endless_body,
    endless_header_line,
    endless_headers,
    extra_response,
    hostile,
    sized_body,
)

pytestmark = pytest.mark.anyio

TransportName = Literal["fast", "httpx"]
TRANSPORTS = [
    "fast",
    # httpx2 reads httpcore's body through a nested async generator that closing the response
    # does not finish: a body abandoned at the cap leaves it to the garbage collector, which
    # trio reports. A limit of that transport (corral's own closes what it opens).
    pytest.param(
        "httpx",
        marks=pytest.mark.filterwarnings(
            "ignore:Exception ignored in.*HTTP11ConnectionByteStream"
            ":pytest.PytestUnraisableExceptionWarning"
        ),
    ),
]
CAP = 1024 * 1024
# What the client may have accepted past a cap: its reads in flight and the loopback socket's
# buffers, which the kernel sizes (a few MiB at most), never the whole attack.
SLACK = 16 * 1024 * 1024


def requests(n: int = 4) -> list[corral.ChatRequest]:
    """Return *n* honest requests with the attack in the middle."""
    prompts = ["hi"] * n
    prompts[n // 2] = ATTACK
    return [
        corral.ChatRequest("gpt-4o-mini", [{"role": "user", "content": p}], id=f"r{i}")
        for i, p in enumerate(prompts)
    ]


async def run_against(
    attack: Callable[[Peer, Tally], object],
    transport: TransportName,
    *,
    cap: int = CAP,
) -> tuple[corral.BatchResult, Tally]:
    """Run a batch against a server making *attack*; return the results and the server's tally."""
    tally = Tally()
    async with raw_server(hostile(attack, tally)) as server:
        provider = OpenAI(server.url("/v1"), api_key="sk-test")
        async with corral.Client(
            provider,
            transport=transport,
            max_response_bytes=cap,
            retry=RetryPolicy(attempts=3, wait_initial=0.0, wait_max=0.0),
            request_timeout=20.0,
        ) as client:
            with anyio.fail_after(60):
                batch = await client.run(requests())
    return batch, tally


def assert_one_refusal(batch: corral.BatchResult, words: str) -> None:
    """The attack request failed once, as invalid_response naming *words*; the rest succeeded."""
    failures = [r for r in batch.results if isinstance(r, corral.Failure)]
    assert [f.id for f in failures] == ["r2"], failures
    failure = failures[0]
    assert failure.error.kind is ErrorKind.INVALID_RESPONSE, failure.error
    assert not failure.error.retryable
    assert failure.attempts == 1
    assert words in failure.error.message, failure.error.message
    assert all(isinstance(r, corral.Completion) for r in batch.results if r.id != "r2")


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(
    "attack", [endless_headers, endless_header_line], ids=["many-lines", "one-line"]
)
async def test_endless_head_is_refused_early(
    transport: TransportName, attack: Callable[[Peer, Tally], object]
) -> None:
    """A head that never ends fails that request as invalid_response after a bounded read."""
    batch, tally = await run_against(attack, transport)
    assert_one_refusal(batch, "head")
    assert tally.attacks == 1
    assert tally.sent < 256 * 1024 + SLACK


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_endless_body_stops_at_max_response_bytes(transport: TransportName) -> None:
    """A body that never ends fails as invalid_response once max_response_bytes are read."""
    batch, tally = await run_against(endless_body, transport)
    assert_one_refusal(batch, "max_response_bytes=1048576")
    assert tally.sent < CAP + SLACK


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_large_declared_body_stops_at_the_cap(transport: TransportName) -> None:
    """A 50 MiB body with its Content-Length is cut at a 1 MiB cap, not read to the end."""
    batch, tally = await run_against(sized_body(50 * 1024 * 1024), transport)
    assert_one_refusal(batch, "max_response_bytes")
    assert tally.sent < CAP + SLACK


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_body_at_the_cap_is_accepted(transport: TransportName) -> None:
    """The cap is inclusive: an answer of exactly max_response_bytes is read (and then parsed)."""
    batch, _ = await run_against(sized_body(CAP), transport)
    failure = batch.results[2]
    assert isinstance(failure, corral.Failure)
    # Read whole, then refused by the JSON parser, not by the cap.
    assert "max_response_bytes" not in failure.error.message


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("coding", ["gzip", "deflate", "br"])
async def test_unasked_compression_is_refused_not_decoded(
    transport: TransportName, coding: str
) -> None:
    """A compression bomb corral never asked for is refused, never decoded into memory."""
    batch, tally = await run_against(bomb(coding, 50 * 1024 * 1024), transport)
    assert_one_refusal(batch, f"encoded with '{coding}'")
    assert tally.attacks == 1


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_streamed_completion_is_capped(transport: TransportName) -> None:
    """An event stream whose one event never ends fails as invalid_response at the cap."""

    async def endless_event(peer: Peer, tally: Tally) -> None:
        head = (
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
        )
        await peer.send(head)
        chunk = b"data: " + b"e" * 65_530
        framed = b"%x\r\n%b\r\n" % (len(chunk), chunk)
        while True:
            await peer.send(framed)
            tally.sent += len(framed)

    tally = Tally()

    async def handle(peer: Peer) -> None:
        if await peer.read_request() is not None:
            tally.attacks += 1
            await endless_event(peer, tally)

    async with raw_server(handle) as server:
        provider = OpenAI(server.url("/v1"), api_key="sk-test")
        async with corral.Client(
            provider, transport=transport, max_response_bytes=CAP, request_timeout=20.0
        ) as client:
            request = corral.ChatRequest("gpt-4o-mini", [{"role": "user", "content": "x"}], id="s")
            with anyio.fail_after(60):
                batch = await client.run([request], stream=True)
    (failure,) = batch.results
    assert isinstance(failure, corral.Failure)
    assert failure.error.kind is ErrorKind.INVALID_RESPONSE, failure.error
    assert failure.attempts == 1
    assert tally.sent < CAP + SLACK


async def complete_after_extra_response(
    transport: TransportName, *, apart: bool
) -> tuple[str | None, str | None]:
    """Send the attack, then a request on the same connection; return both answers' text."""
    tally = Tally()
    async with raw_server(hostile(extra_response(apart=apart), tally, then_answer=True)) as server:
        provider = OpenAI(server.url("/v1"), api_key="sk-test")
        async with corral.Client(provider, max_concurrency=1, transport=transport) as client:
            first = await client.complete(
                corral.ChatRequest("gpt-4o-mini", [{"role": "user", "content": ATTACK}])
            )
            # Let the extra response reach the client's socket before the next request.
            await anyio.sleep(0.2)
            second = await client.complete(
                corral.ChatRequest("gpt-4o-mini", [{"role": "user", "content": "hi"}])
            )
    return first.content, second.content


@pytest.mark.parametrize("apart", [False, True], ids=["same-segment", "later"])
async def test_fast_transport_refuses_an_extra_response(apart: bool) -> None:
    """An unasked second response on a kept-alive connection never answers the next request."""
    assert await complete_after_extra_response("fast", apart=apart) == ("first", "fine")


async def test_httpx_transport_delivers_an_extra_response_to_the_next_request() -> None:
    """The documented limit of transport="httpx": httpcore hands the next request the extra one.

    If this starts failing, httpx2 fixed it: update docs/transport.md and docs/guarantees.md.
    """
    assert await complete_after_extra_response("httpx", apart=False) == ("first", STALE)
