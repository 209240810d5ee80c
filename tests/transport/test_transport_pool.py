"""The keep-alive pool: stale and expired connections, FIFO waiting, cancellation, closing."""

from __future__ import annotations

import random

import anyio
import anyio.lowlevel
import httpx2
import pytest

from corral._transport.fast import FastTransport
from corral._transport.http11 import ParserName

from .transport_helpers import Peer, answer, http_response, raw_server

pytestmark = pytest.mark.anyio

OK = http_response(200, b"ok")


async def wait_until(predicate: object, *, limit: int = 10_000) -> None:
    """Yield to other tasks until *predicate()* holds (bounded)."""
    assert callable(predicate)
    for _ in range(limit):
        if predicate():
            return
        await anyio.lowlevel.checkpoint()
    raise AssertionError("condition never held")


async def test_idle_connection_closed_by_server_is_replaced(parser: ParserName) -> None:
    """A connection the server closed while idle is detected at checkout and replaced silently."""
    requests_seen = 0

    async def one_then_close(peer: Peer) -> None:
        nonlocal requests_seen
        if await peer.read_request() is not None:
            requests_seen += 1
            await peer.send(OK)

    async with (
        raw_server(one_then_close) as server,
        FastTransport(parser=parser) as transport,
        httpx2.AsyncClient(transport=transport) as client,
    ):
        assert (await client.get(server.url())).content == b"ok"
        with anyio.fail_after(5):
            await server.done.wait()
        second = await client.get(server.url())
        stats = transport.statistics()
    assert second.content == b"ok"
    assert requests_seen == 2
    assert stats.stale_replaced == 1
    assert stats.connects == 2
    assert stats.active == 0


async def test_connection_dying_after_the_request_is_not_resent(parser: ParserName) -> None:
    """A request whose connection dies before any response byte fails; it is never re-sent."""
    requests_seen = 0

    async def answer_once_then_drop(peer: Peer) -> None:
        nonlocal requests_seen
        while await peer.read_request() is not None:
            requests_seen += 1
            if requests_seen == 2:
                return
            await peer.send(OK)

    async with (
        raw_server(answer_once_then_drop) as server,
        FastTransport(parser=parser) as transport,
        httpx2.AsyncClient(transport=transport) as client,
    ):
        await client.get(server.url())
        with pytest.raises(httpx2.RemoteProtocolError):
            await client.post(server.url(), json={"pay": 1})
        stats = transport.statistics()
    assert requests_seen == 2
    assert stats.connects == 1
    assert stats.active == 0


@pytest.mark.virtual_time
async def test_idle_connection_expires(parser: ParserName) -> None:
    """An idle connection is reused within keepalive_expiry and replaced after it."""
    async with (
        raw_server(answer_all) as server,
        FastTransport(parser=parser, keepalive_expiry=5.0) as transport,
        httpx2.AsyncClient(transport=transport) as client,
    ):
        await client.get(server.url())
        await anyio.sleep(4)
        await client.get(server.url())
        kept = transport.statistics()
        await anyio.sleep(6)
        await client.get(server.url())
        stats = transport.statistics()
    assert (kept.connects, kept.expired) == (1, 0)
    assert (stats.connects, stats.expired) == (2, 1)
    assert stats.open == 1


async def answer_all(peer: Peer) -> None:
    """Answer every request with a short 200."""
    await answer(peer, OK)


