"""A TCP byte stream on a bare non-blocking socket, for :class:`corral.FastTransport`.

anyio's own socket stream on asyncio goes through an asyncio transport and protocol: every
``send`` yields to the event loop once, every ``receive`` pauses and resumes reading. For a
client whose whole job is one small write and one small read per request, that bookkeeping
costs as much again as the request itself. This stream calls ``send``/``recv`` on the socket
directly and waits with :func:`anyio.wait_readable` / :func:`anyio.wait_writable` only when
the socket is not ready, so the common exchange costs one wait (for the response). On trio the
two approaches cost the same, and the same code serves both.

Connecting is done here too (a socket from anyio's would belong to its transport): addresses
from :func:`anyio.getaddrinfo`, tried with happy eyeballs (RFC 8305) when there are several.
"""

from __future__ import annotations

import errno
import ipaddress
import math
import os
import socket
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

import anyio
import anyio.abc
import anyio.lowlevel

# Consecutive receives that find data waiting before one yields anyway, so that a peer that
# floods us cannot starve the other tasks or delay a cancellation indefinitely.
_YIELD_EVERY: Final = 16
_HAPPY_EYEBALLS_DELAY: Final = 0.25
# Reads that wait for the selector at once after a pass through the event loop came up empty.
_PATIENCE: Final = 8

_Address = tuple[int, Any]


class DeadlinePassed(Exception):
    """A wait for the socket ran into the request's deadline.

    Not a ``TimeoutError``: that is an ``OSError``, which anyio's TLS stream turns into a broken
    connection on its way up.
    """


class SocketStream(anyio.abc.ByteStream):
    """A byte stream over a connected, non-blocking TCP socket that it owns.

    Every wait for the socket ends at :attr:`deadline`: the transport sets it per request, so
    that a request's time limit costs a cancel scope only when a read or a write really has to
    wait, not one per request.

    Args:
        sock: The socket; closed with the stream.
    """

    __slots__ = (
        "_backend",
        "_closed",
        "_patience",
        "_ready_reads",
        "_replied",
        "_sock",
        "clock",
        "deadline",
    )

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._closed = False
        self._ready_reads = 0
        # 0: the last pass through the event loop found the data there, so try that first again.
        # Else the number of waits left before trying it once more.
        self._patience = 0
        # False from a send until the next receive: the answer cannot be there yet.
        self._replied = True
        # Looked up once: anyio's module-level functions find the backend again on every call.
        self._backend = anyio.lowlevel.current_token().backend_class
        #: anyio's clock (the backend's own function, found once).
        self.clock: Callable[[], float] = self._backend.current_time
        #: When (on anyio's clock) a wait for the socket gives up with DeadlinePassed.
        self.deadline = math.inf

    async def _wait(self, wait: Callable[[socket.socket], Awaitable[None]]) -> None:
        """Wait for the socket with *wait*, until :attr:`deadline`."""
        deadline = self.deadline
        if deadline == math.inf:
            await wait(self._sock)
            return
        with self._backend.create_cancel_scope(deadline=deadline) as scope:
            await wait(self._sock)
        if scope.cancelled_caught:
            raise DeadlinePassed("the request's time limit passed while waiting for the server")

    async def receive(self, max_bytes: int = 65536) -> bytes:
        """Return the next bytes the peer sent, waiting for them if needed.

        Args:
            max_bytes: The most bytes to return.

        Raises:
            anyio.EndOfStream: The peer closed its side.
            anyio.BrokenResourceError: The connection failed (reset, for instance).
            anyio.ClosedResourceError: This stream was closed.
            DeadlinePassed: The :attr:`deadline` passed.
        """
        sock = self._sock
        backend = self._backend
        yielded = False
        if not self._replied:
            self._replied = True
            if not self._patience and not self._closed:
                # Just after a send the answer is not there yet: a recv now would only raise
                # BlockingIOError (an exception and a traceback per request). Let the other
                # tasks run first, as the loop below would after that failed recv.
                yielded = True
                await backend.checkpoint()
        for _ in range(1_000_000):
            if self._closed:
                raise anyio.ClosedResourceError
            try:
                data = sock.recv(max_bytes)
            except BlockingIOError:
                self._ready_reads = 0
                if yielded:
                    # The pass through the loop was not enough: wait properly, and skip the
                    # pass for the next few reads (a slow server, or a quiet loop).
                    self._patience = _PATIENCE
                    await self._wait(backend.wait_readable)
                elif self._patience:
                    self._patience -= 1
                    await self._wait(backend.wait_readable)
                else:
                    # One pass through the event loop first: with other requests in flight the
                    # answer has usually arrived by then, and that costs less than registering
                    # the socket with the selector and taking it out again.
                    yielded = True
                    await backend.checkpoint()
                continue
            except OSError as exc:
                raise anyio.BrokenResourceError from exc
            if not data:
                raise anyio.EndOfStream
            self._ready_reads += 1
            if self._ready_reads >= _YIELD_EVERY:
                self._ready_reads = 0
                await backend.checkpoint()
                # A peer that never lets a read wait would otherwise outrun the deadline.
                if backend.current_time() >= self.deadline:
                    raise DeadlinePassed("the request's time limit passed while reading")
            return data
        raise AssertionError("unreachable")  # pragma: no cover

    async def send(self, item: bytes) -> None:
        """Send all of *item*, waiting for room in the socket's buffer as needed.

        Args:
            item: The bytes to send.

        Raises:
            anyio.BrokenResourceError: The connection failed.
            anyio.ClosedResourceError: This stream was closed.
            DeadlinePassed: The :attr:`deadline` passed.
        """
        sock = self._sock
        view = memoryview(item)
        while view:
            if self._closed:
                raise anyio.ClosedResourceError
            try:
                sent = sock.send(view)
            except BlockingIOError:
                await self._wait(self._backend.wait_writable)
                continue
            except OSError as exc:
                raise anyio.BrokenResourceError from exc
            view = view[sent:]
        self._replied = False

    async def send_eof(self) -> None:
        """Shut down the sending side."""
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            raise anyio.BrokenResourceError from exc

    async def aclose(self) -> None:
        """Close the socket; a task waiting on it gets ClosedResourceError."""
        if not self._closed:
            self._closed = True
            anyio.notify_closing(self._sock)
            self._sock.close()
        await anyio.lowlevel.checkpoint()

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        """The socket attributes anyio defines (raw socket, family, addresses)."""
        sock = self._sock
        return {
            anyio.abc.SocketAttribute.raw_socket: lambda: sock,
            anyio.abc.SocketAttribute.family: lambda: sock.family,
            anyio.abc.SocketAttribute.local_address: sock.getsockname,
            anyio.abc.SocketAttribute.remote_address: sock.getpeername,
        }

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"fd={self._sock.fileno()}"
        return f"<SocketStream {state}>"


