"""HTTP/1.1 on the wire, without I/O: request heads out, response events in.

:class:`corral.FastTransport` writes requests with :func:`encode_request_head` and reads
responses through a :class:`ResponseParser`: :class:`HttptoolsParser` (llhttp, the fast path) or
:class:`H11Parser` (pure Python, the fallback). Both report the same things: status, headers,
body chunks, whether the message is complete and whether the connection may be reused.
"""

from __future__ import annotations

import re
from typing import Final, Literal, Protocol

import h11
import httpx2

from .._errors import ResponseRefused
from .httpx_internals import header_fields
from .limits import DEFAULT_MAX_HEADER_BYTES, DEFAULT_MAX_HEADER_LINE

try:
    import httptools
except ImportError:  # pragma: no cover - exercised only where httptools has no wheel
    httptools = None  # type: ignore[assignment]


ParserName = Literal["auto", "httptools", "h11"]

HAS_HTTPTOOLS: Final = httptools is not None

_TOKEN: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Control characters other than tab (CR and LF are counted separately).
_CONTROL: Final = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_VALID_NAMES: set[bytes] = set()
_VALID_NAMES_MAX: Final = 4096
_NO_BODY_STATUS: Final = frozenset({204, 304})


class ResponseParser(Protocol):
    """Incremental parser of one HTTP/1.1 response.

    ``feed`` appends body chunks, framing removed, to ``body`` (the caller drains the list); a
    parser raises :class:`httpx2.RemoteProtocolError` for malformed or truncated input, and
    :class:`~corral._transport.limits.ResponseRefused` for a head past its caps (a header line,
    or the whole head, longer than the parser was built to accept).
    ``encoded`` tells whether the response has a ``Content-Encoding`` to undo.
    """

    status_code: int
    reason: bytes
    http_version: bytes
    headers: list[tuple[bytes, bytes]]
    body: list[bytes]
    headers_complete: bool
    message_complete: bool
    encoded: bool

    def feed(self, data: bytes) -> None:
        """Parse more bytes received from the server."""

    def feed_eof(self) -> None:
        """Record that the server closed the connection."""

    def reusable(self) -> bool:
        """Return whether the connection may carry another request after this response."""


def _check_token(name: bytes) -> None:
    if name in _VALID_NAMES:
        return
    if _TOKEN.fullmatch(name) is None:
        raise httpx2.LocalProtocolError(f"Illegal method or header name {name!r}")
    if len(_VALID_NAMES) < _VALID_NAMES_MAX:
        _VALID_NAMES.add(name)


def encode_request_head(
    method: bytes, target: bytes, headers: httpx2.Headers, host: bytes
) -> tuple[bytes, bool, bool]:
    """Serialise a request line and headers.

    Return the bytes, whether the request asks to close the connection, and whether its body
    is sent with ``Transfer-Encoding: chunked``.

    Args:
        method: The request method, e.g. ``b"POST"``.
        target: The request target: path and query, already percent-encoded.
        headers: The header fields, sent in their order with their names as given.
        host: The ``Host`` value to add when *headers* has none.

    Raises:
        httpx2.LocalProtocolError: A name, value, method or target would break the framing.
    """
    parts = [method, b" ", target, b" HTTP/1.1\r\n"]
    wants_close = chunked = has_host = False
    valid = _VALID_NAMES
    fields = header_fields(headers)
    for name, lowered, value in fields:
        if name not in valid:  # the common case, without a call: a name seen before
            _check_token(name)
        if lowered == b"host":
            has_host = True
        elif lowered == b"connection":
            wants_close = b"close" in value.lower()
        elif lowered == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
        parts += (name, b": ", value, b"\r\n")
    lines = len(fields) + 2
    if not has_host:
        parts[4:4] = (b"Host: ", host, b"\r\n")
        lines += 1
    parts.append(b"\r\n")
    head = b"".join(parts)
    # Every line break must be one we wrote: a CR or LF smuggled in through a value, the host
    # or the target would let the peer read a different request. Other control characters
    # are not allowed in a head either.
    if head.count(b"\n") != lines or head.count(b"\r") != lines or _CONTROL.search(head):
        raise httpx2.LocalProtocolError("Illegal character in the request line or a header value")
    if b" " in target or not target:
        raise httpx2.LocalProtocolError(f"Illegal request target {target!r}")
    _check_token(method)
    return head, wants_close, chunked


