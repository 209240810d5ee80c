"""The ``deadline`` extension: one time limit for a whole exchange, enforced at the socket.

corral's Client bounds each attempt this way instead of opening a cancel scope per attempt, so
these cases prove that the limit holds wherever the exchange can wait: for a pool slot, for a
connect, for room to write, for the head, for the body, and against a peer that never lets a
read wait. All but the flood run in virtual time.
"""

from __future__ import annotations

import socket
import ssl

import anyio
import httpx2
import pytest
import trustme

import corral
from corral import ErrorKind
from corral._transport.fast import FastTransport
from corral._transport.http11 import ParserName
from corral._transport.sockets import DeadlinePassed, SocketStream
from corral.providers import OpenAI

from .transport_helpers import (
    Peer,
    answer,
    black_hole,
    http_response,
    raw_server,
    stall_after,
    unanswered_address,
)

pytestmark = pytest.mark.anyio

HEAD_200 = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
COMPLETION = (
    b'{"id": "c1", "model": "gpt-4o-mini", "choices": [{"index": 0, "message": {"role": '
    b'"assistant", "content": "4"}, "finish_reason": "stop"}], "usage": {"prompt_tokens": 3, '
    b'"completion_tokens": 1, "total_tokens": 4}}'
)


def client_for(transport: FastTransport) -> httpx2.AsyncClient:
    """Return a client whose own timeouts are all far longer than any deadline below."""
    return httpx2.AsyncClient(transport=transport, timeout=100.0)


def within(seconds: float) -> dict[str, object]:
    """Return request extensions that give the exchange *seconds* from now."""
    return {"deadline": anyio.current_time() + seconds}


def assert_pool_idle(transport: FastTransport) -> None:
    """No connection is left checked out, and no request is left waiting."""
    stats = transport.statistics()
    assert (stats.active, stats.waiting) == (0, 0)


@pytest.mark.virtual_time
@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
@pytest.mark.parametrize("sent", [b"", HEAD_200 + b"content-length: 10\r\n\r\n"])
async def test_a_stall_ends_at_the_deadline(
    parser: ParserName, sent: bytes, tls: bool, ca: trustme.CA, server_context: ssl.SSLContext
) -> None:
    """Silence, or headers then silence, ends in ReadTimeout at the deadline; over TLS too, which
    must let the deadline through as a timeout rather than turn it into a broken connection."""
    trusted = ssl.create_default_context()
    ca.configure_trust(trusted)
    async with (
        raw_server(stall_after(sent), tls=server_context if tls else None) as server,
        FastTransport(parser=parser, verify=trusted) as transport,
        client_for(transport) as client,
    ):
        start = anyio.current_time()
        with pytest.raises(httpx2.ReadTimeout, match="time limit"):
            await client.get(server.url(), extensions=within(1.5))
        elapsed = anyio.current_time() - start
        assert_pool_idle(transport)
        assert transport.statistics().discarded == 1
    assert 1.5 <= elapsed < 2.0


