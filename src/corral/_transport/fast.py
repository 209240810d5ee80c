"""corral's own HTTP/1.1 transport: a keep-alive pool of sockets, driven through anyio.

:class:`FastTransport` is an :class:`httpx2.AsyncBaseTransport`, so any ``httpx2.AsyncClient``
can use it, and it runs unchanged on asyncio and trio (sockets waited on with anyio, TLS by
anyio's ``TLSStream``; see :mod:`corral._transport.sockets`). It does plain HTTP/1.1 itself,
the whole hot path of an LLM client, and hands everything else (HTTP/2, proxies, Unix
sockets, other schemes) to a stock ``httpx2.AsyncHTTPTransport`` that it creates on first
need.

Failures surface as the exceptions httpx2's own transport raises (``ConnectError``,
``ReadTimeout``, ``RemoteProtocolError``...), so error classification does not care which
transport is in use. Nothing is ever re-sent here: a request whose connection dies after it was
written fails, and the retry layer decides.
"""

from __future__ import annotations

import math
import os
import ssl
from collections.abc import AsyncIterator
from typing import Final

import anyio
import anyio.abc
import attrs
import httpx2
from anyio.streams.tls import TLSStream

from .http11 import (
    HAS_HTTPTOOLS,
    H11Parser,
    HttptoolsParser,
    ParserName,
    ResponseParser,
    encode_chunk,
    encode_request_head,
)
from .httpx_internals import (
    EnvironmentProxy,
    environment_proxies,
    inner_stream,
    set_read,
    streamed_response,
)
from .limits import (
    DEFAULT_MAX_HEADER_BYTES,
    DEFAULT_MAX_HEADER_LINE,
    DEFAULT_MAX_RESPONSE_BYTES,
    check_limit,
    refuse_unasked_encoding,
    too_large,
)
from .pool import Connection, ConnectionPool, Origin, close_stream, within
from .sockets import DeadlinePassed, SocketStream, open_tcp_socket

__all__ = ["FastTransport", "OriginStatistics", "TransportStatistics"]

_READ_SIZE: Final = 65_536
# Bodies up to this size go out in the same send as the head: one syscall, one segment.
_COALESCE_LIMIT: Final = 256 * 1024
_ROUTE_CACHE_MAX: Final = 1024
_INF: Final = float("inf")
# A read deadline this close after the write deadline is taken as equal (see _exchange).
_DEADLINE_SLACK: Final = 0.001


@attrs.frozen
class OriginStatistics:
    """Connections to one origin at one moment.

    Args:
        origin: ``scheme://host:port``.
        idle: Connections waiting in the pool for reuse.
        active: Connections carrying a request (or being opened for one).
    """

    origin: str
    idle: int
    active: int

    @property
    def open(self) -> int:
        """Connections to this origin, idle or active."""
        return self.idle + self.active


@attrs.frozen
class TransportStatistics:
    """A snapshot of a :class:`FastTransport`'s pool and counters.

    Args:
        parser: The response parser in use: ``"httptools"`` or ``"h11"``.
        max_connections: The bound on open connections; None for none.
        open: Connections open or being opened.
        idle: Open connections waiting for reuse.
        active: Connections carrying a request.
        waiting: Requests waiting for a connection slot.
        requests: Requests written by this transport itself.
        delegated: Requests handed to the stock httpx2 transport.
        connects: Connections opened.
        stale_replaced: Idle connections found closed (or readable) at checkout and replaced.
        expired: Idle connections closed after ``keepalive_expiry``.
        evicted: Idle connections closed to free a slot for another origin.
        discarded: Connections closed because a request failed, was cancelled or was
            abandoned before its response was read.
        origins: Per-origin counts.
    """

    parser: str
    max_connections: int | None
    open: int
    idle: int
    active: int
    waiting: int
    requests: int
    delegated: int
    connects: int
    stale_replaced: int
    expired: int
    evicted: int
    discarded: int
    origins: tuple[OriginStatistics, ...]


