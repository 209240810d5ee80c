"""The wire format without I/O: request heads out, both response parsers in."""

from __future__ import annotations

import itertools

import h11
import httpx2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from corral._transport.http11 import (
    HAS_HTTPTOOLS,
    H11Parser,
    HttptoolsParser,
    ResponseParser,
    encode_chunk,
    encode_request_head,
    make_parser,
)

from .transport_helpers import chunked, http_response

PARSER_NAMES = ["httptools", "h11"] if HAS_HTTPTOOLS else ["h11"]


def new_parser(name: str, method: bytes = b"GET") -> ResponseParser:
    parser = make_parser("h11" if name == "h11" else "httptools", method)
    if method != b"HEAD":
        assert isinstance(parser, H11Parser if name == "h11" else HttptoolsParser)
    return parser


def parse(name: str, data: bytes, *, eof: bool = False, method: bytes = b"GET") -> ResponseParser:
    parser = new_parser(name, method)
    parser.feed(data)
    if eof:
        parser.feed_eof()
    return parser


def body_of(parser: ResponseParser) -> bytes:
    return b"".join(parser.body)


# Request heads.


def test_head_is_request_line_then_headers_in_order() -> None:
    """The head is the request line, the headers as given, then a blank line."""
    head, close, is_chunked = encode_request_head(
        b"POST",
        b"/v1/chat?x=1",
        httpx2.Headers([(b"Host", b"api.example"), (b"Content-Length", b"2"), (b"X-Key", b"v")]),
        b"ignored",
    )
    assert head == (
        b"POST /v1/chat?x=1 HTTP/1.1\r\nHost: api.example\r\nContent-Length: 2\r\nX-Key: v\r\n\r\n"
    )
    assert (close, is_chunked) == (False, False)


def test_missing_host_is_added_first() -> None:
    """A request built without a Host header gets one, right after the request line."""
    head, _, _ = encode_request_head(
        b"GET", b"/", httpx2.Headers([(b"Accept", b"*/*")]), b"example.org:81"
    )
    assert head == b"GET / HTTP/1.1\r\nHost: example.org:81\r\nAccept: */*\r\n\r\n"


@pytest.mark.parametrize(
    ("headers", "close", "is_chunked"),
    [
        ([(b"Connection", b"close")], True, False),
        ([(b"connection", b"Keep-Alive")], False, False),
        ([(b"Transfer-Encoding", b"chunked")], False, True),
        ([(b"CONNECTION", b"Close"), (b"transfer-encoding", b"Chunked")], True, True),
    ],
)
def test_head_reports_close_and_chunked(
    headers: list[tuple[bytes, bytes]], close: bool, is_chunked: bool
) -> None:
    """Connection: close and chunked framing are noticed whatever their case."""
    _, got_close, got_chunked = encode_request_head(b"POST", b"/", httpx2.Headers(headers), b"h")
    assert (got_close, got_chunked) == (close, is_chunked)


