"""Serve an ASGI app (usually a `MockServer`) on a loopback port, on asyncio or trio.

Hypercorn does the HTTP; this module binds the socket itself so that port 0 works (the kernel
picks a free port and we read it back before hypercorn starts), runs hypercorn's worker for the
current anyio backend inside a task group, and shuts it down gracefully on exit.
"""

from __future__ import annotations

import math
import socket
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, Final

import anyio
import attrs

from ._mock.config import MockConfig
from ._mock.server import MockServer
from ._mock.wire import Message, Receive, Scope, Send

__all__ = ["RunningServer", "parse_error_rates", "parse_latency", "run_mock_server", "serve"]

_GRACE: Final = 5.0

ASGIApp = Callable[[Scope, Receive, Send], Any]


@attrs.frozen
class RunningServer:
    """Where a served app listens.

    Attributes:
        host: The address it is bound to.
        port: The port it is bound to (the real one when 0 was asked for).
        app: The ASGI app being served.
    """

    host: str
    port: int
    app: Any = attrs.field(repr=False)

    @property
    def url(self) -> str:
        """The server's root URL, for example ``http://127.0.0.1:54321``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The same as `url`: append ``/v1`` for OpenAI clients, nothing for Anthropic's."""
        return self.url


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        sock.listen(1024)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _running_trio() -> bool:
    try:
        import sniffio
    except ImportError:
        return False  # trio depends on sniffio: without it, only asyncio can be running
    return sniffio.current_async_library() == "trio"


def _hypercorn_worker() -> tuple[Any, Any, Any, Any]:
    """Import hypercorn's pieces for the running backend, with a clear error if it is missing."""
    try:
        from hypercorn.config import Config, Sockets
        from hypercorn.utils import wrap_app

        if _running_trio():
            from hypercorn.trio.run import worker_serve
        else:
            from hypercorn.asyncio.run import worker_serve  # type: ignore[assignment]
    except ImportError as exc:
        raise ImportError(
            "serving on a port needs hypercorn: install corral[server]", name=exc.name
        ) from exc
    return Config, Sockets, wrap_app, worker_serve


def _watch_startup(app: ASGIApp, ready: anyio.Event) -> ASGIApp:
    """Wrap `app` so that `ready` is set once its lifespan startup is over, however it ends."""

    async def watched(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await app(scope, receive, send)
            return

        async def lifespan_send(message: Message) -> None:
            try:
                await send(message)
            finally:
                if message["type"].startswith("lifespan.startup."):
                    ready.set()

        try:
            await app(scope, receive, lifespan_send)
        finally:
            # An app without lifespan support raises at once; hypercorn then serves anyway.
            ready.set()

    return watched


@asynccontextmanager
async def serve(
    app: ASGIApp, *, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[RunningServer]:
    """Serve `app` with hypercorn on `host`:`port` until the block exits.

    Works on asyncio and trio (whichever anyio runs on). The server runs in a task group owned
    by this context manager; on exit it stops accepting, closes idle connections, waits up to a
    few seconds for requests in flight, and releases its socket. Access and error logs are off.

    Args:
        app: An ASGI app, for example a `MockServer`.
        host: The address to bind; loopback by default.
        port: The port to bind; 0 lets the system pick a free one (read it from the result).

    Yields:
        Where the server listens: ``.url``, ``.base_url``, ``.port``.
    """
    config_class, sockets_class, wrap_app, worker_serve = _hypercorn_worker()
    config = config_class()
    config.accesslog = None
    config.errorlog = None
    # The app sends its own date header, from its own (possibly virtual) clock.
    config.include_date_header = False
    config.include_server_header = False
    config.graceful_timeout = _GRACE
    sock = _bind(host, port)
    bound_port: int = sock.getsockname()[1]
    stop = anyio.Event()
    stopped = anyio.Event()
    ready = anyio.Event()

    # Shielded so that hypercorn only ever stops through its shutdown trigger: cancelled in
    # the middle of its own cleanup, its asyncio worker leaves tasks and futures behind.
    worker_scope = anyio.CancelScope(shield=True)

    async def run() -> None:
        # hypercorn's public serve() binds its own sockets and cannot report port 0's real
        # port on asyncio; its worker takes ready sockets, which it closes when it stops.
        try:
            with worker_scope:
                await worker_serve(
                    wrap_app(_watch_startup(app, ready), config.wsgi_max_body_size, "asgi"),
                    config,
                    sockets=sockets_class([], [sock], []),
                    shutdown_trigger=stop.wait,
                )
        finally:
            ready.set()
            stopped.set()

    failure: BaseException | None = None
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(run)
            # Yield only once the app has started (and so a MockServer's clock with it); a
            # worker that fails to start cancels this wait through the task group.
            with anyio.fail_after(_GRACE * 2):
                await ready.wait()
            if stopped.is_set():
                raise RuntimeError("hypercorn stopped before it started serving")
            try:
                yield RunningServer(host, bound_port, app)
            except anyio.get_cancelled_exc_class():
                raise
            except BaseException as exc:
                # Raised again below, outside the task group, so that an error in the caller's
                # block reaches the caller as itself rather than wrapped in an ExceptionGroup.
                failure = exc
            finally:
                stop.set()
                with anyio.move_on_after(_GRACE + 1.0, shield=True):
                    await stopped.wait()
                worker_scope.cancel()
        if failure is not None:
            raise failure
    finally:
        sock.close()


async def run_mock_server(
    config: MockConfig | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    on_ready: Callable[[RunningServer], object] | None = None,
) -> None:
    """Serve a `MockServer` until cancelled (Ctrl+C): the body of ``corral mock-server``.

    Args:
        config: The mock's knobs.
        host: The address to bind.
        port: The port to bind; 0 picks a free one.
        on_ready: Called once the server listens, for example to print its URL.
    """
    async with serve(MockServer(config), host=host, port=port) as running:
        if on_ready is not None:
            on_ready(running)
        await anyio.sleep_forever()


def parse_latency(text: str) -> float | tuple[float, float]:
    """Parse a command-line latency: ``"0.05"`` (seconds) or ``"0.01-0.2"`` (uniform range).

    Args:
        text: The option's value.

    Raises:
        ValueError: If the text is neither form, or a value is negative or not finite.
    """
    stripped = text.strip()
    low, sep, high = stripped.partition("-")
    try:
        values: tuple[float, ...] = (float(low), float(high)) if sep and low else (float(stripped),)
    except ValueError as exc:
        raise ValueError(f"latency must be SECONDS or LOW-HIGH, not {text!r}") from exc
    if any(not (0 <= value < math.inf) for value in values) or values != tuple(sorted(values)):
        raise ValueError(f"latency must be finite, >= 0 and LOW <= HIGH, not {text!r}")
    return (values[0], values[1]) if len(values) == 2 else values[0]


def parse_error_rates(text: str) -> Mapping[int, float]:
    """Parse command-line error rates: ``"429=0.02,500=0.01"`` (status=probability, ...).

    Args:
        text: The option's value.

    Raises:
        ValueError: If an item is not STATUS=RATE, or the rates are out of range.
    """
    rates: dict[int, float] = {}
    usage = f"error rates must look like 429=0.02,500=0.01, not {text!r}"
    for item in filter(None, (part.strip() for part in text.split(","))):
        status, sep, rate = item.partition("=")
        if not sep:
            raise ValueError(usage)
        try:
            rates[int(status)] = float(rate)
        except ValueError as exc:
            raise ValueError(usage) from exc
    MockConfig(error_rates=rates)  # the same checks as the server's
    return rates