def _origin_str(origin: Origin) -> str:
    scheme, host, port = origin
    if port is None:
        port = 443 if scheme == "https" else 80
    text = host.decode("ascii")
    if ":" in text:
        text = f"[{text}]"
    return f"{scheme}://{text}:{port}"


def _check_max_connections(value: object) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(
            f"max_connections must be an integer >= 1 or None, got {type(value).__name__}"
        )
    if value < 1:
        raise ValueError(f"max_connections must be >= 1 or None, got {value!r}")


def _check_keepalive_expiry(value: object) -> float | None:
    """Return *value* as seconds (None for no limit), or raise naming ``keepalive_expiry``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(
            f"keepalive_expiry must be a number of seconds >= 0 or None, got {type(value).__name__}"
        )
    if (isinstance(value, float) and math.isnan(value)) or value < 0 or value == _INF:
        raise ValueError(f"keepalive_expiry must be a finite number >= 0 or None, got {value!r}")
    try:
        return float(value)
    except OverflowError:
        # An integer beyond any float: longer than any process lives, so no limit.
        return None


def _check_deadline(value: object) -> float:
    """Return a request's ``deadline`` extension as a float, or raise naming the fix."""
    if (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and not (isinstance(value, float) and math.isnan(value))
    ):
        try:
            return float(value)
        except OverflowError:  # an int past float's range: later than any clock reading
            return _INF if value > 0 else -_INF
    raise TypeError(
        f"the request's 'deadline' extension must be a time on anyio's clock "
        f"(anyio.current_time() + seconds), got {value!r}"
    )


def _read_error(exc: BaseException) -> httpx2.TransportError | None:
    """Translate a failure while reading a response into httpx2's vocabulary."""
    if isinstance(exc, httpx2.TransportError):
        return None
    if isinstance(exc, TimeoutError | DeadlinePassed):
        return httpx2.ReadTimeout(str(exc) or "Timed out reading the response")
    if isinstance(exc, anyio.BrokenResourceError | anyio.ClosedResourceError | OSError):
        return httpx2.ReadError(str(exc) or f"Connection lost while reading: {exc!r}")
    return None


# What writing a request or reading its head can fail with, below httpx2's vocabulary.
_LOST: Final = (DeadlinePassed, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError)


def _exchange_error(exc: BaseException, writing: bool) -> httpx2.TransportError:
    """Translate one of `_LOST` into httpx2's error for the phase it happened in."""
    if isinstance(exc, DeadlinePassed):
        # The socket's wait ran into the request's deadline.
        if writing:
            return httpx2.WriteTimeout(f"Timed out writing the request: {exc}")
        return httpx2.ReadTimeout(f"Timed out waiting for the response: {exc}")
    if writing:
        return httpx2.WriteError(str(exc) or f"Connection lost while writing: {exc!r}")
    return httpx2.ReadError(str(exc) or f"Connection lost while reading: {exc!r}")


