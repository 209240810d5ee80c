"""httpx2 requests, responses and headers built straight from values corral has already checked.

httpx2's constructors accept anything (str or bytes, mappings or pairs, content of any kind)
and normalise it, at a cost per call that is a sizeable share of a fast exchange: for the
request a JSON adapter builds, and for the response corral's own transport parsed, every
value is already the bytes httpx2 would end up holding. These functions set the same
attributes directly.

This is the one module in corral that touches httpx2's private names (attributes, and the
proxy-environment helpers of ``httpx2._utils``). `tests/transport/test_httpx_shortcuts.py`
builds every object both ways and compares all their attributes, so that an httpx2 release
that changes them fails there, not in a user's request.
"""

from __future__ import annotations

from typing import TypeAlias, TypeVar

import httpx2
from httpx2._utils import URLPattern, get_environment_proxies

_R = TypeVar("_R", bound=httpx2.Response)

#: A pattern of origins and the proxy URL for them (None: no proxy), from the environment.
EnvironmentProxy: TypeAlias = tuple[URLPattern, str | None]


def environment_proxies() -> list[EnvironmentProxy]:
    """Return the proxies ``HTTP_PROXY``, ``HTTPS_PROXY``, ``ALL_PROXY`` and ``NO_PROXY`` set.

    Most specific pattern first, in the order httpx2's own transport matches them; match a URL
    with ``pattern.matches(url)``.
    """
    return sorted((URLPattern(pattern), url) for pattern, url in get_environment_proxies().items())


def inner_stream(stream: object) -> object:
    """Return the transport's stream inside *stream*, which ``httpx2.AsyncClient`` may wrap.

    The client wraps a transport's stream to time the response; a stream it did not wrap is
    returned as it is (``None`` if *stream* is another wrapper).

    Args:
        stream: A response's ``stream``.
    """
    return getattr(stream, "_stream", None)


def set_read(response: httpx2.Response, body: bytes) -> None:
    """Leave *response* as ``aread()`` leaves it after reading *body*: content, state, count.

    The caller closes the stream.

    Args:
        response: A response whose body has not been read.
        body: Its whole body, already decoded.
    """
    response._content = body
    response.is_stream_consumed = True
    response._num_bytes_downloaded = len(body)
    response.is_closed = True


def raw_headers(pairs: list[tuple[bytes, bytes]]) -> httpx2.Headers:
    """Return ``httpx2.Headers(pairs)`` for header names and values that are bytes already.

    Args:
        pairs: ``(name, value)`` byte pairs, in order.
    """
    headers = object.__new__(httpx2.Headers)
    headers._list = [(name, name.lower(), value) for name, value in pairs]
    headers._encoding = None
    return headers


def header_fields(headers: httpx2.Headers) -> list[tuple[bytes, bytes, bytes]]:
    """Return the ``(name, lower-cased name, value)`` byte triples *headers* holds, in order.

    httpx2's own list, not a copy: read it, never change it.

    Args:
        headers: The headers.
    """
    return headers._list


def json_post(url: httpx2.URL, headers: list[tuple[bytes, bytes]], body: bytes) -> httpx2.Request:
    """Return ``httpx2.Request("POST", url, headers=headers, stream=ByteStream(body))``, read.

    Args:
        url: The endpoint; shared, not copied (URLs are immutable).
        headers: Every header, framing ones included, as byte pairs.
        body: The encoded body.
    """
    request = object.__new__(httpx2.Request)
    request.method = "POST"
    request.url = url
    request.headers = raw_headers(headers)
    request.extensions = {}
    request.stream = httpx2.ByteStream(body)
    request._content = body
    return request


def streamed_response(
    cls: type[_R],
    status_code: int,
    headers: list[tuple[bytes, bytes]],
    stream: httpx2.AsyncByteStream,
    extensions: dict[str, object],
) -> _R:
    """Return ``cls(status_code, headers=headers, stream=stream, extensions=extensions)``.

    Args:
        cls: ``httpx2.Response`` or a subclass that adds no attributes.
        status_code: The status.
        headers: The header fields as received, as byte pairs.
        stream: The body stream.
        extensions: The response extensions; taken, not copied.
    """
    response = object.__new__(cls)
    response.status_code = status_code
    response.headers = raw_headers(headers)
    response._request = None
    response.next_request = None
    response.extensions = extensions
    response.history = []
    response.is_closed = False
    response.is_stream_consumed = False
    response.default_encoding = "utf-8"
    response.stream = stream
    response._num_bytes_downloaded = 0
    return response
