"""Round trips through FastTransport against loopback servers, with both parsers."""

from __future__ import annotations

import gzip
import hashlib
import json
import zlib
from collections.abc import AsyncIterator
from contextlib import aclosing

import anyio
import httpx2
import pytest

from corral._transport.fast import FastTransport
from corral._transport.http11 import ParserName

from .transport_helpers import Peer, answer, chunked, http_response, raw_server

pytestmark = pytest.mark.anyio


async def echo(peer: Peer) -> None:
    """Answer every request with a JSON description of it, as the server saw it."""
    served = 0
    while (request := await peer.read_request()) is not None:
        served += 1
        body = json.dumps(
            {
                "method": request.method.decode(),
                "target": request.target.decode(),
                "headers": [[k.decode(), v.decode()] for k, v in request.headers],
                "body_sha256": hashlib.sha256(request.body).hexdigest(),
                "body_size": len(request.body),
                "connection": peer.index,
                "served": served,
            }
        ).encode()
        await peer.send(http_response(200, body, [("content-type", "application/json")]))


async def test_get_and_post_reach_the_server_intact(parser: ParserName) -> None:
    """Method, target with query, headers and JSON body arrive as sent; the answer comes back."""
    async with (
        raw_server(echo) as server,
        FastTransport(parser=parser) as transport,
        httpx2.AsyncClient(transport=transport) as client,
    ):
        got = await client.get(server.url("/v1/models?limit=2&x=a%20b"), headers={"X-Id": "7"})
        posted = await client.post(server.url("/v1/chat/completions"), json={"q": "2+2"})
    assert got.status_code == 200
    assert got.http_version == "HTTP/1.1"
    assert got.reason_phrase == "OK"
    seen = got.json()
    assert seen["method"] == "GET"
    assert seen["target"] == "/v1/models?limit=2&x=a%20b"
    assert ["X-Id", "7"] in seen["headers"]
    assert ["Host", f"127.0.0.1:{server.port}"] in seen["headers"]
    sent = posted.json()
    assert sent["method"] == "POST"
    assert sent["body_sha256"] == hashlib.sha256(b'{"q":"2+2"}').hexdigest()
    assert ["Content-Type", "application/json"] in sent["headers"]


async def test_keep_alive_reuses_one_connection(parser: ParserName) -> None:
    """Sequential requests share one connection: one connect, served in order on it."""
    async with (
        raw_server(echo) as server,
        FastTransport(parser=parser) as transport,
        httpx2.AsyncClient(transport=transport) as client,
    ):
        answers = [(await client.post(server.url(), content=b"x")).json() for _ in range(5)]
        stats = transport.statistics()
    assert [a["served"] for a in answers] == [1, 2, 3, 4, 5]
    assert {a["connection"] for a in answers} == {1}
    assert server.accepted == 1
    assert stats.connects == 1
    assert stats.requests == 5
    assert (stats.open, stats.idle, stats.active) == (1, 1, 0)


async def test_concurrent_requests_stay_within_max_connections(parser: ParserName) -> None:
    """Twenty concurrent requests over a pool of three open at most three connections."""
    results: list[int] = []
    async with (
        raw_server(echo) as server,
        FastTransport(parser=parser, max_connections=3) as transport,
        httpx2.AsyncClient(transport=transport) as client,
    ):

        async def one() -> None:
            results.append((await client.get(server.url())).status_code)

        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(one)
        stats = transport.statistics()
    assert results == [200] * 20
    assert server.accepted <= 3
    assert stats.connects == server.accepted
    assert stats.active == 0
    assert stats.waiting == 0


async def test_direct_use_without_a_client(parser: ParserName) -> None:
    """handle_async_request works on a bare httpx2.Request and the body reads with aread."""
    async with raw_server(echo) as server, FastTransport(parser=parser) as transport:
        request = httpx2.Request("PUT", server.url("/x"), content=b"abc")
        response = await transport.handle_async_request(request)
        body = json.loads(await response.aread())
        await response.aclose()
    assert body["method"] == "PUT"
    assert body["body_size"] == 3


async def test_chunked_response_body(parser: ParserName) -> None:
    """A chunked response is reassembled into its body."""
    response_bytes = http_response(
        200, headers=[("transfer-encoding", "chunked")], length=False
    ) + chunked(b"hello, ", b"chunked ", b"world")
    async with (
        raw_server(lambda peer: answer(peer, response_bytes)) as server,
        FastTransport(parser=parser) as transport,
        httpx2.AsyncClient(transport=transport) as client,
    ):
        first = await client.get(server.url())
        second = await client.get(server.url())
        stats = transport.statistics()
    assert first.content == second.content == b"hello, chunked world"
    assert stats.connects == 1


