"""TLS through anyio: verification by default, a CA given explicitly or through the environment."""

from __future__ import annotations

import ssl
from pathlib import Path

import anyio
import httpx2
import pytest
import trustme

from corral import ErrorKind
from corral._flow.retry import classify_exception
from corral._transport.fast import FastTransport
from corral._transport.http11 import ParserName

from .transport_helpers import Peer, answer, http_response, raw_server

pytestmark = pytest.mark.anyio

OK = http_response(200, b"secure")


@pytest.fixture(scope="module")
def client_context(ca: trustme.CA) -> ssl.SSLContext:
    """A client context that trusts the throwaway CA."""
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> str:
    """The throwaway CA's certificate as a PEM file."""
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


async def serve_ok(peer: Peer) -> None:
    """Answer every request with a 200."""
    await answer(peer, OK)


async def test_self_signed_server_fails_verification_by_default(
    server_context: ssl.SSLContext,
) -> None:
    """The default context rejects a certificate from an unknown CA: ConnectError, retryable."""
    async with (
        raw_server(serve_ok, tls=server_context) as server,
        FastTransport() as transport,
        httpx2.AsyncClient(transport=transport) as client,
    ):
        with pytest.raises(httpx2.ConnectError, match="CERTIFICATE_VERIFY_FAILED") as caught:
            await client.get(server.url())
        stats = transport.statistics()
    assert (stats.open, stats.active, stats.connects) == (0, 0, 0)
    assert classify_exception(caught.value).kind == ErrorKind.CONNECTION


@pytest.mark.parametrize("how", ["context", "path", "no-verify"])
async def test_trusted_ca_works_and_keeps_alive(
    parser: ParserName,
    server_context: ssl.SSLContext,
    client_context: ssl.SSLContext,
    ca_file: str,
    how: str,
) -> None:
    """With the CA as a context or a file, or verification off, requests share one connection."""
    choices: dict[str, ssl.SSLContext | str | bool] = {
        "context": client_context,
        "path": ca_file,
        "no-verify": False,
    }
    verify = choices[how]
    async with (
        raw_server(serve_ok, tls=server_context) as server,
        FastTransport(verify=verify, parser=parser) as transport,
        httpx2.AsyncClient(transport=transport) as client,
    ):
        bodies = [(await client.get(server.url())).content for _ in range(3)]
        stats = transport.statistics()
    assert server.scheme == "https"
    assert bodies == [b"secure"] * 3
    assert stats.connects == 1
    assert stats.delegated == 0


@pytest.mark.parametrize("trust_env", [True, False])
async def test_ssl_cert_file_is_honoured_only_with_trust_env(
    server_context: ssl.SSLContext,
    ca_file: str,
    monkeypatch: pytest.MonkeyPatch,
    trust_env: bool,
) -> None:
    """SSL_CERT_FILE names the trusted CAs when trust_env is true, and is ignored otherwise."""
    monkeypatch.setenv("SSL_CERT_FILE", ca_file)
    async with (
        raw_server(serve_ok, tls=server_context) as server,
        FastTransport(trust_env=trust_env) as transport,
        httpx2.AsyncClient(transport=transport) as client,
    ):
        if trust_env:
            assert (await client.get(server.url())).content == b"secure"
        else:
            with pytest.raises(httpx2.ConnectError):
                await client.get(server.url())


async def test_stale_tls_connection_is_replaced(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    """A TLS connection the server closed while idle is replaced without an error."""

    async def one_then_close(peer: Peer) -> None:
        await answer(peer, OK, times=1)

    async with (
        raw_server(one_then_close, tls=server_context) as server,
        FastTransport(verify=client_context) as transport,
        httpx2.AsyncClient(transport=transport) as client,
    ):
        await client.get(server.url())
        with anyio.fail_after(5):
            await server.done.wait()
        second = await client.get(server.url())
        stats = transport.statistics()
    assert second.content == b"secure"
    assert (stats.stale_replaced, stats.connects) == (1, 2)


async def test_http2_sends_https_through_the_stock_transport(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    """With http2=True, https requests go to httpx2's own transport (HTTP/1.1 if not offered)."""
    async with (
        raw_server(serve_ok, tls=server_context) as server,
        raw_server(serve_ok) as plain,
        FastTransport(verify=client_context, http2=True) as transport,
        httpx2.AsyncClient(transport=transport) as client,
    ):
        secure = await client.get(server.url())
        cleartext = await client.get(plain.url())
        stats = transport.statistics()
    assert secure.content == cleartext.content == b"secure"
    assert stats.delegated == 1
    assert stats.requests == 1
