"""The byte-level fault matrix: each server misbehaviour maps to its httpx2 error and retry kind.

Every case runs on every path an attempt can take through the transport (the ``path`` fixture:
the inline exchange corral's Client uses, the timed one, the body whole or streamed; see
``attempt_paths``), with each parser, on asyncio and trio. Every case also checks that the pool
is left with no active connection. Cases that end in a timeout run in virtual time: the timeout
elapses on the virtual clock, at no wall-clock cost.
"""

from __future__ import annotations

import gzip
import json

import anyio
import httpx2
import pytest

from corral import ErrorKind
from corral._flow.retry import classify_exception
from corral._transport.fast import FastTransport
from corral._transport.http11 import ParserName
from corral._transport.limits import ResponseRefused

from .attempt_paths import AttemptPath, Phase
from .transport_helpers import (
    Peer,
    answer,
    black_hole,
    free_port,
    http_response,
    raw_server,
    stall_after,
)

pytestmark = pytest.mark.anyio

HEAD_200 = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"


def assert_kind(exc: BaseException, kind: ErrorKind) -> None:
    """The Client's classification gives *kind*, and retries it."""
    info = classify_exception(exc)
    assert info.kind == kind
    assert info.retryable


def assert_pool_idle(transport: FastTransport) -> None:
    """No connection is left checked out, and no request is left waiting."""
    stats = transport.statistics()
    assert stats.active == 0
    assert stats.waiting == 0


async def test_connection_refused(parser: ParserName, path: AttemptPath) -> None:
    """Nothing listening: ConnectError, a connection error worth a retry."""
    async with FastTransport(parser=parser) as transport:
        with pytest.raises(httpx2.ConnectError) as caught:
            await path.send(transport, "GET", f"http://127.0.0.1:{free_port()}/")
        assert_pool_idle(transport)
        assert transport.statistics().open == 0
    assert_kind(caught.value, ErrorKind.CONNECTION)


async def test_connect_timeout(parser: ParserName, path: AttemptPath) -> None:
    """A connect that cannot finish in time: ConnectTimeout, a timeout."""
    async with (
        raw_server(stall_after()) as server,
        FastTransport(parser=parser) as transport,
    ):
        with pytest.raises(httpx2.ConnectTimeout) as caught:
            await path.send(transport, "GET", server.url(), timeouts={"connect": 0.0})
        assert_pool_idle(transport)
        assert transport.statistics().open == 0
    assert_kind(caught.value, ErrorKind.TIMEOUT)


@pytest.mark.parametrize("read_first", [False, True], ids=["at-accept", "after-request"])
async def test_accept_then_close(parser: ParserName, path: AttemptPath, read_first: bool) -> None:
    """A server that closes without a byte: RemoteProtocolError, a connection error."""

    async def close_at_once(peer: Peer) -> None:
        if read_first:
            await peer.read_request()

    async with (
        raw_server(close_at_once) as server,
        FastTransport(parser=parser) as transport,
    ):
        with pytest.raises(
            (httpx2.RemoteProtocolError, httpx2.ReadError, httpx2.WriteError)
        ) as caught:
            await path.send(transport, "POST", server.url(), json={"q": 1})
        assert_pool_idle(transport)
    if read_first:
        assert isinstance(caught.value, httpx2.RemoteProtocolError)
        assert "without sending a response" in str(caught.value)
    assert_kind(caught.value, ErrorKind.CONNECTION)


@pytest.mark.parametrize("where", ["before-response", "mid-body"])
async def test_reset(parser: ParserName, path: AttemptPath, where: str) -> None:
    """A TCP reset before or inside the body: ReadError, a connection error."""

    async def reset(peer: Peer) -> None:
        await peer.read_request()
        if where == "mid-body":
            await peer.send(HEAD_200 + b"content-length: 100\r\n\r\n" + b'{"partial": ')
        await peer.reset()

    async with (
        raw_server(reset) as server,
        FastTransport(parser=parser) as transport,
    ):
        with pytest.raises((httpx2.ReadError, httpx2.RemoteProtocolError)) as caught:
            await path.send(transport, "POST", server.url(), json={"q": 1})
        assert_pool_idle(transport)
        assert transport.statistics().open == 0
    assert_kind(caught.value, ErrorKind.CONNECTION)