def compress(encoding: str, data: bytes) -> bytes:
    """Compress *data* as a server would for this Content-Encoding."""
    if encoding == "gzip":
        return gzip.compress(data)
    if encoding == "deflate":
        return zlib.compress(data)
    brotli = pytest.importorskip("brotli")
    packed: bytes = brotli.compress(data)
    return packed


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br"])
async def test_compressed_bodies_are_decoded(parser: ParserName, encoding: str) -> None:
    """gzip, deflate and br bodies pass through raw and httpx2 decodes them."""
    plain = json.dumps({"choices": [{"text": "compressed " * 200}]}).encode()
    packed = compress(encoding, plain)
    response_bytes = http_response(200, packed, [("content-encoding", encoding)])
    async with (
        raw_server(lambda peer: answer(peer, response_bytes)) as server,
        FastTransport(parser=parser) as transport,
        httpx2.AsyncClient(transport=transport) as client,
    ):
        response = await client.get(server.url())
    assert len(packed) < len(plain)
    assert response.content == plain
    assert response.num_bytes_downloaded == len(packed)


async def test_streaming_body_arrives_chunk_by_chunk(parser: ParserName) -> None:
    """Each event of a streamed response reaches the reader before the server sends the next."""
    events = [b"data: one\n\n", b"data: two\n\n", b"data: [DONE]\n\n"]
    consumed = [anyio.Event() for _ in events]

    async def sse(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(
            http_response(
                200,
                headers=[("content-type", "text/event-stream"), ("transfer-encoding", "chunked")],
                length=False,
            )
        )
        for event, seen in zip(events, consumed, strict=True):
            await peer.send(b"%x\r\n%b\r\n" % (len(event), event))
            # The next event waits for the client: only real streaming can get past here.
            await seen.wait()
        await peer.send(b"0\r\n\r\n")
        await answer(peer, http_response(200, b"after"))

    received: list[bytes] = []
    async with (
        raw_server(sse) as server,
        FastTransport(parser=parser) as transport,
        httpx2.AsyncClient(transport=transport) as client,
    ):
        with anyio.fail_after(10):
            async with client.stream("POST", server.url(), json={"stream": True}) as response:
                async for piece in response.aiter_raw():
                    received.append(piece)
                    consumed[len(received) - 1].set()
            follow_up = await client.get(server.url())
        stats = transport.statistics()
    assert received == events
    assert follow_up.content == b"after"
    assert stats.connects == 1


async def test_large_bodies_both_ways(parser: ParserName) -> None:
    """A 3 MB upload and a 5 MB download arrive whole and in order."""
    upload = bytes(range(256)) * (3 * 4096)
    download = hashlib.sha256(b"seed").digest() * (5 * 32768)

    async def big(peer: Peer) -> None:
        request = await peer.read_request()
        assert request is not None
        assert request.body == upload
        await peer.send(http_response(200, download))

    async with (
        raw_server(big) as server,
        FastTransport(parser=parser) as transport,
        httpx2.AsyncClient(transport=transport) as client,
    ):
        response = await client.post(server.url(), content=upload)
        stats = transport.statistics()
    assert response.content == download
    assert stats.active == 0
    assert stats.idle == 1


async def test_streaming_request_body_is_sent_chunked(parser: ParserName) -> None:
    """An async-iterator body of unknown length goes out with chunked framing."""

    async def parts() -> AsyncIterator[bytes]:
        for i in range(50):
            yield b"part-%d;" % i
            yield b""

    async with (
        raw_server(echo) as server,
        FastTransport(parser=parser) as transport,
        httpx2.AsyncClient(transport=transport) as client,
    ):
        response = await client.post(server.url(), content=parts())
    seen = response.json()
    expected = b"".join(b"part-%d;" % i for i in range(50))
    assert ["Transfer-Encoding", "chunked"] in seen["headers"]
    assert seen["body_sha256"] == hashlib.sha256(expected).hexdigest()


async def test_head_request_skips_the_declared_body(parser: ParserName) -> None:
    """A HEAD response with a Content-Length has no body, and its connection is reused."""

    async def head_then_get(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(b"HTTP/1.1 200 OK\r\ncontent-length: 999\r\n\r\n")
        await answer(peer, http_response(200, b"body"))

    async with (
        raw_server(head_then_get) as server,
        FastTransport(parser=parser) as transport,
        httpx2.AsyncClient(transport=transport) as client,
    ):
        head = await client.head(server.url())
        got = await client.get(server.url())
        stats = transport.statistics()
    assert head.headers["content-length"] == "999"
    assert head.content == b""
    assert got.content == b"body"
    assert stats.connects == 1


@pytest.mark.parametrize("side", ["request", "response"])
async def test_connection_close_is_honoured(parser: ParserName, side: str) -> None:
    """Connection: close from either side retires the connection after that exchange."""
    close_header = [("connection", "close")] if side == "response" else []
    response_bytes = http_response(200, b"ok", close_header)
    request_headers = {"Connection": "close"} if side == "request" else {}
    async with (
        raw_server(lambda peer: answer(peer, response_bytes, times=1)) as server,
        FastTransport(parser=parser) as transport,
        httpx2.AsyncClient(transport=transport) as client,
    ):
        for _ in range(2):
            response = await client.get(server.url(), headers=request_headers)
            assert response.content == b"ok"
        stats = transport.statistics()
    assert stats.connects == 2
    assert server.accepted == 2
    assert (stats.open, stats.active, stats.discarded) == (0, 0, 0)


async def test_early_close_of_a_streamed_response_discards_the_connection(
    parser: ParserName,
) -> None:
    """Leaving a streamed body unread closes its connection; the next request opens another."""
    big = http_response(200, b"z" * 1_000_000)
    async with (
        raw_server(lambda peer: answer(peer, big)) as server,
        FastTransport(parser=parser) as transport,
        httpx2.AsyncClient(transport=transport) as client,
    ):
        async with (
            client.stream("GET", server.url()) as response,
            aclosing(response.aiter_raw()) as pieces,
        ):
            async for _ in pieces:
                break
        mid = transport.statistics()
        assert (await client.get(server.url())).content == b"z" * 1_000_000
        stats = transport.statistics()
    assert (mid.active, mid.open, mid.discarded) == (0, 0, 1)
    assert stats.connects == 2


async def test_statistics_and_repr_describe_the_pool(parser: ParserName) -> None:
    """statistics() and repr name the parser, the bound and the per-origin counts."""
    async with (
        raw_server(echo) as server,
        FastTransport(parser=parser, max_connections=7) as transport,
        httpx2.AsyncClient(transport=transport) as client,
    ):
        await client.get(server.url())
        stats = transport.statistics()
        text = repr(transport)
    assert stats.parser == parser
    assert stats.max_connections == 7
    assert len(stats.origins) == 1
    origin = stats.origins[0]
    assert origin.origin == f"http://127.0.0.1:{server.port}"
    assert (origin.idle, origin.active, origin.open) == (1, 0, 1)
    assert f"parser={parser!r}" in text
    assert "max_connections=7" in text
    assert "open=1 idle=1" in text
    assert "closed" in repr(transport)


@pytest.mark.parametrize("through_client", [False, True], ids=["direct", "client"])
async def test_reading_a_whole_body_leaves_httpx2_state(
    parser: ParserName, through_client: bool
) -> None:
    """aread of an already-complete body sets content, counts and state as httpx2's path does."""
    body = json.dumps({"id": "chatcmpl-1", "choices": []}).encode()
    sent = http_response(200, body, [("content-type", "application/json")])
    async with (
        raw_server(lambda peer: answer(peer, sent)) as server,
        FastTransport(parser=parser) as transport,
        httpx2.AsyncClient(transport=transport) as client,
    ):
        if through_client:
            response = await client.get(server.url())
            assert response.elapsed.total_seconds() >= 0
        else:
            response = await transport.handle_async_request(httpx2.Request("GET", server.url()))
            assert await response.aread() == body
        stats = transport.statistics()
    assert response.content == body
    assert response.json() == {"id": "chatcmpl-1", "choices": []}
    assert response.num_bytes_downloaded == len(body)
    assert response.is_stream_consumed
    assert response.is_closed
    assert await response.aread() == body
    with pytest.raises(httpx2.StreamConsumed):
        async for _ in response.aiter_raw():
            pass
    assert stats.active == 0


async def test_whole_identity_body_skips_httpx2_streaming_path(
    parser: ParserName, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A complete, unencoded body is read without httpx2's chunk iterators, even via a client."""

    def unused(self: httpx2.Response, chunk_size: int | None = None) -> AsyncIterator[bytes]:
        raise AssertionError("httpx2's streaming path was taken")

    sent = http_response(200, b'{"fast": true}')
    async with (
        raw_server(lambda peer: answer(peer, sent)) as server,
        FastTransport(parser=parser) as transport,
        httpx2.AsyncClient(transport=transport) as client,
    ):
        monkeypatch.setattr(httpx2.Response, "aiter_bytes", unused)
        through_client = await client.get(server.url())
        direct = await transport.handle_async_request(httpx2.Request("GET", server.url()))
        assert await direct.aread() == b'{"fast": true}'
    assert through_client.json() == {"fast": True}