@pytest.mark.parametrize(
    ("method", "target", "headers"),
    [
        (b"GET", b"/", [(b"X-A", b"1\r\nX-Injected: 1")]),
        (b"GET", b"/", [(b"X-A", b"1\nX-Injected: 1")]),
        (b"GET", b"/", [(b"X-A", b"a\x00b")]),
        (b"GET", b"/", [(b"X-A", b"a\x0bb")]),
        (b"GET", b"/", [(b"X-A", b"a\x7fb")]),
        (b"GET", b"/", [(b"Bad Name", b"1")]),
        (b"GET", b"/", [(b"Bad:Name", b"1")]),
        (b"GET", b"/", [(b"", b"1")]),
        (b"GET", b"/a b", []),
        (b"GET", b"/a\r\nHost: evil", []),
        (b"GET", b"", []),
        (b"G T", b"/", []),
    ],
)
def test_head_rejects_anything_that_breaks_framing(
    method: bytes, target: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    """A control character in a value, or a bad name, method or target, is refused."""
    with pytest.raises(httpx2.LocalProtocolError):
        encode_request_head(method, target, httpx2.Headers(headers), b"h")


def test_host_with_line_break_is_rejected() -> None:
    """An injected line break in the Host fallback is caught like any other."""
    with pytest.raises(httpx2.LocalProtocolError):
        encode_request_head(b"GET", b"/", httpx2.Headers(), b"h\r\nX: 1")


def test_encode_chunk_frames_with_hex_length() -> None:
    """A chunk is its hex length, CRLF, the data, CRLF."""
    assert encode_chunk(b"x" * 26) == b"1a\r\n" + b"x" * 26 + b"\r\n"


# Response parsing, identical for both parsers.


@pytest.fixture(params=PARSER_NAMES)
def name(request: pytest.FixtureRequest) -> str:
    """Run the test with each response parser."""
    value: str = request.param
    return value


def test_content_length_response(name: str) -> None:
    """Status, reason, version, headers in order and body come out of a sized response."""
    parser = parse(name, http_response(201, b"hello", [("X-A", "1"), ("x-b", "2")], reason="Made"))
    assert parser.status_code == 201
    assert parser.reason == b"Made"
    assert parser.http_version == b"HTTP/1.1"
    assert parser.headers == [(b"X-A", b"1"), (b"x-b", b"2"), (b"content-length", b"5")]
    assert body_of(parser) == b"hello"
    assert parser.headers_complete
    assert parser.message_complete
    assert parser.reusable()


def test_chunked_response_with_extension_and_trailer(name: str) -> None:
    """Chunked bodies are decoded; chunk extensions and trailers are skipped."""
    raw = (
        http_response(200, headers=[("transfer-encoding", "chunked")], length=False)
        + b"3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-Trailer: t\r\n\r\n"
    )
    parser = parse(name, raw)
    assert body_of(parser) == b"abcde"
    assert parser.message_complete
    assert parser.reusable()


def test_head_and_body_complete_separately(name: str) -> None:
    """The head completes at its blank line; the message only when the body is in."""
    head = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n"
    parser = parse(name, head)
    assert not parser.headers_complete
    parser.feed(b"\r\n12")
    assert parser.headers_complete
    assert not parser.message_complete
    assert body_of(parser) == b"12"
    parser.feed(b"345")
    assert parser.message_complete
    assert body_of(parser) == b"12345"


@given(
    body=st.binary(max_size=300),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=8),
    use_chunked=st.booleans(),
    parser_name=st.sampled_from(PARSER_NAMES),
)
def test_any_split_of_the_bytes_parses_the_same(
    body: bytes, cuts: list[int], use_chunked: bool, parser_name: str
) -> None:
    """Feeding a response in arbitrary pieces gives the same result as feeding it whole."""
    if use_chunked:
        pieces = [body[i : i + 7] for i in range(0, len(body), 7)]
        raw = http_response(
            200, headers=[("transfer-encoding", "chunked")], length=False
        ) + chunked(*pieces)
    else:
        raw = http_response(200, body, [("content-type", "application/octet-stream")])
    whole = parse(parser_name, raw)
    split = new_parser(parser_name)
    edges = sorted({min(cut, len(raw)) for cut in cuts} | {0, len(raw)})
    for start, end in itertools.pairwise(edges):
        split.feed(raw[start:end])
    assert split.status_code == whole.status_code == 200
    assert split.headers == whole.headers
    assert body_of(split) == body_of(whole) == body
    assert split.message_complete
    assert whole.message_complete


def test_eof_delimited_body_ends_at_close(name: str) -> None:
    """A body with neither length nor chunking runs to EOF and leaves the connection unusable."""
    parser = parse(name, http_response(200, b"until close", length=False))
    assert parser.headers_complete
    assert not parser.message_complete
    parser.feed_eof()
    assert parser.message_complete
    assert body_of(parser) == b"until close"
    assert not parser.reusable()


@pytest.mark.parametrize(
    "raw",
    [
        http_response(200, b"0123456789")[:-4],
        http_response(200, headers=[("transfer-encoding", "chunked")], length=False) + b"5\r\nab",
        http_response(200, headers=[("transfer-encoding", "chunked")], length=False)
        + b"2\r\nab\r\n",
    ],
    ids=["content-length", "chunk-cut", "no-terminator"],
)
def test_truncated_body_is_a_protocol_error(name: str, raw: bytes) -> None:
    """EOF before the framing says the body ended raises RemoteProtocolError."""
    parser = parse(name, raw)
    with pytest.raises(httpx2.RemoteProtocolError):
        parser.feed_eof()


def test_eof_before_any_byte_says_no_response(name: str) -> None:
    """A connection closed before any response byte is reported as such."""
    parser = new_parser(name)
    with pytest.raises(httpx2.RemoteProtocolError, match="without sending a response"):
        parser.feed_eof()