async def _connect_one(family: int, address: Any) -> socket.socket:
    """Connect one socket to one resolved address."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            sock.connect(address)
        except BlockingIOError:
            await anyio.wait_writable(sock)
            error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if error:
                raise OSError(error, os.strerror(error), address) from None
    except BaseException:
        sock.close()
        raise
    return sock


async def _resolve(host: str, port: int) -> list[_Address]:
    """Return (family, address) pairs for *host*, IPv6 and IPv4 interleaved as RFC 8305 asks."""
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        if literal.version == 6:
            return [(socket.AF_INET6, (host, port, 0, 0))]
        return [(socket.AF_INET, (host, port))]
    infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    v6 = [(int(info[0]), info[4]) for info in infos if info[0] == socket.AF_INET6]
    v4 = [(int(info[0]), info[4]) for info in infos if info[0] == socket.AF_INET]
    first, second = (v6, v4) if infos and infos[0][0] == socket.AF_INET6 else (v4, v6)
    ordered: list[_Address] = []
    for i in range(max(len(first), len(second))):
        ordered += first[i : i + 1] + second[i : i + 1]
    return ordered


async def open_tcp_socket(host: str, port: int) -> socket.socket:
    """Resolve *host* and connect to it; return a connected non-blocking socket.

    Args:
        host: A host name or an IP address literal.
        port: The TCP port.

    Raises:
        OSError: No address could be resolved or connected to.
    """
    addresses = await _resolve(host, port)
    if not addresses:
        raise OSError(errno.EADDRNOTAVAIL, f"No address found for {host!r}")
    return await connect_any(addresses)


async def connect_any(addresses: list[tuple[int, Any]]) -> socket.socket:
    """Connect to the first of *addresses* that answers, racing them as happy eyeballs do.

    A new attempt starts whenever the previous one fails or has not succeeded within 250 ms;
    the first to connect wins and the others are abandoned.

    Args:
        addresses: ``(family, sockaddr)`` pairs, in order of preference.

    Raises:
        OSError: Every attempt failed.
    """
    if len(addresses) == 1:
        return await _connect_one(*addresses[0])
    winner: socket.socket | None = None
    errors: list[OSError] = []

    async with anyio.create_task_group() as tg:

        async def attempt(family: int, address: Any, failed: anyio.Event) -> None:
            nonlocal winner
            try:
                sock = await _connect_one(family, address)
            except OSError as exc:
                errors.append(exc)
                failed.set()
                return
            if winner is None:
                winner = sock
                tg.cancel_scope.cancel()
            else:  # pragma: no cover - two connects completing in the same loop pass
                sock.close()

        for family, address in addresses:
            failed = anyio.Event()
            tg.start_soon(attempt, family, address, failed)
            with anyio.move_on_after(_HAPPY_EYEBALLS_DELAY):
                await failed.wait()

    if winner is None:
        raise OSError(
            "All connection attempts failed: " + "; ".join(str(exc) for exc in errors)
        ) from (errors[-1] if errors else None)
    return winner
