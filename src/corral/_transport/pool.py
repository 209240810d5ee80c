"""The keep-alive connection pool behind :class:`corral.FastTransport`.

One deque of idle connections per origin makes checkout and return O(1). Every open connection,
and every one being opened, holds one of ``max_connections`` slots; a request that finds none
free waits in one FIFO queue, whatever its origin. A connection is checked once, cheaply, before
it is reused: idle for longer than ``keepalive_expiry``, or readable (the server closed it or sent
something unasked), and it is closed and replaced before any byte of the request is written.
"""

from __future__ import annotations

import math
import select
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Final

import anyio
import anyio.abc
import httpx2

from .http11 import HttptoolsParser
from .sockets import SocketStream

Origin = tuple[str, bytes, int | None]
"""Scheme, ASCII host and port (None for the scheme's default) of a connection's server."""

_HAS_POLL: Final = hasattr(select, "poll")


_POLL_EVENTS: Final = select.POLLIN | select.POLLERR | select.POLLHUP if _HAS_POLL else 0


async def close_stream(stream: anyio.abc.AsyncResource) -> None:
    """Close a stream at once, even inside a cancelled scope.

    Args:
        stream: The stream to close; it is not waited on (no TLS close_notify exchange).
    """
    with anyio.CancelScope(shield=True):
        await anyio.aclose_forcefully(stream)


def within(timeout: float | None, deadline: float) -> float | None:
    """Return the seconds left for a wait bounded by *timeout* and by *deadline*, or None.

    Args:
        timeout: Seconds allowed for the wait; None for no bound.
        deadline: When (on anyio's clock) the request must be done; ``math.inf`` for never.
    """
    if deadline == math.inf:
        return timeout
    left = deadline - anyio.current_time()
    return left if timeout is None else min(timeout, left)


class Connection:
    """One HTTP/1.1 connection: its byte stream and its pool bookkeeping.

    Args:
        stream: What requests are written to and read from (TLS over *socket*, or *socket*).
        origin: The server.
        socket: The TCP stream underneath, whose waits end at a request's deadline.
    """

    __slots__ = (
        "_poller",
        "_raw_socket",
        "clock",
        "idle_since",
        "origin",
        "parser",
        "requests",
        "socket",
        "stream",
    )

    def __init__(
        self, stream: anyio.abc.ByteStream, origin: Origin, socket: SocketStream | None = None
    ) -> None:
        self.stream = stream
        self.socket = socket
        self.origin = origin
        self.idle_since = 0.0
        self.requests = 0
        # The connection's own response parser, kept across responses when it can be.
        self.parser: HttptoolsParser | None = None
        self._raw_socket = stream.extra(anyio.abc.SocketAttribute.raw_socket, None)
        # Made at the first check and kept: one poll() call per reuse, nothing else.
        self._poller: select.poll | None = None
        #: anyio's clock, read through the backend the socket found: anyio.current_time looks
        #: the backend up again at every call.
        self.clock: Callable[[], float] = anyio.current_time if socket is None else socket.clock

    def is_readable(self) -> bool:
        """Return whether the idle connection has something to read: an EOF, or stray bytes.

        Either way no response to a new request could be told apart from it, so it is stale.
        """
        sock = self._raw_socket
        if sock is None:  # pragma: no cover - every anyio TCP stream exposes its socket
            return False
        try:
            fileno = sock.fileno()
            if fileno < 0:
                return True
            if not _HAS_POLL:  # pragma: no cover - Windows
                readable, _, _ = select.select([fileno], [], [], 0)
                return bool(readable)
            poller = self._poller
            if poller is None:
                poller = self._poller = select.poll()
                poller.register(fileno, _POLL_EVENTS)
            return bool(poller.poll(0))
        except (OSError, ValueError):
            return True

    def __repr__(self) -> str:
        scheme, raw_host, port = self.origin
        host = raw_host.decode("ascii")
        if ":" in host:
            host = f"[{host}]"
        where = host if port is None else f"{host}:{port}"
        return f"<Connection {scheme}://{where} requests={self.requests}>"


class _OriginPool:
    __slots__ = ("active", "idle", "origin")

    def __init__(self, origin: Origin) -> None:
        self.origin = origin
        self.idle: deque[Connection] = deque()
        # Checked out, or being opened, for a request.
        self.active = 0


class _Waiter:
    __slots__ = ("connection", "event", "granted", "origin")

    def __init__(self, origin: Origin) -> None:
        self.origin = origin
        self.event = anyio.Event()
        # Set by whoever wakes the waiter: a live connection to its origin, or a free slot.
        self.connection: Connection | None = None
        self.granted = False