def test_eof_inside_headers_is_a_protocol_error(name: str) -> None:
    """A head cut short by EOF raises RemoteProtocolError."""
    parser = parse(name, b"HTTP/1.1 200 OK\r\ncontent-le")
    with pytest.raises(httpx2.RemoteProtocolError):
        parser.feed_eof()


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTX/1.1 200 OK\r\n\r\n",
        b"HTTP/1.1 2x0 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n",
    ],
)
def test_malformed_response_is_a_protocol_error(name: str, raw: bytes) -> None:
    """Garbage where a status line or header should be raises RemoteProtocolError."""
    parser = new_parser(name)
    with pytest.raises(httpx2.RemoteProtocolError):
        parser.feed(raw)


def test_informational_response_is_skipped(name: str) -> None:
    """A 100 Continue before the real response is not mistaken for it."""
    raw = b"HTTP/1.1 100 Continue\r\n\r\n" + http_response(200, b"real")
    parser = parse(name, raw)
    assert parser.status_code == 200
    assert body_of(parser) == b"real"
    assert parser.reusable()


def test_head_response_has_no_body(name: str) -> None:
    """A response to HEAD completes at its headers although it declares a length."""
    raw = b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n"
    parser = parse(name, raw, method=b"HEAD")
    assert parser.message_complete
    assert body_of(parser) == b""
    assert parser.reusable()


@pytest.mark.parametrize("status", [204, 304])
def test_no_body_statuses(name: str, status: int) -> None:
    """204 and 304 responses complete at their headers."""
    parser = parse(name, f"HTTP/1.1 {status} X\r\n\r\n".encode())
    assert parser.status_code == status
    assert parser.message_complete
    assert parser.reusable()


@pytest.mark.parametrize(
    "raw",
    [
        http_response(200, b"ok", [("connection", "close")]),
        http_response(200, b"ok", version="1.0"),
        http_response(200, b"ok") + b"HTTP/1.1 200 OK\r\n",
        http_response(200, b"ok") + b"junk",
    ],
    ids=["connection-close", "http-1.0", "unasked-response", "junk-after"],
)
def test_connection_not_reusable(name: str, raw: bytes) -> None:
    """Close requested, HTTP/1.0, or bytes after the response: the response stands, reuse not."""
    parser = parse(name, raw)
    assert parser.status_code == 200
    assert body_of(parser) == b"ok"
    assert parser.message_complete
    assert not parser.reusable()


def test_more_data_after_completion_marks_not_reusable(name: str) -> None:
    """Bytes arriving in a later read after a complete response rule out reuse."""
    parser = parse(name, http_response(200, b"ok"))
    assert parser.reusable()
    parser.feed(b"surprise")
    assert not parser.reusable()
    assert body_of(parser) == b"ok"


def test_auto_prefers_httptools_except_for_head() -> None:
    """'auto' picks httptools when installed, and h11 for HEAD, whose framing llhttp lacks."""
    expected = HttptoolsParser if HAS_HTTPTOOLS else H11Parser
    assert isinstance(make_parser("auto", b"GET"), expected)
    assert isinstance(make_parser("auto", b"HEAD"), H11Parser)
    assert isinstance(make_parser("h11", b"GET"), H11Parser)


TOKEN = st.text(
    alphabet="!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
    min_size=1,
    max_size=20,
)
# Visible ASCII, obs-text, and inner spaces and tabs: what a header value may hold.
VALUE = st.binary(max_size=40).filter(
    lambda v: all(b == 9 or 32 <= b <= 126 or b >= 128 for b in v) and v == v.strip(b" \t")
)


@given(
    method=TOKEN,
    path=st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789/-._~%?=&", max_size=30),
    headers=st.lists(st.tuples(TOKEN, VALUE), max_size=8),
)
def test_any_valid_head_is_read_back_by_an_independent_parser(
    method: str, path: str, headers: list[tuple[str, bytes]]
) -> None:
    """Whatever valid method, target and headers go in, a server-side h11 reads the same back."""
    raw = [(name.encode(), value) for name, value in headers if name.lower() != "host"]
    raw = [(n, v) for n, v in raw if n.lower() not in (b"content-length", b"transfer-encoding")]
    target = b"/" + path.encode()
    head, _, _ = encode_request_head(method.encode(), target, httpx2.Headers(raw), b"example.org")
    server = h11.Connection(h11.SERVER)
    server.receive_data(head)
    event = server.next_event()
    assert isinstance(event, h11.Request)
    assert event.method == method.encode()
    assert event.target == target
    assert list(event.headers.raw_items()) == [(b"Host", b"example.org"), *raw]