def encode_chunk(data: bytes) -> bytes:
    """Frame one piece of a request body for ``Transfer-Encoding: chunked``.

    Args:
        data: A non-empty piece of the body.
    """
    return b"%x\r\n%b\r\n" % (len(data), data)


class HttptoolsParser:
    """Parse a response with httptools (llhttp): the fast path.

    llhttp cannot know that a response answers a HEAD request; :func:`make_parser` gives those
    to :class:`H11Parser`.
    """

    __slots__ = (
        "_eof_delimited",
        "_extra",
        "_framed",
        "_head_bytes",
        "_keep_alive",
        "_long_line",
        "_max_head",
        "_max_line",
        "_parser",
        "body",
        "encoded",
        "headers",
        "headers_complete",
        "http_version",
        "message_complete",
        "reason",
        "status_code",
    )

    def __init__(
        self,
        max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
        max_header_line: int = DEFAULT_MAX_HEADER_LINE,
    ) -> None:
        if httptools is None:  # pragma: no cover
            raise RuntimeError("httptools is not installed")
        self._parser = httptools.HttpResponseParser(self)
        self._max_head = max_header_bytes
        self._max_line = max_header_line
        self.reset()

    def reset(self) -> None:
        """Get ready for the next response on the same connection.

        Fresh lists, not cleared ones: the previous response's body may still be unread.
        """
        self.status_code = 0
        self.reason = b""
        self.http_version = b"HTTP/1.1"
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.headers_complete = False
        self.message_complete = False
        self.encoded = False
        self._framed = False
        self._eof_delimited = False
        self._keep_alive = False
        self._extra = False
        self._head_bytes = 0
        self._long_line = 0

    # httptools callbacks.

    def on_message_begin(self) -> None:
        if self.message_complete:
            # Bytes after the response: never reuse a connection whose framing we doubt.
            self._extra = True
            return
        self.status_code = 0
        self.reason = b""
        self.headers = []
        self.headers_complete = False
        self.encoded = False
        self._framed = False

    def on_status(self, status: bytes) -> None:
        if not self._extra:
            self.reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._extra:
            return
        if len(name) + len(value) > self._max_line:
            # Raising inside a callback would be wrapped by httptools: feed() raises it.
            self._long_line = len(name) + len(value)
        self.headers.append((name, value))
        lowered = name.lower()
        if lowered in (b"content-length", b"transfer-encoding"):
            self._framed = True
        elif lowered == b"content-encoding":
            self.encoded = True

    def on_headers_complete(self) -> None:
        if self._extra:
            return
        parser = self._parser
        self.status_code = parser.get_status_code()
        if self.status_code < 200:
            # An informational response precedes the real one; llhttp completes it without body.
            return
        self.http_version = b"HTTP/" + parser.get_http_version().encode("ascii")
        self.headers_complete = True
        self._keep_alive = parser.should_keep_alive()
        self._eof_delimited = not self._framed and self.status_code not in _NO_BODY_STATUS

    def on_body(self, body: bytes) -> None:
        if not self._extra:
            self.body.append(body)

    def on_message_complete(self) -> None:
        if self.headers_complete and not self._extra:
            self.message_complete = True

    # ResponseParser.

    def feed(self, data: bytes) -> None:
        """Parse more bytes received from the server.

        Args:
            data: The bytes, as received.
        """
        counting = not self.headers_complete
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # A protocol switch ends HTTP on this connection; what follows is not ours to read.
            self.headers_complete = self.message_complete = True
            self._keep_alive = False
        except httptools.HttpParserError as exc:
            if self.message_complete:
                # Garbage after a complete response: the response stands, the connection goes.
                self._extra = True
                return
            raise httpx2.RemoteProtocolError(f"Malformed HTTP response: {exc}") from exc
        if counting:
            # llhttp keeps an unfinished header line, and the fields seen, until the head
            # ends: count what the head has taken so far (a read's worth over at worst).
            if self._long_line:
                raise _long_line(self._long_line, self._max_line)
            if not self.headers_complete:
                self._head_bytes += len(data)
                if self._head_bytes > self._max_head:
                    raise _long_head(self._max_head)

    def feed_eof(self) -> None:
        """Record that the server closed the connection.

        Raises:
            httpx2.RemoteProtocolError: The response was cut short.
        """
        if self.message_complete:
            return
        if self.headers_complete and self._eof_delimited:
            self.message_complete = True
            self._keep_alive = False
            return
        if self.status_code == 0 and not self.body:
            raise httpx2.RemoteProtocolError("Server disconnected without sending a response.")
        raise httpx2.RemoteProtocolError(
            "Server disconnected before the complete response was received."
        )

    def reusable(self) -> bool:
        """Return whether the connection may carry another request after this response."""
        return self.message_complete and self._keep_alive and not self._extra


