"""httpx2 requests, responses and headers built straight from values corral has already checked.

httpx2's constructors accept anything (str or bytes, mappings or pairs, content of any kind)
and normalise it, at a cost per call that is a sizeable share of a fast exchange: for the
request a JSON adapter builds, and for the response corral's own transport parsed, every
value is already the bytes httpx2 would end up holding. These functions set the same
attributes directly.

They reach into httpx2's private attributes. `tests/transport/test_httpx_shortcuts.py` builds
every object both ways and compares all their attributes, so that an httpx2 release that
changes them fails there, not in a user's request.
"""

from __future__ import annotations

from typing import TypeVar

import httpx2

_R = TypeVar("_R", bound=httpx2.Response)


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