Connector = Callable[[Origin, float | None, float], Awaitable[Connection]]


class ConnectionPool:
    """Keep-alive connections per origin, bounded in number, handed out FIFO when scarce.

    Args:
        connect: Opens a new connection to an origin within a timeout and before a deadline;
            raises httpx2 errors.
        max_connections: The most connections open at once, over all origins; None for no bound.
        keepalive_expiry: Seconds an idle connection may wait for reuse; None for no limit.
    """

    __slots__ = (
        "_all",
        "_closed",
        "_connect",
        "_expiry",
        "_max",
        "_open",
        "_origins",
        "_waiters",
        "connects",
        "discarded",
        "evicted",
        "expired",
        "stale_replaced",
    )

    def __init__(
        self, connect: Connector, max_connections: int | None, keepalive_expiry: float | None
    ) -> None:
        self._connect = connect
        self._max = max_connections
        self._expiry = keepalive_expiry
        self._origins: dict[Origin, _OriginPool] = {}
        self._all: set[Connection] = set()
        # Connections open or being opened: the slots in use.
        self._open = 0
        self._waiters: deque[_Waiter] = deque()
        self._closed = False
        self.connects = 0
        self.stale_replaced = 0
        self.expired = 0
        self.evicted = 0
        self.discarded = 0

    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` was called."""
        return self._closed

    def take_idle(self, origin: Origin) -> Connection | None:
        """Return the newest idle connection to *origin*, counted as active, if that is all.

        The common case without a wait: the newest idle connection is live and nothing else
        needs closing. Otherwise return None, and :meth:`checkout` does the rest.

        Args:
            origin: Where the request goes.
        """
        pool = self._origins.get(origin)
        if pool is None or self._closed:
            return None
        idle = pool.idle
        if not idle:
            return None
        conn = idle[-1]
        expiry = self._expiry
        if expiry is not None:
            now = conn.clock()
            if now - conn.idle_since > expiry or now - idle[0].idle_since > expiry:
                return None
        if conn.is_readable():
            return None
        idle.pop()
        pool.active += 1
        conn.requests += 1
        return conn

    async def checkout(
        self,
        origin: Origin,
        pool_timeout: float | None,
        connect_timeout: float | None,
        deadline: float = math.inf,
    ) -> Connection:
        """Return a live connection to *origin*, reused or new, counted as active.

        Args:
            origin: Where the request goes.
            pool_timeout: Seconds to wait for a free slot; None waits as long as it takes.
            connect_timeout: Seconds allowed to open a new connection.
            deadline: When (on anyio's clock) waiting and connecting give up, whatever the
                timeouts allow.

        Raises:
            httpx2.PoolTimeout: No slot came free in time.
            httpx2.ConnectError: A new connection could not be opened.
            httpx2.ConnectTimeout: Opening it took too long.
        """
        if self._closed:
            raise RuntimeError("The transport is closed")
        pool = self._origins.get(origin)
        if pool is None:
            pool = self._origins[origin] = _OriginPool(origin)
        if pool.idle:
            conn = await self._reuse(pool)
            if conn is not None:
                return conn
        if self._max is None or self._open < self._max:
            self._open += 1
            return await self._open_new(pool, connect_timeout, deadline)
        victim = self._idle_elsewhere(origin)
        if victim is not None:
            # The slot passes from an idle connection elsewhere to this request.
            self._all.discard(victim)
            self.evicted += 1
            await close_stream(victim.stream)
            return await self._open_new(pool, connect_timeout, deadline)
        return await self._wait(pool, pool_timeout, connect_timeout, deadline)

    async def _reuse(self, pool: _OriginPool) -> Connection | None:
        idle = pool.idle
        now = idle[-1].clock()
        expiry = self._expiry
        while idle:
            # Newest first keeps few connections warm; the oldest expire at the other end.
            conn = idle.pop()
            if expiry is not None and now - conn.idle_since > expiry:
                self.expired += 1
            elif conn.is_readable():
                self.stale_replaced += 1
            else:
                pool.active += 1
                conn.requests += 1
                if idle and expiry is not None and now - idle[0].idle_since > expiry:
                    oldest = idle.popleft()
                    self.expired += 1
                    self._forget(oldest)
                    await close_stream(oldest.stream)
                return conn
            self._forget(conn)
            await close_stream(conn.stream)
        return None

    async def _open_new(
        self, pool: _OriginPool, connect_timeout: float | None, deadline: float
    ) -> Connection:
        # The caller already holds a slot for this connection.
        pool.active += 1
        try:
            conn = await self._connect(pool.origin, connect_timeout, deadline)
        except BaseException:
            pool.active -= 1
            self._open -= 1
            self._grant()
            raise
        if self._closed:
            pool.active -= 1
            self._open -= 1
            await close_stream(conn.stream)
            raise RuntimeError("The transport is closed")
        self._all.add(conn)
        self.connects += 1
        conn.requests = 1
        return conn

    def _idle_elsewhere(self, origin: Origin) -> Connection | None:
        for other in self._origins.values():
            if other.idle and other.origin != origin:
                return other.idle.popleft()
        return None

    async def _wait(
        self,
        pool: _OriginPool,
        pool_timeout: float | None,
        connect_timeout: float | None,
        deadline: float,
    ) -> Connection:
        waiter = _Waiter(pool.origin)
        self._waiters.append(waiter)
        try:
            with anyio.fail_after(within(pool_timeout, deadline)):
                await waiter.event.wait()
        except BaseException as exc:
            if waiter.connection is not None:
                # Handed a connection just as we gave up: put it back for the next one.
                await self.release(waiter.connection)
            elif waiter.granted:
                self._open -= 1
                self._grant()
            else:
                self._waiters.remove(waiter)
            if isinstance(exc, TimeoutError):
                past = pool_timeout is None or anyio.current_time() >= deadline
                waited = "before the deadline" if past else f"within {pool_timeout} s"
                raise httpx2.PoolTimeout(
                    f"No connection came free {waited} ({self._max} connections in use)"
                ) from exc
            raise
        if waiter.connection is not None:
            return waiter.connection
        if not waiter.granted:
            raise RuntimeError("The transport is closed")
        return await self._open_new(pool, connect_timeout, deadline)

    def _grant(self) -> None:
        """Give free slots to the longest-waiting requests."""
        waiters = self._waiters
        while waiters and (self._max is None or self._open < self._max):
            waiter = waiters.popleft()
            waiter.granted = True
            self._open += 1
            waiter.event.set()

    def _forget(self, conn: Connection) -> None:
        """Stop counting a connection that is about to be closed, and free its slot."""
        if conn in self._all:
            self._all.remove(conn)
            self._open -= 1
            self._grant()

    def give_back(self, conn: Connection, reuse: bool = True) -> bool:
        """Take back a connection whose response was read to the end, without waiting.

        Return True when it was kept for reuse or handed to a waiting request, and False when
        it must be closed: the caller then closes its stream (:meth:`release` does both).

        Args:
            conn: A connection from :meth:`checkout`.
            reuse: Whether the connection may carry another request.
        """
        pool = self._origins[conn.origin]
        pool.active -= 1
        if reuse and not self._closed and conn in self._all:
            waiters = self._waiters
            if waiters and waiters[0].origin == conn.origin:
                waiter = waiters.popleft()
                waiter.connection = conn
                pool.active += 1
                conn.requests += 1
                waiter.event.set()
                return True
            if not waiters:
                conn.idle_since = conn.clock()
                pool.idle.append(conn)
                return True
            # The longest waiter wants another origin: this slot serves it better closed.
        self._forget(conn)
        return False

    async def release(self, conn: Connection, reuse: bool = True) -> None:
        """Take back a connection whose response was read to the end; close it if it is done.

        Args:
            conn: A connection from :meth:`checkout`.
            reuse: Whether the connection may carry another request; if not, it is closed.
        """
        if not self.give_back(conn, reuse):
            await close_stream(conn.stream)

    async def discard(self, conn: Connection) -> None:
        """Close a checked-out connection that must not be reused.

        Args:
            conn: A connection from :meth:`checkout`.
        """
        self._origins[conn.origin].active -= 1
        self.discarded += 1
        self._forget(conn)
        await close_stream(conn.stream)

    async def aclose(self) -> None:
        """Close every connection, idle or active, and wake every waiter."""
        self._closed = True
        waiters, self._waiters = self._waiters, deque()
        for waiter in waiters:
            waiter.event.set()
        idle: list[Connection] = []
        for pool in self._origins.values():
            idle.extend(pool.idle)
            pool.idle.clear()
        for conn in idle:
            self._forget(conn)
        # Active ones stay counted until their owners hand them back; their reads fail now.
        for conn in [*idle, *self._all]:
            await close_stream(conn.stream)

    def counts(self) -> list[tuple[Origin, int, int]]:
        """Return ``(origin, idle, active)`` for every origin seen."""
        return [(pool.origin, len(pool.idle), pool.active) for pool in self._origins.values()]

    @property
    def open(self) -> int:
        """The connections open or being opened."""
        return self._open

    @property
    def waiting(self) -> int:
        """The requests waiting for a slot."""
        return len(self._waiters)

    @property
    def max_connections(self) -> int | None:
        """The bound on open connections."""
        return self._max