class H11Parser:
    """Parse a response with h11: the pure-Python fallback."""

    __slots__ = (
        "_conn",
        "_head_bytes",
        "_max_head",
        "_max_line",
        "_reusable",
        "body",
        "encoded",
        "headers",
        "headers_complete",
        "http_version",
        "message_complete",
        "reason",
        "status_code",
    )

    def __init__(
        self,
        method: bytes = b"GET",
        max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
        max_header_line: int = DEFAULT_MAX_HEADER_LINE,
    ) -> None:
        # h11 refuses to buffer more than this of an unfinished event; the head is one event.
        conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=max_header_bytes)
        # h11 frames the response from the request it saw (a HEAD response has no body), so
        # walk it through a stand-in request; the real bytes are written elsewhere.
        conn.send(h11.Request(method=method, target=b"/", headers=[(b"host", b"_")]))
        conn.send(h11.EndOfMessage())
        self._conn = conn
        self._max_head = max_header_bytes
        self._max_line = max_header_line
        self._head_bytes = 0
        self.status_code = 0
        self.reason = b""
        self.http_version = b"HTTP/1.1"
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.headers_complete = False
        self.message_complete = False
        self.encoded = False
        self._reusable = False

    def _events(self) -> None:
        conn = self._conn
        while not self.message_complete:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                if not self.headers_complete and self._head_bytes > self._max_head:
                    raise _long_head(self._max_head) from exc
                raise httpx2.RemoteProtocolError(f"Malformed HTTP response: {exc}") from exc
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.Response):
                longest = max((len(n) + len(v) for n, v in event.headers.raw_items()), default=0)
                if longest > self._max_line:
                    raise _long_line(longest, self._max_line)
                self.status_code = event.status_code
                self.reason = event.reason
                self.http_version = b"HTTP/" + event.http_version
                self.headers = list(event.headers.raw_items())
                self.encoded = any(name == b"content-encoding" for name, _ in event.headers)
                self.headers_complete = True
            elif isinstance(event, h11.Data):
                self.body.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                self.message_complete = True
                trailing, _closed = conn.trailing_data
                self._reusable = conn.their_state is h11.DONE and not trailing
            elif isinstance(event, h11.ConnectionClosed):  # pragma: no cover - h11 raises first
                raise httpx2.RemoteProtocolError("Server disconnected without sending a response.")
            # InformationalResponse: skipped, the final response follows.

    def feed(self, data: bytes) -> None:
        """Parse more bytes received from the server.

        Args:
            data: The bytes, as received.
        """
        if self.message_complete:
            self._reusable = False
            return
        if not self.headers_complete:
            self._head_bytes += len(data)
        self._conn.receive_data(data)
        self._events()

    def feed_eof(self) -> None:
        """Record that the server closed the connection.

        Raises:
            httpx2.RemoteProtocolError: The response was cut short.
        """
        if self.message_complete:
            self._reusable = False
            return
        if not self.headers_complete and not self.status_code:
            raise httpx2.RemoteProtocolError("Server disconnected without sending a response.")
        self._conn.receive_data(b"")
        self._events()
        self._reusable = False

    def reusable(self) -> bool:
        """Return whether the connection may carry another request after this response."""
        return self.message_complete and self._reusable


def _long_head(limit: int) -> ResponseRefused:
    return ResponseRefused(f"the response head is longer than max_header_bytes={limit}")


def _long_line(length: int, limit: int) -> ResponseRefused:
    return ResponseRefused(
        f"a response header line is {length} bytes, longer than max_header_line={limit}"
    )


def make_parser(
    name: ParserName,
    method: bytes,
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
    max_header_line: int = DEFAULT_MAX_HEADER_LINE,
) -> ResponseParser:
    """Return a fresh response parser.

    Args:
        name: Which parser: ``"auto"`` takes httptools when it is installed.
        method: The request method, which decides whether the response may have a body.
        max_header_bytes: The most bytes the response head may take.
        max_header_line: The most bytes one header line may take.
    """
    if name != "h11" and httptools is not None and method != b"HEAD":
        return HttptoolsParser(max_header_bytes, max_header_line)
    return H11Parser(method, max_header_bytes, max_header_line)