class _ResponseStream(httpx2.AsyncByteStream):
    """A response body read from its connection, chunk by chunk as the server sends it.

    The connection goes back to the pool the moment the body is complete, before the last chunk
    is handed out; closing the stream early, an error or a cancellation closes it instead.
    """

    __slots__ = (
        "_body",
        "_complete",
        "_conn",
        "_encoded",
        "_keep",
        "_left",
        "_limit",
        "_parser",
        "_pool",
        "_timeout",
    )

    def __init__(
        self,
        pool: ConnectionPool,
        conn: Connection,
        parser: ResponseParser,
        read_timeout: float | None,
        keep: bool,
        limit: int,
    ) -> None:
        self._pool = pool
        self._conn: Connection | None = conn
        self._parser = parser
        # The body list, not the parser: once the response is complete the connection (and
        # its parser, reset) may serve another request before this body is read.
        self._body = parser.body
        self._encoded = parser.encoded
        self._complete = False
        self._timeout = read_timeout
        self._keep = keep
        self._limit = limit
        # Body bytes still allowed: what is handed out, and what waits in the body list, is
        # never more than the cap plus one read.
        self._left = limit

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        body = self._body
        while not body:
            if self._conn is None:
                raise StopAsyncIteration
            await self._read()
        data = body[0] if len(body) == 1 else b"".join(body)
        body.clear()
        self._left -= len(data)
        if self._left < 0:
            await self.aclose()
            raise too_large(self._limit)
        return data

    def whole_body(self) -> bytes | None:
        """Take the whole body if it has arrived, needs no decoding and fits; else return None."""
        if not self._complete or self._encoded:
            return None
        body = self._body
        data = body[0] if len(body) == 1 else b"".join(body)
        if len(data) > self._left:
            return None  # left for __anext__ to refuse
        body.clear()
        self._left -= len(data)
        return data

    def _finish(self, conn: Connection) -> bool:
        """Mark the body complete and give the connection back; False if it must be closed."""
        self._conn = None
        self._complete = True
        return self._pool.give_back(conn, reuse=self._keep and self._parser.reusable())

    async def _read(self) -> None:
        conn = self._conn
        assert conn is not None
        parser = self._parser
        try:
            try:
                if self._timeout is None:
                    data = await conn.stream.receive(_READ_SIZE)
                else:
                    with anyio.fail_after(self._timeout):
                        data = await conn.stream.receive(_READ_SIZE)
            except anyio.EndOfStream:
                parser.feed_eof()
            else:
                parser.feed(data)
        except BaseException as exc:
            self._conn = None
            await self._pool.discard(conn)
            mapped = _read_error(exc)
            if mapped is None:
                raise
            raise mapped from exc
        if parser.message_complete and not self._finish(conn):
            await close_stream(conn.stream)

    async def aclose(self) -> None:
        """Close the stream; a connection whose response was not read to the end is closed."""
        conn, self._conn = self._conn, None
        if conn is not None:
            await self._pool.discard(conn)

    def __repr__(self) -> str:
        state = "reading" if self._conn is not None else "done"
        return f"<_ResponseStream {state}>"


class _Response(httpx2.Response):
    """An ``httpx2.Response`` whose ``aread()`` skips httpx2's streaming machinery when it can.

    A small answer usually arrives whole with its headers. Then, and when it has no
    ``Content-Encoding`` to undo, there is nothing to stream or decode: ``aread()`` takes the
    bytes at once, with the same outcome as httpx2's own (content, state and byte count set,
    stream closed). Anything else takes httpx2's path.
    """

    async def aread(self) -> bytes:
        """Read and return the response body."""
        if not self.is_stream_consumed and not self.is_closed:
            stream = self.stream
            # httpx2.AsyncClient wraps the transport's stream to time the response.
            inner = stream if type(stream) is _ResponseStream else inner_stream(stream)
            if type(inner) is _ResponseStream:
                body = inner.whole_body()
                if body is not None:
                    set_read(self, body)
                    if stream is not inner or inner._conn is not None:  # noqa: SLF001
                        assert isinstance(stream, httpx2.AsyncByteStream)
                        await stream.aclose()
                    return body
        return await super().aread()


