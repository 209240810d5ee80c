"""What FastTransport hands to httpx2's stock transport: proxies, Unix sockets, other schemes."""

from __future__ import annotations

import sys
from pathlib import Path

import anyio
import anyio.abc
import httpx2
import pytest

from corral._transport.fast import FastTransport

from .transport_helpers import Peer, answer, http_response, raw_server

pytestmark = pytest.mark.anyio


class Proxy:
    """A loopback 'proxy' that records the absolute-form targets it is asked for."""

    def __init__(self) -> None:
        self.targets: list[bytes] = []

    async def __call__(self, peer: Peer) -> None:
        while (request := await peer.read_request()) is not None:
            self.targets.append(request.target)
            await peer.send(http_response(200, b"via proxy"))


async def direct(peer: Peer) -> None:
    """Answer every request as the origin server itself."""
    await answer(peer, http_response(200, b"direct"))


async def test_environment_proxy_is_used_with_trust_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """HTTP_PROXY routes requests through the stock transport to the proxy."""
    proxy = Proxy()
    async with raw_server(proxy) as proxy_server:
        monkeypatch.setenv("HTTP_PROXY", proxy_server.url())
        async with (
            FastTransport() as transport,
            httpx2.AsyncClient(transport=transport) as client,
        ):
            response = await client.get("http://api.example.invalid/v1/models?x=1")
            stats = transport.statistics()
    assert response.content == b"via proxy"
    assert proxy.targets == [b"http://api.example.invalid/v1/models?x=1"]
    assert (stats.delegated, stats.requests) == (1, 0)


async def test_no_proxy_and_trust_env_false_go_direct(monkeypatch: pytest.MonkeyPatch) -> None:
    """NO_PROXY hosts, and every host when trust_env is false, skip the environment's proxy."""
    proxy = Proxy()
    async with raw_server(proxy) as proxy_server, raw_server(direct) as origin:
        monkeypatch.setenv("HTTP_PROXY", proxy_server.url())
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        async with FastTransport() as honouring, FastTransport(trust_env=False) as ignoring:
            for transport in (honouring, ignoring):
                async with httpx2.AsyncClient(transport=transport) as client:
                    assert (await client.get(origin.url())).content == b"direct"
                assert transport.statistics().delegated == 0
        monkeypatch.delenv("NO_PROXY")
        async with (
            FastTransport(trust_env=False) as transport,
            httpx2.AsyncClient(transport=transport) as client,
        ):
            assert (await client.get(origin.url())).content == b"direct"
    assert proxy.targets == []


async def test_explicit_proxy_carries_every_request() -> None:
    """proxy= sends all requests through the stock transport, even with trust_env false."""
    proxy = Proxy()
    async with (
        raw_server(proxy) as proxy_server,
        FastTransport(proxy=proxy_server.url(), trust_env=False) as transport,
        httpx2.AsyncClient(transport=transport) as client,
    ):
        await client.get("http://one.invalid/a")
        await client.post("http://two.invalid/b", json={})
        stats = transport.statistics()
    assert proxy.targets == [b"http://one.invalid/a", b"http://two.invalid/b"]
    assert (stats.delegated, stats.requests, stats.open) == (2, 0, 0)


@pytest.mark.skipif(sys.platform == "win32", reason="no Unix sockets")
async def test_unix_socket_goes_through_the_stock_transport(tmp_path: Path) -> None:
    """uds= connects through the stock transport to a Unix socket."""
    path = tmp_path / "api.sock"
    served = anyio.Event()
    async with (
        await anyio.create_unix_listener(path) as listener,
        anyio.create_task_group() as tg,
    ):

        async def serve(stream: anyio.abc.SocketStream) -> None:
            async with stream:
                await direct(Peer(stream, 1))
            served.set()

        tg.start_soon(listener.serve, serve, tg)
        async with (
            FastTransport(uds=str(path)) as transport,
            httpx2.AsyncClient(transport=transport) as client,
        ):
            response = await client.get("http://localhost/v1/models")
            stats = transport.statistics()
        # Let the handler see the client's EOF: cancelling a Unix stream's pending read on
        # asyncio trips an anyio race (a reader callback on a cancelled future).
        with anyio.fail_after(5):
            await served.wait()
        tg.cancel_scope.cancel()
    assert response.content == b"direct"
    assert (stats.delegated, stats.requests) == (1, 0)


async def test_unknown_scheme_is_unsupported() -> None:
    """A scheme other than http or https raises httpx2.UnsupportedProtocol."""
    async with FastTransport() as transport:
        with pytest.raises(httpx2.UnsupportedProtocol):
            await transport.handle_async_request(httpx2.Request("GET", "ftp://127.0.0.1/x"))


def test_invalid_arguments_are_rejected() -> None:
    """Nonsense limits and unknown parsers fail at construction."""
    with pytest.raises(ValueError, match="max_connections"):
        FastTransport(max_connections=0)
    with pytest.raises(ValueError, match="keepalive_expiry"):
        FastTransport(keepalive_expiry=-1)
    with pytest.raises(ValueError, match="parser"):
        FastTransport(parser="fast")  # type: ignore[arg-type]
