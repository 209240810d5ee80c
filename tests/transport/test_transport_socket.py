"""The bare-socket byte stream and the connect logic under FastTransport."""

from __future__ import annotations

import socket

import anyio
import anyio.abc
import anyio.lowlevel
import httpx2
import pytest

from corral._transport.fast import FastTransport
from corral._transport.sockets import SocketStream, connect_any, open_tcp_socket

from .transport_helpers import (
    Peer,
    answer,
    free_port,
    http_response,
    raw_server,
    unanswered_address,
)

pytestmark = pytest.mark.anyio


async def test_stream_round_trip_and_eof() -> None:
    """send, receive and send_eof move bytes both ways; the peer's close is EndOfStream."""

    async def echo_upper(peer: Peer) -> None:
        data = b""
        while not data.endswith(b"."):
            data += await peer.stream.receive()
        await peer.send(data.upper())

    async with raw_server(echo_upper) as server:
        stream = SocketStream(await open_tcp_socket("127.0.0.1", server.port))
        async with stream:
            assert stream.extra(anyio.abc.SocketAttribute.remote_address)[1] == server.port
            await stream.send(b"hello.")
            await stream.send_eof()
            assert await stream.receive() == b"HELLO."
            with pytest.raises(anyio.EndOfStream):
                await stream.receive()
            assert "fd=" in repr(stream)
        assert repr(stream) == "<SocketStream closed>"
        with pytest.raises(anyio.ClosedResourceError):
            await stream.receive()
        with pytest.raises(anyio.ClosedResourceError):
            await stream.send(b"x")


async def test_closing_wakes_a_blocked_reader() -> None:
    """Closing the stream while another task waits to read raises ClosedResourceError there."""

    async def silent(peer: Peer) -> None:
        await peer.at_eof()

    async with raw_server(silent) as server:
        stream = SocketStream(await open_tcp_socket("127.0.0.1", server.port))
        outcome: list[type[BaseException]] = []

        async def read() -> None:
            try:
                await stream.receive()
            except anyio.ClosedResourceError as exc:
                outcome.append(type(exc))

        async with anyio.create_task_group() as tg:
            tg.start_soon(read)
            await anyio.wait_all_tasks_blocked()
            await stream.aclose()
    assert outcome == [anyio.ClosedResourceError]


async def test_data_always_ready_still_lets_other_tasks_run() -> None:
    """Reading a backlog that never makes the reader wait still yields to other tasks."""
    reader, writer = socket.socketpair()
    with reader, writer:
        for sock, option in ((reader, socket.SO_RCVBUF), (writer, socket.SO_SNDBUF)):
            sock.setsockopt(socket.SOL_SOCKET, option, 4 * 1024 * 1024)
        writer.setblocking(False)
        backlog = 0
        # Queue as much as the buffers take, so that every receive finds data waiting.
        for _ in range(10_000):
            try:
                backlog += writer.send(b"f" * 65536)
            except BlockingIOError:
                break
        reader.setblocking(False)
        stream = SocketStream(reader)
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await anyio.lowlevel.checkpoint()

        received = reads = 0
        async with anyio.create_task_group() as tg:
            tg.start_soon(tick)
            while received < backlog:
                received += len(await stream.receive())
                reads += 1
            tg.cancel_scope.cancel()
    assert reads >= 48
    # One yield every 16 reads; the last may come too late for the ticker to see it.
    assert ticks >= reads // 16 - 1


class _CountingSocket(socket.socket):
    """A socket that counts its recv calls, and those that found nothing to read."""

    recvs = 0
    empty = 0

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        self.recvs += 1
        try:
            return super().recv(bufsize, flags)
        except BlockingIOError:
            self.empty += 1
            raise


async def test_a_receive_just_after_a_send_does_not_try_the_socket_first() -> None:
    """Right after a send, receive lets the loop run before its first recv, which would fail."""
    ours, theirs = socket.socketpair()
    counting = _CountingSocket(ours.family, ours.type, fileno=ours.detach())
    with counting, theirs:
        counting.setblocking(False)
        theirs.setblocking(False)
        stream = SocketStream(counting)

        async def answer_each_ping() -> None:
            while True:
                await anyio.wait_readable(theirs)
                theirs.send(theirs.recv(100).upper())

        rounds = 20
        async with anyio.create_task_group() as tg:
            tg.start_soon(answer_each_ping)
            await anyio.wait_all_tasks_blocked()
            for _ in range(rounds):
                await stream.send(b"ping")
                assert await stream.receive() == b"PING"
            tg.cancel_scope.cancel()
    # A recv at once after the send always comes up empty (the peer has not run yet); then the
    # loop runs, and the peer may or may not have answered by the next try. Trying the socket
    # first would mean at least one empty recv per round, and two in most.
    assert counting.recvs == rounds + counting.empty
    assert counting.empty <= rounds


async def test_refused_address_is_an_os_error() -> None:
    """Connecting where nothing listens raises OSError (ConnectError in the transport)."""
    with pytest.raises(OSError, match=r"refused|failed"):
        await open_tcp_socket("127.0.0.1", free_port())


async def test_host_name_is_resolved() -> None:
    """A host name resolves and connects (localhost here, to a 127.0.0.1 listener)."""
    async with (
        raw_server(lambda peer: answer(peer, http_response(200, b"named"))) as server,
        FastTransport() as transport,
        httpx2.AsyncClient(transport=transport) as client,
    ):
        response = await client.get(f"http://localhost:{server.port}/")
    assert response.content == b"named"


async def test_first_refused_address_falls_through_to_the_next() -> None:
    """Among several addresses, a refused one is skipped at once for the next."""
    async with raw_server(lambda peer: peer.at_eof()) as server:
        with anyio.fail_after(5):
            sock = await connect_any(
                [
                    (socket.AF_INET, ("127.0.0.1", free_port())),
                    (socket.AF_INET, ("127.0.0.1", server.port)),
                ]
            )
        with sock:
            assert sock.getpeername()[1] == server.port


@pytest.mark.virtual_time
async def test_hanging_address_is_raced_after_the_happy_eyeballs_delay() -> None:
    """An address that never answers is overtaken 250 ms later by the next one."""
    async with raw_server(lambda peer: peer.at_eof()) as server:
        with unanswered_address() as hanging:
            start = anyio.current_time()
            with anyio.fail_after(5):
                sock = await connect_any([hanging, (socket.AF_INET, ("127.0.0.1", server.port))])
            elapsed = anyio.current_time() - start
            with sock:
                assert sock.getpeername()[1] == server.port
    assert 0.25 <= elapsed < 1.0


async def test_all_addresses_failing_is_one_os_error() -> None:
    """When every attempt fails, one OSError names them all."""
    ports = [free_port(), free_port()]
    with pytest.raises(OSError, match="All connection attempts failed"):
        await connect_any([(socket.AF_INET, ("127.0.0.1", port)) for port in ports])