@pytest.mark.virtual_time
@pytest.mark.parametrize("sent", [b"", HEAD_200 + b"content-length: 10\r\n\r\n"])
async def test_stall_is_a_read_timeout(parser: ParserName, path: AttemptPath, sent: bytes) -> None:
    """Silence, or headers then silence: ReadTimeout after the read timeout, a timeout."""

    async with (
        raw_server(stall_after(sent)) as server,
        FastTransport(parser=parser) as transport,
    ):
        start = anyio.current_time()
        with pytest.raises(httpx2.ReadTimeout) as caught:
            await path.send(transport, "GET", server.url(), timeouts={"read": 2.0})
        elapsed = anyio.current_time() - start
        assert_pool_idle(transport)
        assert transport.statistics().discarded == 1
    assert 2.0 <= elapsed < 3.0
    assert_kind(caught.value, ErrorKind.TIMEOUT)


async def test_slow_drip_within_the_read_timeout_succeeds(
    parser: ParserName, path: AttemptPath
) -> None:
    """A steady drip gets through: per-read timeouts restart, a deadline covers the whole."""
    pieces = [b'{"n": [', b"1, ", b"2, ", b"3, ", b"4, ", b"5", b"]}"]

    async def drip(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(HEAD_200 + b"content-length: %d\r\n\r\n" % len(b"".join(pieces)))
        for piece in pieces:
            await anyio.sleep(0.05)
            await peer.send(piece)
        await answer(peer, http_response(200, b"next"))

    async with (
        raw_server(drip) as server,
        FastTransport(parser=parser) as transport,
    ):
        # Each read waits 0.05 s; the whole body takes 0.35 s, over a per-read timeout.
        limits: dict[Phase, float] = {"read": 0.25 if path.per_read else 5.0}
        start = anyio.current_time()
        response = await path.send(transport, "GET", server.url(), timeouts=limits)
        elapsed = anyio.current_time() - start
        following = await path.send(transport, "GET", server.url(), timeouts=limits)
        assert following.content == b"next"
        stats = transport.statistics()
    assert response.json() == {"n": [1, 2, 3, 4, 5]}
    assert elapsed > 0.25
    assert stats.connects == 1


@pytest.mark.virtual_time
@pytest.mark.parametrize("in_headers", [False, True], ids=["in-body", "in-headers"])
async def test_drip_with_one_long_gap_is_a_read_timeout(
    parser: ParserName, path: AttemptPath, in_headers: bool
) -> None:
    """A drip that stops for longer than the read timeout fails with ReadTimeout."""
    first = HEAD_200 if in_headers else HEAD_200 + b"content-length: 9\r\n\r\nabc"

    async def drip(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(first)
        for _ in range(3):
            await anyio.sleep(0.5)
            await peer.send(b"x" if not in_headers else b"x-drip: 1\r\n")
        await anyio.sleep(10)
        await peer.send(b"never read")

    async with (
        raw_server(drip) as server,
        FastTransport(parser=parser) as transport,
    ):
        start = anyio.current_time()
        with pytest.raises(httpx2.ReadTimeout):
            await path.send(transport, "GET", server.url(), timeouts={"read": 1.0})
        elapsed = anyio.current_time() - start
        assert_pool_idle(transport)
    # Per-read timeouts restart with each drip and fail in the long gap; a deadline bounds all.
    if path.per_read:
        assert 2.5 <= elapsed < 3.0
    else:
        assert 1.0 <= elapsed < 1.5


@pytest.mark.parametrize(
    "sent",
    [
        HEAD_200 + b"transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n5\r\nwor",
        HEAD_200 + b"transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n",
        HEAD_200 + b"content-length: 100\r\n\r\n" + b'{"short": true}',
        b"HTTP/1.1 200 OK\r\ncontent-le",
    ],
    ids=["chunk-cut", "no-last-chunk", "content-length-short", "head-cut"],
)
async def test_truncated_response_is_a_protocol_error(
    parser: ParserName, path: AttemptPath, sent: bytes
) -> None:
    """A response cut short by the server closing: RemoteProtocolError, a connection error."""

    async def send_and_close(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(sent)

    async with (
        raw_server(send_and_close) as server,
        FastTransport(parser=parser) as transport,
    ):
        with pytest.raises(httpx2.RemoteProtocolError) as caught:
            await path.send(transport, "GET", server.url())
        assert_pool_idle(transport)
        assert transport.statistics().open == 0
    assert_kind(caught.value, ErrorKind.CONNECTION)


async def test_body_longer_than_content_length(parser: ParserName, path: AttemptPath) -> None:
    """Extra bytes past Content-Length: the declared body stands, the connection is not reused."""
    sent = HEAD_200 + b"content-length: 7\r\n\r\n" + b'{"a":1}garbage'
    async with (
        raw_server(lambda peer: answer(peer, sent, times=1)) as server,
        FastTransport(parser=parser) as transport,
    ):
        first = await path.send(transport, "GET", server.url())
        second = await path.send(transport, "GET", server.url())
        stats = transport.statistics()
    assert first.json() == second.json() == {"a": 1}
    assert stats.connects == 2
    assert stats.active == 0


@pytest.mark.parametrize(
    "sent",
    [
        b"HTTP/1.1 OK 200\r\n\r\n",
        b"SSH-2.0-OpenSSH\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
    ],
    ids=["status-line", "not-http", "header"],
)
async def test_malformed_response_is_a_protocol_error(
    parser: ParserName, path: AttemptPath, sent: bytes
) -> None:
    """Bytes that are not an HTTP response: RemoteProtocolError, and the connection is dropped."""
    async with (
        raw_server(lambda peer: answer(peer, sent)) as server,
        FastTransport(parser=parser) as transport,
    ):
        with pytest.raises(httpx2.RemoteProtocolError) as caught:
            await path.send(transport, "GET", server.url())
        assert_pool_idle(transport)
        assert transport.statistics().open == 0
    assert_kind(caught.value, ErrorKind.CONNECTION)


async def test_non_json_200_is_fine_at_transport_level(
    parser: ParserName, path: AttemptPath
) -> None:
    """A 200 whose body is not JSON is still a 200: parsing it is the provider's business."""
    sent = http_response(200, b"<html>gateway says hi</html>", [("content-type", "text/html")])
    async with (
        raw_server(lambda peer: answer(peer, sent)) as server,
        FastTransport(parser=parser) as transport,
    ):
        response = await path.send(transport, "POST", server.url(), json={"q": 1})
        assert_pool_idle(transport)
    assert response.status_code == 200
    assert response.text == "<html>gateway says hi</html>"
    with pytest.raises(json.JSONDecodeError):
        response.json()


@pytest.mark.virtual_time
async def test_server_not_reading_is_a_write_timeout(parser: ParserName, path: AttemptPath) -> None:
    """A server that never reads a large upload: WriteTimeout once the buffers fill."""
    with black_hole() as port:
        async with (
            FastTransport(parser=parser) as transport,
        ):
            start = anyio.current_time()
            with pytest.raises(httpx2.WriteTimeout) as caught:
                await path.send(
                    transport,
                    "POST",
                    f"http://127.0.0.1:{port}/",
                    content=b"u" * (16 * 1024 * 1024),
                    timeouts={"write": 1.0},
                )
            elapsed = anyio.current_time() - start
            assert_pool_idle(transport)
            assert transport.statistics().open == 0
    assert 1.0 <= elapsed < 2.0
    assert_kind(caught.value, ErrorKind.TIMEOUT)


@pytest.mark.virtual_time
async def test_full_pool_is_a_pool_timeout(parser: ParserName, path: AttemptPath) -> None:
    """With every connection busy, a request waits the pool timeout, then PoolTimeout."""

    async def slow_stream(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(HEAD_200 + b"content-length: 2\r\n\r\n")
        await anyio.sleep(100)
        await peer.send(b"{}")
        await answer(peer, http_response(200, b"{}"))

    async with (
        raw_server(slow_stream) as server,
        FastTransport(parser=parser, max_connections=1) as transport,
    ):
        held = await path.open(transport, "GET", server.url(), timeouts={"read": 1000.0})
        try:
            start = anyio.current_time()
            with pytest.raises(httpx2.PoolTimeout) as caught:
                await path.send(transport, "GET", server.url(), timeouts={"pool": 3.0})
            elapsed = anyio.current_time() - start
            assert transport.statistics().waiting == 0
            assert (await path.read(held)).content == b"{}"
        finally:
            await held.aclose()
        after = await path.send(transport, "GET", server.url())
        assert_pool_idle(transport)
        stats = transport.statistics()
    assert 3.0 <= elapsed < 4.0
    assert after.status_code == 200
    assert stats.connects == 1
    assert_kind(caught.value, ErrorKind.TIMEOUT)


def assert_refused(exc: BaseException) -> None:
    """The Client's classification gives invalid_response, never retried."""
    assert isinstance(exc, ResponseRefused)
    info = classify_exception(exc)
    assert info.kind == ErrorKind.INVALID_RESPONSE
    assert not info.retryable


@pytest.mark.parametrize(
    ("sent", "words"),
    [
        (HEAD_200 + b"x-filler: 0123456789\r\n" * 400, "max_header_bytes=4096"),
        (HEAD_200 + b"x-long: " + b"a" * 3000 + b"\r\ncontent-length: 0\r\n\r\n", "line"),
        (HEAD_200 + b"x-long: " + b"a" * 10_000, "max_header_bytes=4096"),
    ],
    ids=["many-lines", "long-line", "unfinished-line"],
)
async def test_head_over_the_caps_is_refused(
    parser: ParserName, path: AttemptPath, sent: bytes, words: str
) -> None:
    """A head past its caps: ResponseRefused, invalid_response, and the connection is closed."""
    async with (
        raw_server(stall_after(sent)) as server,
        FastTransport(parser=parser, max_header_bytes=4096, max_header_line=2048) as transport,
    ):
        with pytest.raises(ResponseRefused, match=words) as caught:
            await path.send(transport, "GET", server.url())
        assert_pool_idle(transport)
        assert transport.statistics().open == 0
    assert_refused(caught.value)


@pytest.mark.parametrize(
    "sent",
    [
        HEAD_200 + b"content-length: 5000\r\n\r\n" + b"a" * 5000,
        HEAD_200 + b"transfer-encoding: chunked\r\n\r\n" + b"800\r\n" + b"b" * 2048 + b"\r\n",
    ],
    ids=["content-length", "chunked-unfinished"],
)
async def test_body_over_max_response_bytes_is_refused(
    parser: ParserName, path: AttemptPath, sent: bytes
) -> None:
    """A body past max_response_bytes: ResponseRefused, invalid_response; one at it passes."""
    async with (
        raw_server(stall_after(sent)) as server,
        FastTransport(parser=parser, max_response_bytes=1000) as transport,
    ):
        with pytest.raises(ResponseRefused, match="max_response_bytes=1000") as caught:
            await path.send(transport, "GET", server.url())
        assert_pool_idle(transport)
    assert_refused(caught.value)
    exact = http_response(200, b"c" * 1000)
    async with (
        raw_server(lambda peer: answer(peer, exact)) as server,
        FastTransport(parser=parser, max_response_bytes=1000) as transport,
    ):
        response = await path.send(transport, "GET", server.url())
    assert response.content == b"c" * 1000


@pytest.mark.parametrize(
    ("coding", "accept", "refused"),
    [
        ("gzip", None, True),
        ("br", "gzip, deflate", True),
        ("gzip", "gzip;q=1.0, br", False),
        ("identity", None, False),
    ],
)
async def test_content_coding_not_asked_for_is_refused(
    parser: ParserName, path: AttemptPath, coding: str, accept: str | None, refused: bool
) -> None:
    """A Content-Encoding the request did not accept is refused before its body is read."""
    body = gzip.compress(b'{"a": 1}') if coding == "gzip" else b'{"a": 1}'
    sent = http_response(200, body, [("content-encoding", coding)])
    headers = {"accept-encoding": accept} if accept else {}
    async with (
        raw_server(lambda peer: answer(peer, sent)) as server,
        FastTransport(parser=parser) as transport,
    ):
        if refused:
            with pytest.raises(ResponseRefused, match=f"encoded with '{coding}'") as caught:
                await path.send(transport, "GET", server.url(), headers=headers)
            assert_refused(caught.value)
        else:
            response = await path.send(transport, "GET", server.url(), headers=headers)
            if not path.streamed:
                assert response.json() == {"a": 1}
        assert_pool_idle(transport)