class Holder:
    """A server whose ``/held`` response stops mid-body until :meth:`finish` is called."""

    def __init__(self) -> None:
        self.order: list[bytes] = []
        self._go = anyio.Event()

    def finish(self) -> None:
        """Let the held response complete."""
        self._go.set()

    async def __call__(self, peer: Peer) -> None:
        while (request := await peer.read_request()) is not None:
            self.order.append(request.target)
            if request.target == b"/held":
                await peer.send(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nhe")
                await self._go.wait()
                await peer.send(b"ld")
            else:
                await peer.send(OK)


async def test_waiters_are_served_first_come_first_served(parser: ParserName) -> None:
    """With the pool full, waiting requests get the connection in the order they asked."""
    holder = Holder()
    async with (
        raw_server(holder) as server,
        FastTransport(parser=parser, max_connections=1) as transport,
        httpx2.AsyncClient(transport=transport) as client,
    ):
        finished: list[str] = []

        async def fetch(name: str) -> None:
            await client.get(server.url(f"/{name}"))
            finished.append(name)

        async with (
            client.stream("GET", server.url("/held")) as held,
            anyio.create_task_group() as tg,
        ):
            for i, name in enumerate(["b", "c", "d"]):
                tg.start_soon(fetch, name)
                await wait_until(lambda i=i: transport.statistics().waiting == i + 1)
            holder.finish()
            assert await held.aread() == b"held"
        stats = transport.statistics()
    assert holder.order == [b"/held", b"/b", b"/c", b"/d"]
    assert finished == ["b", "c", "d"]
    assert stats.connects == 1


async def test_idle_connection_elsewhere_is_evicted_for_a_new_origin(parser: ParserName) -> None:
    """At the bound, an idle connection to another origin is closed to make room."""
    async with (
        raw_server(answer_all) as first,
        raw_server(answer_all) as second,
        FastTransport(parser=parser, max_connections=1) as transport,
        httpx2.AsyncClient(transport=transport) as client,
    ):
        await client.get(first.url())
        await client.get(second.url())
        with anyio.fail_after(5):
            await first.done.wait()
        stats = transport.statistics()
    assert stats.evicted == 1
    assert stats.open == 1
    assert [o.open for o in stats.origins] == [0, 1]


@pytest.mark.parametrize("phase", ["headers", "body"])
async def test_cancellation_mid_request_discards_the_connection(
    parser: ParserName, phase: str
) -> None:
    """Cancelling while waiting for headers or body closes the connection; nothing stays active."""
    got_request = anyio.Event()
    closed_by_client = anyio.Event()

    async def stall(peer: Peer) -> None:
        await peer.read_request()
        if phase == "body":
            await peer.send(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial")
        got_request.set()
        if await peer.at_eof():
            closed_by_client.set()

    async with (
        raw_server(stall) as server,
        FastTransport(parser=parser) as transport,
        httpx2.AsyncClient(transport=transport) as client,
    ):
        async with anyio.create_task_group() as tg:

            async def request() -> None:
                await client.get(server.url())
                raise AssertionError("the request should have been cancelled")

            tg.start_soon(request)
            with anyio.fail_after(5):
                await got_request.wait()
            tg.cancel_scope.cancel()
        with anyio.fail_after(5):
            await closed_by_client.wait()
        stats = transport.statistics()
    assert (stats.active, stats.open, stats.discarded) == (0, 0, 1)


async def test_cancellation_while_waiting_for_a_slot(parser: ParserName) -> None:
    """A request cancelled in the pool queue leaves it; the pool serves the next one normally."""
    holder = Holder()
    async with (
        raw_server(holder) as server,
        FastTransport(parser=parser, max_connections=1) as transport,
        httpx2.AsyncClient(transport=transport) as client,
    ):
        async with client.stream("GET", server.url("/held")) as held:
            with anyio.CancelScope() as scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(client.get, server.url("/cancelled"))
                    await wait_until(lambda: transport.statistics().waiting == 1)
                    scope.cancel()
            assert transport.statistics().waiting == 0
            holder.finish()
            await held.aread()
        after = await client.get(server.url("/after"))
        stats = transport.statistics()
    assert after.content == b"ok"
    assert holder.order == [b"/held", b"/after"]
    assert (stats.active, stats.waiting, stats.connects) == (0, 0, 1)


async def test_aclose_closes_idle_connections(parser: ParserName) -> None:
    """aclose closes idle connections (the server sees EOF) and refuses later requests."""
    eof = anyio.Event()

    async def watch(peer: Peer) -> None:
        await answer(peer, OK, times=1)
        if await peer.at_eof():
            eof.set()

    transport = FastTransport(parser=parser)
    async with raw_server(watch) as server:
        async with httpx2.AsyncClient(transport=transport) as client:
            await client.get(server.url())
        with anyio.fail_after(5):
            await eof.wait()
        stats = transport.statistics()
        with pytest.raises(RuntimeError, match="closed"):
            await transport.handle_async_request(httpx2.Request("GET", server.url()))
    assert (stats.open, stats.idle) == (0, 0)
    assert "closed" in repr(transport)


async def test_aclose_breaks_a_response_still_streaming(parser: ParserName) -> None:
    """Closing the transport under a streaming response makes its next read fail cleanly."""

    async def partial(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc")
        await peer.at_eof()

    async with raw_server(partial) as server:
        transport = FastTransport(parser=parser)
        request = httpx2.Request("GET", server.url())
        response = await transport.handle_async_request(request)
        await transport.aclose()
        with pytest.raises(httpx2.ReadError):
            await response.aread()
        await response.aclose()
        stats = transport.statistics()
    assert (stats.active, stats.open) == (0, 0)


@pytest.mark.parametrize("seed", [1, 2])
async def test_random_faults_leave_the_pool_clean(parser: ParserName, seed: int) -> None:
    """Under a random mix of answers, resets, early closes and stalls, every request ends in a
    response or an httpx2 transport error, and the pool ends with nothing active or waiting."""
    rng = random.Random(seed)
    behaviours = ["ok", "ok", "ok", "close-after", "close-before", "reset", "truncate", "stall"]

    async def chaotic(peer: Peer) -> None:
        while await peer.read_request() is not None:
            behaviour = rng.choice(behaviours)
            if behaviour == "ok":
                await peer.send(OK)
            elif behaviour == "close-after":
                await peer.send(http_response(200, b"ok", [("connection", "close")]))
                return
            elif behaviour == "close-before":
                return
            elif behaviour == "reset":
                await peer.reset()
                return
            elif behaviour == "truncate":
                await peer.send(b"HTTP/1.1 200 OK\r\ncontent-length: 50\r\n\r\nshort")
                return
            else:
                await anyio.sleep_forever()

    outcomes: list[str] = []
    async with (
        raw_server(chaotic) as server,
        FastTransport(parser=parser, max_connections=4) as transport,
        httpx2.AsyncClient(transport=transport, timeout=httpx2.Timeout(0.2)) as client,
    ):

        async def one(i: int) -> None:
            try:
                response = await client.post(server.url(f"/{i}"), json={"i": i})
            except httpx2.TransportError as exc:
                outcomes.append(type(exc).__name__)
            else:
                assert response.content == b"ok"
                outcomes.append("ok")
            peak.append(transport.statistics().open)

        peak: list[int] = []
        async with anyio.create_task_group() as tg:
            for i in range(40):
                tg.start_soon(one, i)
        stats = transport.statistics()
    assert len(outcomes) == 40
    assert "ok" in outcomes
    assert max(peak) <= 4
    assert (stats.active, stats.waiting) == (0, 0)
    assert stats.open == stats.idle <= 4
