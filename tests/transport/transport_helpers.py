"""Raw loopback servers for the transport tests: each test scripts the server's bytes itself.

A handler gets a :class:`Peer` (one accepted connection) and may answer correctly, slowly,
partially, or not at all, which is what the fault matrix needs and a real server cannot do.
Requests are parsed with h11 in the *server* role, independent of the client code under test.
"""

from __future__ import annotations

import socket
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import ExitStack, asynccontextmanager, contextmanager, suppress

import anyio
import anyio.abc
import attrs
import h11
from anyio.streams.tls import TLSStream


@attrs.frozen
class Received:
    """One request as the server read it."""

    method: bytes
    target: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes

    def header(self, name: str) -> bytes | None:
        """Return the first value of a header, by case-insensitive name."""
        wanted = name.lower().encode("ascii")
        for key, value in self.headers:
            if key.lower() == wanted:
                return value
        return None


class Peer:
    """The server's end of one connection."""

    def __init__(self, stream: anyio.abc.ByteStream, index: int) -> None:
        self.stream = stream
        self.index = index
        self._buffer = b""

    async def read_request(self) -> Received | None:
        """Read one whole request; return None if the client closed the connection first."""
        conn = h11.Connection(h11.SERVER)
        if self._buffer:
            # An empty feed would tell h11 the connection closed.
            conn.receive_data(self._buffer)
        method = target = b""
        headers: tuple[tuple[bytes, bytes], ...] = ()
        body: list[bytes] = []
        for _ in range(1_000_000):
            event = conn.next_event()
            if event is h11.NEED_DATA:
                try:
                    data = await self.stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    data = b""
                conn.receive_data(data)
            elif isinstance(event, h11.ConnectionClosed):
                return None
            elif isinstance(event, h11.Request):
                method, target = event.method, event.target
                headers = tuple(event.headers.raw_items())
            elif isinstance(event, h11.Data):
                body.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                self._buffer = conn.trailing_data[0]
                return Received(method, target, headers, b"".join(body))
        raise AssertionError("unreachable: the request never ended")

    async def send(self, data: bytes) -> None:
        """Send raw bytes to the client."""
        await self.stream.send(data)

    async def reset(self) -> None:
        """Abort the connection with a TCP RST instead of a FIN."""
        sock = self.stream.extra(anyio.abc.SocketAttribute.raw_socket)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await self.stream.aclose()

    async def at_eof(self) -> bool:
        """Wait for the client's next move; return True if it closed the connection."""
        try:
            data = await self.stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            return True
        self._buffer += data
        return False


Handler = Callable[[Peer], Awaitable[object]]


def stall_after(sent: bytes = b"") -> Handler:
    """Return a handler that reads one request, sends *sent*, then never sends another byte."""

    async def stall(peer: Peer) -> None:
        await peer.read_request()
        if sent:
            await peer.send(sent)
        await anyio.sleep_forever()

    return stall


def http_response(
    status: int = 200,
    body: bytes = b"",
    headers: Sequence[tuple[str, str]] = (),
    *,
    reason: str = "OK",
    version: str = "1.1",
    length: bool = True,
) -> bytes:
    """Build a response with a Content-Length (unless *length* is false) and *headers*."""
    lines = [f"HTTP/{version} {status} {reason}".encode()]
    lines += [f"{name}: {value}".encode("latin-1") for name, value in headers]
    if length:
        lines.append(b"content-length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def chunked(*pieces: bytes) -> bytes:
    """Frame pieces as a complete chunked body, terminator included."""
    return b"".join(b"%x\r\n%b\r\n" % (len(piece), piece) for piece in pieces) + b"0\r\n\r\n"


class RawServer:
    """A loopback listener whose connections are served by one handler."""

    def __init__(self, port: int, scheme: str) -> None:
        self.port = port
        self.scheme = scheme
        self.accepted = 0
        self.handled = 0
        self.done = anyio.Event()

    def url(self, path: str = "/") -> str:
        """Return the URL of *path* on this server."""
        return f"{self.scheme}://127.0.0.1:{self.port}{path}"


@asynccontextmanager
async def raw_server(
    handler: Handler, *, tls: ssl.SSLContext | None = None
) -> AsyncIterator[RawServer]:
    """Serve *handler* on a fresh 127.0.0.1 port until the block exits."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    server = RawServer(port, "https" if tls is not None else "http")

    async def serve_one(stream: anyio.abc.SocketStream) -> None:
        server.accepted += 1
        index = server.accepted
        conn: anyio.abc.ByteStream = stream
        try:
            if tls is not None:
                try:
                    conn = await TLSStream.wrap(
                        stream, server_side=True, ssl_context=tls, standard_compatible=False
                    )
                except (ssl.SSLError, OSError, anyio.BrokenResourceError, anyio.EndOfStream):
                    return
            await handler(Peer(conn, index))
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream, OSError):
            pass
        finally:
            await anyio.aclose_forcefully(conn)
            server.handled += 1
            server.done.set()

    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, serve_one, tg)
        try:
            yield server
        finally:
            tg.cancel_scope.cancel()


async def answer(peer: Peer, response: bytes, *, times: int = 1_000) -> None:
    """Answer up to *times* requests on one connection with the same bytes."""
    for _ in range(times):
        if await peer.read_request() is None:
            return
        await peer.send(response)


@contextmanager
def black_hole(receive_buffer: int = 65536) -> Iterator[int]:
    """Listen on a loopback port and never accept: the kernel completes connections, and their
    receive buffers fill up, since nothing ever reads them. Yield the port.

    (An anyio listener on asyncio would not do: its transports read eagerly into memory.)
    """
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield sock.getsockname()[1]


def free_port() -> int:
    """Return a loopback port with nothing listening on it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@contextmanager
def unanswered_address() -> Iterator[tuple[int, tuple[str, int]]]:
    """Yield a loopback address whose connects hang: its accept queue is already full."""
    with ExitStack() as stack:
        listener = stack.enter_context(socket.socket())
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        address = listener.getsockname()
        # Fill the accept queue: nothing ever accepts, so later SYNs are dropped.
        for _ in range(4):
            filler = stack.enter_context(socket.socket())
            filler.setblocking(False)
            with suppress(BlockingIOError):
                filler.connect(address)
        yield socket.AF_INET, address
