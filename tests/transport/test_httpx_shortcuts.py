"""httpx2 objects built by the shortcuts equal those httpx2's own constructors build."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx2
import pytest

import corral
from corral._transport.fast import _Response
from corral._transport.httpx_internals import (
    environment_proxies,
    header_fields,
    inner_stream,
    json_post,
    raw_headers,
    set_read,
    streamed_response,
)
from corral.providers._base import post_json

PAIRS = [
    (b"Host", b"api.example.org:8443"),
    (b"Content-Length", b"17"),
    (b"Content-Type", b"application/json"),
    (b"X-Twice", b"a"),
    (b"x-twice", b"b"),
]


def state(obj: object, *, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """Return an object's attributes, headers as their private list, streams by type."""
    found: dict[str, Any] = {}
    for name, value in vars(obj).items():
        if name in skip:
            continue
        if isinstance(value, httpx2.Headers):
            value = (vars(value), value.raw)
        elif isinstance(value, httpx2.ByteStream):
            value = (type(value), b"".join(value))
        found[name] = value
    return found


def test_raw_headers_equal_httpx2_headers() -> None:
    """raw_headers holds exactly what httpx2.Headers holds for the same byte pairs."""
    built = raw_headers(PAIRS)
    stock = httpx2.Headers(PAIRS)
    assert vars(built) == vars(stock)
    assert built == stock
    assert built.get_list("x-twice") == ["a", "b"]
    assert header_fields(stock) == [(name, name.lower(), value) for name, value in PAIRS]


def test_json_post_equals_a_read_httpx2_request() -> None:
    """json_post builds the request httpx2.Request builds (and reads) from the same parts."""
    url = httpx2.URL("https://api.example.org:8443/v1/chat/completions")
    body = b'{"model":"m"}'
    built = json_post(url, PAIRS, body)
    stock = httpx2.Request("POST", url, headers=PAIRS, stream=httpx2.ByteStream(body))
    stock.read()
    assert state(built) == state(stock)
    assert built.content == body
    assert repr(built) == repr(stock)


def test_post_json_matches_httpx2_with_content() -> None:
    """post_json sends what httpx2 would for the same URL, headers and JSON body."""
    url = httpx2.URL("http://127.0.0.1:8000/v1/chat/completions")
    headers = {"authorization": "Bearer k", "content-type": "application/json"}
    built = post_json(url, headers, {"model": "m", "messages": [{"content": "héllo"}]})
    stock = httpx2.Request("POST", url, headers=headers, content=built.content)
    assert built.content == '{"model":"m","messages":[{"content":"héllo"}]}'.encode()
    # The framing headers come first here, last in httpx2: the same fields.
    assert sorted(built.headers.raw) == sorted(stock.headers.raw)
    assert state(built, skip=("headers",)) == state(stock, skip=("headers",))


@pytest.mark.parametrize("value", ["\u00e9", "a\r\nx-injected: 1", "a\n", "a\x00"])
def test_post_json_refuses_a_header_value_that_cannot_be_sent(value: str) -> None:
    """A non-ASCII or line-breaking header value fails its request alone: InvalidRequestError."""
    url = httpx2.URL("http://127.0.0.1:8000/v1/chat/completions")
    with pytest.raises(corral.InvalidRequestError, match="x-name"):
        post_json(url, {"x-name": value}, {})


@pytest.mark.parametrize("cls", [httpx2.Response, _Response])
def test_streamed_response_equals_an_httpx2_response(cls: type[httpx2.Response]) -> None:
    """streamed_response builds the response httpx2.Response builds around a stream."""
    stream = httpx2.ByteStream(b"{}")
    extensions: dict[str, object] = {"http_version": b"HTTP/1.1", "reason_phrase": b"OK"}
    built = streamed_response(cls, 200, PAIRS, stream, extensions)
    stock = cls(200, headers=PAIRS, stream=stream, extensions=extensions)
    assert type(built) is cls
    assert state(built) == state(stock)
    assert built.extensions == stock.extensions
    assert built.stream is stream


@pytest.mark.anyio
async def test_set_read_leaves_the_response_as_aread_does() -> None:
    """set_read leaves every attribute as httpx2's own aread() does for the same body."""
    extensions: dict[str, object] = {"http_version": b"HTTP/1.1", "reason_phrase": b"OK"}
    stock = httpx2.Response(200, headers=PAIRS, stream=httpx2.ByteStream(b"{}"))
    stock.extensions = extensions
    await stock.aread()
    built = streamed_response(httpx2.Response, 200, PAIRS, httpx2.ByteStream(b"{}"), extensions)
    set_read(built, b"{}")
    # httpx2 caches the decoder it made, and the headers their encoding, lazily, when needed.
    skip = ("stream", "_decoder", "headers")
    assert state(built, skip=skip) == state(stock, skip=skip)
    assert built.headers.raw == stock.headers.raw
    assert built.content == b"{}"
    assert built.num_bytes_downloaded == 2


@pytest.mark.anyio
async def test_inner_stream_finds_the_transport_stream_an_async_client_wraps() -> None:
    """inner_stream returns the stream a transport gave, from httpx2.AsyncClient's wrapper."""

    class Given(httpx2.AsyncByteStream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            yield b"{}"

    given = Given()

    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, stream=given)

    async with httpx2.AsyncClient(transport=httpx2.MockTransport(handler)) as client:
        response = await client.send(client.build_request("GET", "http://x/"), stream=True)
        assert response.stream is not given
        assert inner_stream(response.stream) is given
        await response.aclose()
    assert inner_stream(given) is None


def test_environment_proxies_route_as_httpx2_does(monkeypatch: pytest.MonkeyPatch) -> None:
    """environment_proxies gives the proxy httpx2's own transport picks for each URL."""
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("NO_PROXY", "internal.example,127.0.0.1")
    proxies = environment_proxies()
    client = httpx2.AsyncClient(trust_env=True)

    def chosen(url: str) -> str | None:
        for pattern, proxy in proxies:
            if pattern.matches(httpx2.URL(url)):
                return proxy
        return None

    for url in ("https://api.example.org/", "https://internal.example/", "http://a.example/"):
        stock = client._transport_for_url(httpx2.URL(url))
        assert (chosen(url) is not None) == (stock is not client._transport), url