class FastTransport(httpx2.AsyncBaseTransport):
    """Send HTTP/1.1 requests over a keep-alive connection pool, on asyncio or trio.

    Use it wherever an ``httpx2.AsyncBaseTransport`` fits::

        async with httpx2.AsyncClient(transport=corral.FastTransport()) as client:
            ...

    Plain HTTP/1.1 over TCP, with or without TLS, is handled here. HTTP/2, proxies (given, or
    from ``HTTP_PROXY``/``HTTPS_PROXY``/``ALL_PROXY`` when *trust_env* is true), Unix sockets
    and other schemes go to a stock ``httpx2.AsyncHTTPTransport``, created on first need.

    Timeouts come from the request's ``timeout`` extension, which ``httpx2.AsyncClient`` sets:
    ``connect``, ``read`` (per read), ``write`` (per write) and ``pool`` (waiting for a free
    connection). A ``deadline`` extension, a time on anyio's clock
    (``anyio.current_time()``), bounds the whole exchange on top of them, body included:
    whatever is waiting when it passes raises the matching timeout error. It costs a cancel
    scope only when a wait really happens, where a scope around the call costs one every time;
    corral's Client bounds its attempts this way.

    Args:
        max_connections: The most connections open at once, all origins together; None for no
            bound. corral's Client passes its concurrency.
        keepalive_expiry: Seconds an idle connection is kept for reuse; None for no limit.
        verify: Verify servers' TLS certificates: True for the default trust store (honouring
            ``SSL_CERT_FILE`` and ``SSL_CERT_DIR`` when *trust_env* is true), False to skip
            verification, a path to a CA bundle file or directory, or a ready
            ``ssl.SSLContext``.
        trust_env: Read proxies and CA locations from the environment.
        http2: Send ``https`` requests over HTTP/2 where the server agrees, through the stock
            transport.
        proxy: Send every request through this proxy, through the stock transport.
        uds: Connect to this Unix socket instead of TCP, through the stock transport.
        parser: The response parser: ``"auto"`` (httptools when installed, else h11),
            ``"httptools"`` or ``"h11"``.
        max_response_bytes: The most bytes a response body may take; reading stops there
            and the response fails with a ``RemoteProtocolError`` (``ResponseRefused``).
        max_header_bytes: The most bytes a response head may take, status line included.
        max_header_line: The most bytes one response header line may take.

    A response whose ``Content-Encoding`` the request did not list in its ``Accept-Encoding``
    is refused the same way before its body is read: decoding it could take far more memory
    than its bytes. Codings the request asks for are decoded by httpx2, and then the cap
    bounds the encoded bytes, not the decoded ones.
    """

    def __init__(
        self,
        *,
        max_connections: int | None = 100,
        keepalive_expiry: float | None = 5.0,
        verify: ssl.SSLContext | str | bool = True,
        trust_env: bool = True,
        http2: bool = False,
        proxy: str | httpx2.URL | httpx2.Proxy | None = None,
        uds: str | None = None,
        parser: ParserName = "auto",
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
        max_header_line: int = DEFAULT_MAX_HEADER_LINE,
    ) -> None:
        _check_max_connections(max_connections)
        self._max_body = check_limit("max_response_bytes", max_response_bytes)
        self._max_head = check_limit("max_header_bytes", max_header_bytes)
        self._max_line = check_limit("max_header_line", max_header_line)
        keepalive_expiry = _check_keepalive_expiry(keepalive_expiry)
        if parser not in ("auto", "httptools", "h11"):
            raise ValueError(f"parser must be 'auto', 'httptools' or 'h11', got {parser!r}")
        if parser == "httptools" and not HAS_HTTPTOOLS:
            raise ValueError("parser='httptools' needs the httptools package")
        self._httptools = parser != "h11" and HAS_HTTPTOOLS
        self._parser_name = "httptools" if self._httptools else "h11"
        self._max_connections = max_connections
        self._keepalive_expiry = keepalive_expiry
        self._verify = verify
        self._trust_env = trust_env
        self._http2 = http2
        self._proxy = proxy
        self._uds = uds
        self._ssl_context: ssl.SSLContext | None = None
        self._pool = ConnectionPool(self._connect, max_connections, keepalive_expiry)
        # Per origin: the stock transport that must carry its requests (None: this one does),
        # and the Host header value for requests built without one.
        self._routes: dict[Origin, tuple[httpx2.AsyncBaseTransport | None, bytes]] = {}
        self._delegates: dict[str, httpx2.AsyncBaseTransport] = {}
        self._env_proxies: list[EnvironmentProxy] = []
        if trust_env and proxy is None and uds is None:
            self._env_proxies = environment_proxies()
        self._requests = 0
        self._delegated = 0

    # The hot path.

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        """Send one request and return its response, whose body streams from the connection.

        Args:
            request: The request; its ``timeout`` extension, when present, bounds each phase.

        Raises:
            httpx2.TransportError: The subclass that httpx2's own transport raises for the
                same failure: ``ConnectError``, ``ConnectTimeout``, ``PoolTimeout``,
                ``WriteError``, ``WriteTimeout``, ``ReadError``, ``ReadTimeout``,
                ``RemoteProtocolError`` or ``LocalProtocolError``.
        """
        url = request.url
        origin: Origin = (url.scheme, url.raw_host, url.port)
        route = self._routes.get(origin)
        if route is None:
            route = self._route(url, origin)
        delegate, netloc = route
        if delegate is not None:
            self._delegated += 1
            return await delegate.handle_async_request(request)

        extensions = request.extensions
        deadline = extensions.get("deadline", _INF)
        if type(deadline) is not float:
            deadline = _check_deadline(deadline)
        timeout = extensions.get("timeout")
        if timeout:
            connect_timeout = timeout.get("connect")
            read_timeout = timeout.get("read")
            write_timeout = timeout.get("write")
            pool_timeout = timeout.get("pool")
        else:
            connect_timeout = read_timeout = write_timeout = pool_timeout = None

        method = request.method.encode("ascii")
        head, wants_close, chunked = encode_request_head(
            method, url.raw_path, request.headers, netloc
        )
        try:
            body: bytes | None = request.content
        except httpx2.RequestNotRead:
            body = None

        conn = self._pool.take_idle(origin)
        if conn is None:
            conn = await self._pool.checkout(origin, pool_timeout, connect_timeout, deadline)
        if conn.socket is not None:
            conn.socket.deadline = deadline
        self._requests += 1
        parser: ResponseParser
        if self._httptools and method != b"HEAD":
            # One llhttp parser per connection, reset between responses.
            fast = conn.parser
            if fast is None:
                fast = conn.parser = HttptoolsParser(self._max_head, self._max_line)
            else:
                fast.reset()
            parser = fast
        else:
            parser = H11Parser(method, self._max_head, self._max_line)
        try:
            if write_timeout is None and read_timeout is None:
                # The common exchange, inline: a coroutine less under every wait. (_write's
                # small-body case and _read_head's loop, without their timeouts.)
                wire = conn.stream
                writing = True
                try:
                    if body is not None and len(body) <= _COALESCE_LIMIT:
                        await wire.send(head + body if body else head)
                    else:
                        await self._write(wire, head, body, request, chunked, None, None)
                    writing = False
                    while not parser.headers_complete:
                        try:
                            data = await wire.receive(_READ_SIZE)
                        except anyio.EndOfStream:
                            parser.feed_eof()
                            break
                        parser.feed(data)
                except _LOST as exc:
                    raise _exchange_error(exc, writing) from exc
            else:
                await self._timed_exchange(
                    conn, parser, head, body, request, chunked, write_timeout, read_timeout
                )
            if parser.encoded:
                refuse_unasked_encoding(request.headers, parser.headers)
        except BaseException:
            await self._pool.discard(conn)
            raise
        stream = _ResponseStream(
            self._pool, conn, parser, read_timeout, not wants_close, self._max_body
        )
        # The usual small JSON answer came with its headers: free the connection now.
        if parser.message_complete and not stream._finish(conn):  # noqa: SLF001
            await close_stream(conn.stream)
        try:
            return streamed_response(
                _Response,
                parser.status_code,
                parser.headers,
                stream,
                {"http_version": parser.http_version, "reason_phrase": parser.reason},
            )
        except BaseException:
            await stream.aclose()
            raise

    async def _timed_exchange(
        self,
        conn: Connection,
        parser: ResponseParser,
        head: bytes,
        body: bytes | None,
        request: httpx2.Request,
        chunked: bool,
        write_timeout: float | None,
        read_timeout: float | None,
    ) -> None:
        """Write the request and read its head, under per-write and per-read timeouts."""
        stream = conn.stream
        writing = True
        now = anyio.current_time()
        write_deadline = _INF if write_timeout is None else now + write_timeout
        try:
            with anyio.CancelScope(deadline=write_deadline) as scope:
                await self._write(stream, head, body, request, chunked, scope, write_timeout)
                writing = False
                if read_timeout is None:
                    scope.deadline = _INF
                else:
                    deadline = anyio.current_time() + read_timeout
                    # Re-arming a timer costs more than the rest of the bookkeeping: when
                    # the write was instant and both timeouts are equal, keep the one set.
                    if not 0.0 <= deadline - write_deadline <= _DEADLINE_SLACK:
                        scope.deadline = deadline
                await self._read_head(stream, parser, scope, read_timeout)
        except _LOST as exc:
            raise _exchange_error(exc, writing) from exc
        if scope.cancelled_caught:
            if writing:
                raise httpx2.WriteTimeout(f"Timed out writing the request ({write_timeout} s)")
            raise httpx2.ReadTimeout(f"Timed out waiting for the response ({read_timeout} s)")

    @staticmethod
    async def _write(
        stream: anyio.abc.ByteStream,
        head: bytes,
        body: bytes | None,
        request: httpx2.Request,
        chunked: bool,
        scope: anyio.CancelScope | None,
        write_timeout: float | None,
    ) -> None:
        """Write the head and the body: together when small, the body streamed when not read."""
        if body is None:
            await stream.send(head)
            await FastTransport._send_body(stream, request, chunked, scope, write_timeout)
        elif len(body) <= _COALESCE_LIMIT:
            await stream.send(head + body if body else head)
        else:
            await stream.send(head)
            await stream.send(body)

    @staticmethod
    async def _send_body(
        stream: anyio.abc.ByteStream,
        request: httpx2.Request,
        chunked: bool,
        scope: anyio.CancelScope | None,
        write_timeout: float | None,
    ) -> None:
        """Write a streaming request body, framing it in chunks when the headers say so."""
        body = request.stream
        if not isinstance(body, httpx2.AsyncByteStream):
            raise TypeError(f"FastTransport needs an async request stream, got {type(body)!r}")
        async for part in body:
            if not part:
                continue
            if scope is not None and write_timeout is not None:
                scope.deadline = anyio.current_time() + write_timeout
            await stream.send(encode_chunk(part) if chunked else part)
        if chunked:
            await stream.send(b"0\r\n\r\n")

    @staticmethod
    async def _read_head(
        stream: anyio.abc.ByteStream,
        parser: ResponseParser,
        scope: anyio.CancelScope | None,
        read_timeout: float | None,
    ) -> None:
        """Read until the response head is parsed; the read timeout restarts with each read."""
        while not parser.headers_complete:
            try:
                data = await stream.receive(_READ_SIZE)
            except anyio.EndOfStream:
                parser.feed_eof()
                return
            parser.feed(data)
            if scope is not None and read_timeout is not None and not parser.headers_complete:
                scope.deadline = anyio.current_time() + read_timeout

    # Connections.

    async def _connect(
        self, origin: Origin, connect_timeout: float | None, deadline: float
    ) -> Connection:
        scheme, raw_host, port = origin
        host = raw_host.decode("ascii")
        tls = scheme == "https"
        if port is None:
            port = 443 if tls else 80
        try:
            with anyio.fail_after(within(connect_timeout, deadline)):
                raw = SocketStream(await open_tcp_socket(host, port))
                stream: anyio.abc.ByteStream = raw
                if tls:
                    try:
                        stream = await TLSStream.wrap(
                            stream,
                            hostname=host,
                            ssl_context=self._get_ssl_context(),
                            standard_compatible=False,
                        )
                    except BaseException:
                        await close_stream(stream)
                        raise
        except TimeoutError as exc:
            past = connect_timeout is None or anyio.current_time() >= deadline
            limit = "the deadline" if past else f"{connect_timeout} s"
            raise httpx2.ConnectTimeout(
                f"Timed out connecting to {_origin_str(origin)} ({limit})"
            ) from exc
        except (OSError, anyio.BrokenResourceError, anyio.EndOfStream) as exc:
            raise httpx2.ConnectError(
                f"Cannot connect to {_origin_str(origin)}: {exc or type(exc).__name__}"
            ) from exc
        return Connection(stream, origin, raw)

    def _get_ssl_context(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            verify = self._verify
            if isinstance(verify, ssl.SSLContext):
                context = verify
            elif isinstance(verify, str):
                if os.path.isdir(verify):
                    context = ssl.create_default_context(capath=verify)
                else:
                    context = ssl.create_default_context(cafile=verify)
            else:
                context = httpx2.create_ssl_context(verify=verify, trust_env=self._trust_env)
            self._ssl_context = context
        return self._ssl_context

    # Delegation.

    def _route(
        self, url: httpx2.URL, origin: Origin
    ) -> tuple[httpx2.AsyncBaseTransport | None, bytes]:
        """Decide, once per origin, whether the stock transport must carry its requests."""
        scheme = origin[0]
        delegate: httpx2.AsyncBaseTransport | None = None
        if self._proxy is not None or self._uds is not None or scheme not in ("http", "https"):
            delegate = self._delegate(None)
        else:
            for pattern, proxy_url in self._env_proxies:
                if pattern.matches(url):
                    if proxy_url is not None:
                        delegate = self._delegate(proxy_url)
                    break
            if delegate is None and self._http2 and scheme == "https":
                delegate = self._delegate(None)
        if len(self._routes) >= _ROUTE_CACHE_MAX:
            self._routes.clear()
        route = self._routes[origin] = (delegate, url.netloc)
        return route

    def _delegate(self, env_proxy: str | None) -> httpx2.AsyncBaseTransport:
        if self._pool.closed:
            raise RuntimeError("The transport is closed")
        key = env_proxy or ""
        delegate = self._delegates.get(key)
        if delegate is None:
            delegate = httpx2.AsyncHTTPTransport(
                verify=self._get_ssl_context(),
                trust_env=self._trust_env,
                http2=self._http2,
                limits=httpx2.Limits(
                    max_connections=self._max_connections,
                    max_keepalive_connections=self._max_connections,
                    keepalive_expiry=self._keepalive_expiry,
                ),
                proxy=env_proxy if env_proxy is not None else self._proxy,
                uds=self._uds,
            )
            self._delegates[key] = delegate
        return delegate

    # Lifecycle and introspection.

    async def aclose(self) -> None:
        """Close every connection, including those of the stock transport if one was made."""
        await self._pool.aclose()
        delegates, self._delegates = list(self._delegates.values()), {}
        self._routes.clear()
        for delegate in delegates:
            await delegate.aclose()

    @property
    def parser(self) -> str:
        """The name of the response parser in use (``"httptools"`` or ``"h11"``)."""
        return self._parser_name

    def statistics(self) -> TransportStatistics:
        """Return a snapshot of the pool and of the counters since creation."""
        pool = self._pool
        origins = tuple(
            OriginStatistics(origin=_origin_str(origin), idle=idle, active=active)
            for origin, idle, active in pool.counts()
        )
        return TransportStatistics(
            parser=self._parser_name,
            max_connections=self._max_connections,
            open=pool.open,
            idle=sum(o.idle for o in origins),
            active=sum(o.active for o in origins),
            waiting=pool.waiting,
            requests=self._requests,
            delegated=self._delegated,
            connects=pool.connects,
            stale_replaced=pool.stale_replaced,
            expired=pool.expired,
            evicted=pool.evicted,
            discarded=pool.discarded,
            origins=origins,
        )

    def __repr__(self) -> str:
        pool = self._pool
        idle = sum(idle for _, idle, _ in pool.counts())
        state = "closed" if pool.closed else f"open={pool.open} idle={idle}"
        return (
            f"<FastTransport parser={self._parser_name!r} "
            f"max_connections={self._max_connections} {state}>"
        )