@pytest.mark.virtual_time
@pytest.mark.parametrize("in_headers", [False, True], ids=["in-body", "in-headers"])
async def test_a_drip_that_every_read_timeout_allows_ends_at_the_deadline(
    parser: ParserName, in_headers: bool
) -> None:
    """A byte every half second never trips a per-read timeout, but stops at the deadline."""
    first = HEAD_200 if in_headers else HEAD_200 + b"content-length: 100\r\n\r\n"

    async def drip(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(first)
        for _ in range(100):
            await anyio.sleep(0.5)
            await peer.send(b"x-drip: 1\r\n" if in_headers else b"x")

    async with (
        raw_server(drip) as server,
        FastTransport(parser=parser) as transport,
        httpx2.AsyncClient(transport=transport, timeout=httpx2.Timeout(100.0, read=1.0)) as client,
    ):
        start = anyio.current_time()
        with pytest.raises(httpx2.ReadTimeout):
            await client.get(server.url(), extensions=within(2.2))
        elapsed = anyio.current_time() - start
        assert_pool_idle(transport)
    assert 2.2 <= elapsed < 2.5


@pytest.mark.virtual_time
async def test_a_full_pool_is_waited_for_until_the_deadline(parser: ParserName) -> None:
    """With the one connection busy, a request waits for a slot until its deadline at most."""

    async def slow(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(HEAD_200 + b"content-length: 2\r\n\r\n")
        await anyio.sleep(100)
        await peer.send(b"{}")

    async with (
        raw_server(slow) as server,
        FastTransport(parser=parser, max_connections=1) as transport,
        client_for(transport) as client,
    ):
        async with client.stream("GET", server.url()) as held:
            start = anyio.current_time()
            with pytest.raises(httpx2.PoolTimeout, match="before the deadline"):
                await client.get(server.url(), extensions={"deadline": start + 3.0})
            elapsed = anyio.current_time() - start
            assert transport.statistics().waiting == 0
            await held.aclose()
        assert_pool_idle(transport)
    assert 3.0 <= elapsed < 3.5


@pytest.mark.virtual_time
async def test_a_hanging_connect_ends_at_the_deadline(parser: ParserName) -> None:
    """A connect that the server never completes ends in ConnectTimeout at the deadline."""
    with unanswered_address() as (_, (_, port)):
        async with FastTransport(parser=parser) as transport, client_for(transport) as client:
            start = anyio.current_time()
            with pytest.raises(httpx2.ConnectTimeout, match="the deadline"):
                await client.get(f"http://127.0.0.1:{port}/", extensions=within(1.5))
            elapsed = anyio.current_time() - start
            assert_pool_idle(transport)
            assert transport.statistics().open == 0
    assert 1.5 <= elapsed < 2.0


@pytest.mark.virtual_time
async def test_a_server_that_never_reads_ends_the_write_at_the_deadline(
    parser: ParserName,
) -> None:
    """A large upload to a server that never reads ends in WriteTimeout at the deadline."""
    with black_hole() as port:
        async with FastTransport(parser=parser) as transport, client_for(transport) as client:
            start = anyio.current_time()
            with pytest.raises(httpx2.WriteTimeout):
                await client.post(
                    f"http://127.0.0.1:{port}/",
                    content=b"u" * (16 * 1024 * 1024),
                    extensions=within(1.0),
                )
            elapsed = anyio.current_time() - start
            assert_pool_idle(transport)
    assert 1.0 <= elapsed < 1.5


@pytest.mark.virtual_time
async def test_a_deadline_stays_with_its_own_request(parser: ParserName) -> None:
    """A kept-alive connection does not carry one request's deadline over to the next."""

    async def answer_late_the_second_time(peer: Peer) -> None:
        await answer(peer, http_response(200, b"first"), times=1)
        await peer.read_request()
        await anyio.sleep(5)
        await peer.send(http_response(200, b"second"))
        await peer.at_eof()

    async with (
        raw_server(answer_late_the_second_time) as server,
        FastTransport(parser=parser) as transport,
        client_for(transport) as client,
    ):
        first = await client.get(server.url(), extensions=within(1.0))
        second = await client.get(server.url())
        stats = transport.statistics()
    assert (first.content, second.content) == (b"first", b"second")
    assert stats.connects == 1


async def test_a_deadline_that_is_not_a_time_is_refused() -> None:
    """A deadline that is not a number on anyio's clock is a TypeError naming the fix."""
    async with FastTransport() as transport, client_for(transport) as client:
        with pytest.raises(TypeError, match=r"anyio.current_time\(\) \+ seconds"):
            await client.get("http://127.0.0.1:9/", extensions={"deadline": "soon"})
        assert_pool_idle(transport)


async def test_a_flood_cannot_outrun_the_deadline() -> None:
    """A peer whose data is always waiting, so that no read ever waits, still meets the deadline."""
    ours, theirs = socket.socketpair()
    with theirs:
        ours.setblocking(False)
        theirs.sendall(b"x" * 4096)
        stream = SocketStream(ours)
        async with stream:
            stream.deadline = anyio.current_time() - 1.0
            reads = 0
            with pytest.raises(DeadlinePassed, match="time limit"):
                for reads in range(1, 4096):  # noqa: B007 - counted for the assertion below
                    assert await stream.receive(1) == b"x"
    assert reads <= 16


@pytest.mark.virtual_time
@pytest.mark.parametrize("transport", ["fast", "httpx"])
async def test_the_client_ends_a_dripping_attempt_at_request_timeout(transport: str) -> None:
    """An answer that drips slower than request_timeout allows fails each attempt in time."""
    attempts = 0

    async def drip(peer: Peer) -> None:
        nonlocal attempts
        await peer.read_request()
        attempts += 1
        await peer.send(HEAD_200 + b"content-length: %d\r\n\r\n" % len(COMPLETION))
        for byte in COMPLETION:
            await anyio.sleep(0.25)
            await peer.send(bytes([byte]))

    async with raw_server(drip) as server:
        client = corral.Client(
            OpenAI(f"http://127.0.0.1:{server.port}/v1", api_key="k"),
            transport=transport,  # type: ignore[arg-type]
            request_timeout=2.0,
            retry=corral.RetryPolicy(attempts=2, wait_initial=0.5, wait_jitter=0, timeout=60),
        )
        async with client:
            start = anyio.current_time()
            batch = await client.run(
                [corral.ChatRequest("gpt-4o-mini", [{"role": "user", "content": "2+2?"}])]
            )
            result = batch.results[0]
            elapsed = anyio.current_time() - start
    assert isinstance(result, corral.Failure)
    assert result.error.kind is ErrorKind.TIMEOUT
    assert "request_timeout=2" in result.error.message
    assert (result.attempts, attempts) == (2, 2)
    assert 4.5 <= elapsed < 5.0


@pytest.mark.virtual_time
@pytest.mark.parametrize("transport", ["fast", "httpx"])
async def test_the_client_ends_a_stalled_attempt_at_the_deadline(transport: str) -> None:
    """When the request's deadline comes before request_timeout, it ends the attempt."""

    async with raw_server(stall_after()) as server:
        client = corral.Client(
            OpenAI(f"http://127.0.0.1:{server.port}/v1", api_key="k"),
            transport=transport,  # type: ignore[arg-type]
            request_timeout=30.0,
            retry=corral.RetryPolicy(attempts=3, timeout=4.0),
        )
        async with client:
            start = anyio.current_time()
            batch = await client.run(
                [corral.ChatRequest("gpt-4o-mini", [{"role": "user", "content": "2+2?"}])]
            )
            result = batch.results[0]
            elapsed = anyio.current_time() - start
    assert isinstance(result, corral.Failure)
    assert result.error.kind is ErrorKind.TIMEOUT
    assert "deadline of 4s passed after 1 attempt" in result.error.message
    assert 4.0 <= elapsed < 4.5
