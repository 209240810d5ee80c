"""Virtual time on asyncio and trio: the asyncio loop, the backend helper, the conftest marker."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import anyio
import pytest
from anyio.abc import SocketAttribute, SocketStream

from corral.testing import VirtualTimeEventLoop, VirtualTimeStatistics, virtual_time_backend

pytestmark = pytest.mark.anyio

# Wall-clock ceiling for work that takes hours of virtual time; generous for noisy CI machines.
_INSTANT = 2.0


def _clock_is_virtual(backend: str) -> bool:
    if backend == "asyncio":
        return isinstance(asyncio.get_running_loop(), VirtualTimeEventLoop)
    import trio.lowlevel
    import trio.testing

    return isinstance(trio.lowlevel.current_clock(), trio.testing.MockClock)


@pytest.mark.virtual_time
async def test_long_sleep_takes_no_wall_time(anyio_backend_name: str) -> None:
    """An hour of anyio.sleep returns at once while anyio.current_time() moves on by an hour."""
    wall_start = time.perf_counter()
    start = anyio.current_time()
    await anyio.sleep(3600)
    assert anyio.current_time() - start == pytest.approx(3600)
    assert time.perf_counter() - wall_start < _INSTANT


@pytest.mark.virtual_time
async def test_fail_after_fires_in_virtual_time(anyio_backend_name: str) -> None:
    """anyio.fail_after raises TimeoutError exactly when its virtual deadline passes."""
    wall_start = time.perf_counter()
    start = anyio.current_time()
    with pytest.raises(TimeoutError):
        with anyio.fail_after(30):
            await anyio.sleep(600)
    assert anyio.current_time() - start == pytest.approx(30)
    assert time.perf_counter() - wall_start < _INSTANT


@pytest.mark.virtual_time
async def test_sleepers_wake_in_deadline_order(anyio_backend_name: str) -> None:
    """Concurrent sleepers wake in the order of their deadlines, each at its own virtual time."""
    delays = [50.0, 10.0, 40.0, 0.5, 30.0, 20.0, 86_400.0 * 2]
    woke: list[tuple[float, float]] = []
    start = anyio.current_time()

    async def sleeper(delay: float) -> None:
        await anyio.sleep(delay)
        woke.append((delay, anyio.current_time() - start))

    async with anyio.create_task_group() as tg:
        for delay in delays:
            tg.start_soon(sleeper, delay)

    assert [delay for delay, _ in woke] == sorted(delays)
    for delay, at in woke:
        assert at == pytest.approx(delay)


@pytest.mark.virtual_time
async def test_loopback_io_is_served_before_time_jumps(anyio_backend_name: str) -> None:
    """Loopback TCP round trips complete under a pending timeout without time racing past it."""
    rounds = 20
    server_delay = 5.0

    async def echo(stream: SocketStream) -> None:
        async with stream:
            async for chunk in stream:
                # A slow server in virtual time: the client's deadline must still hold.
                await anyio.sleep(server_delay)
                await stream.send(chunk)

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(SocketAttribute.local_port)
    start = anyio.current_time()
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, echo)
        with anyio.fail_after(server_delay * rounds + 1):
            async with await anyio.connect_tcp("127.0.0.1", port) as client:
                for i in range(rounds):
                    payload = f"ping {i}".encode()
                    await client.send(payload)
                    assert await client.receive() == payload
        tg.cancel_scope.cancel()
    assert anyio.current_time() - start == pytest.approx(server_delay * rounds)


@pytest.mark.virtual_time
async def test_ready_io_wins_over_pending_timer(anyio_backend_name: str) -> None:
    """A socket that is already readable is served before the clock jumps to a pending timeout."""
    left, right = socket.socketpair()
    with left, right:
        left.setblocking(False)
        right.setblocking(False)
        for i in range(5):
            # The bytes are readable before the loop looks, and nothing else is runnable: only
            # the poll before the jump can see them.
            left.send(b"x")
            start = anyio.current_time()
            with anyio.fail_after(60):
                await anyio.wait_readable(right)
            assert right.recv(1) == b"x", i
            assert anyio.current_time() == start


@pytest.mark.parametrize("round_", [1, 2])
@pytest.mark.virtual_time
async def test_each_test_starts_its_own_clock(anyio_backend_name: str, round_: int) -> None:
    """Each virtual-time test gets a fresh clock at zero, whatever earlier tests slept."""
    assert anyio.current_time() == pytest.approx(0.0, abs=1.0)
    await anyio.sleep(1000 * round_)


@pytest.mark.virtual_time
async def test_marker_selects_virtual_clock(anyio_backend_name: str) -> None:
    """A test marked virtual_time runs on MockClock or VirtualTimeEventLoop."""
    assert _clock_is_virtual(anyio_backend_name)


async def test_unmarked_test_runs_on_real_clock(anyio_backend_name: str) -> None:
    """A test without the virtual_time marker runs on the backend's ordinary clock."""
    assert not _clock_is_virtual(anyio_backend_name)


@pytest.mark.virtual_time(autojump_threshold=0.25)
async def test_marker_passes_autojump_threshold(
    anyio_backend_name: str, anyio_backend_options: dict[str, Any]
) -> None:
    """Keyword arguments of the virtual_time marker reach the clock."""
    if anyio_backend_name == "asyncio":
        loop = asyncio.get_running_loop()
        assert isinstance(loop, VirtualTimeEventLoop)
        assert loop.autojump_threshold == 0.25
    else:
        assert anyio_backend_options["clock"].autojump_threshold == 0.25


def test_virtual_loop_runs_under_asyncio_runner() -> None:
    """VirtualTimeEventLoop works as an asyncio.Runner loop factory and closes its selector."""

    async def main() -> float:
        await asyncio.sleep(7200)
        return asyncio.get_running_loop().time()

    wall_start = time.perf_counter()
    with asyncio.Runner(loop_factory=VirtualTimeEventLoop) as runner:
        assert runner.run(main()) == pytest.approx(7200)
        loop = runner.get_loop()
        assert isinstance(loop, VirtualTimeEventLoop)
        stats = loop.statistics()
    assert time.perf_counter() - wall_start < _INSTANT
    assert loop.is_closed()
    assert stats.jumps >= 1
    assert stats.jumped == pytest.approx(7200)
    assert stats.time == pytest.approx(7200)


def test_executor_jobs_hold_the_clock() -> None:
    """A run_in_executor job (as getaddrinfo uses) finishes before a pending timeout can fire."""

    async def main() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        start = loop.time()
        async with asyncio.timeout(30):
            # Real work in a thread: with nothing else runnable, only the hold stops a jump.
            await loop.run_in_executor(None, time.sleep, 0.05)
            await loop.getaddrinfo("127.0.0.1", 80)
        after_jobs = loop.time() - start
        await asyncio.sleep(5)  # with no job left, time jumps again
        return after_jobs, loop.time() - start

    with asyncio.Runner(loop_factory=VirtualTimeEventLoop) as runner:
        after_jobs, after_sleep = runner.run(main())
    assert after_jobs == 0.0
    assert after_sleep == pytest.approx(5)


def test_runner_close_waits_for_executor_threads() -> None:
    """Closing the runner joins a busy executor in real time, not by jumping past its timeout."""
    finished: list[bool] = []

    def slow_job() -> None:
        time.sleep(0.2)
        finished.append(True)

    async def main() -> None:
        # Start a job and do not wait for it: the runner's shutdown must wait instead.
        asyncio.get_running_loop().run_in_executor(None, slow_job).cancel()

    # filterwarnings=error turns asyncio's "executor did not finish joining" warning into a failure.
    with asyncio.Runner(loop_factory=VirtualTimeEventLoop) as runner:
        runner.run(main())
    assert finished == [True]


def test_jump_moves_clock_and_fires_due_timers() -> None:
    """jump() moves the clock by hand; timers that fall due fire without any automatic jump."""
    loop = VirtualTimeEventLoop()
    try:
        fired: list[float] = []
        loop.call_later(10, lambda: fired.append(loop.time()))
        loop.jump(15)
        loop.call_soon(loop.stop)
        loop.run_forever()
        assert fired == [15.0]
        assert loop.statistics() == VirtualTimeStatistics(time=15.0, jumps=1, jumped=15.0)
        with pytest.raises(ValueError, match="forward"):
            loop.jump(-1)
    finally:
        loop.close()


def test_repr_shows_time_and_state() -> None:
    """The loop's repr shows its virtual time, threshold and state."""
    loop = VirtualTimeEventLoop(autojump_threshold=0.5)
    try:
        loop.jump(2.5)
        assert repr(loop) == (
            "<VirtualTimeEventLoop time=2.5 autojump_threshold=0.5 running=False closed=False>"
        )
    finally:
        loop.close()
    assert "closed=True" in repr(loop)


def test_negative_threshold_is_rejected() -> None:
    """A negative autojump threshold is refused by the loop and by the backend helper."""
    with pytest.raises(ValueError, match="autojump_threshold"):
        VirtualTimeEventLoop(autojump_threshold=-1)
    with pytest.raises(ValueError, match="autojump_threshold"):
        virtual_time_backend("asyncio", autojump_threshold=-0.1)


def test_unknown_backend_is_rejected() -> None:
    """virtual_time_backend refuses a backend it cannot drive."""
    with pytest.raises(ValueError, match="curio"):
        virtual_time_backend("curio")


def test_backend_helper_gives_fresh_loops() -> None:
    """Each asyncio loop from virtual_time_backend has its own clock, so tests never share one."""
    name, options = virtual_time_backend("asyncio")
    assert name == "asyncio"
    loops = [options["loop_factory"](), options["loop_factory"]()]
    try:
        assert loops[0] is not loops[1]
        loops[0].jump(5)
        assert loops[1].time() == 0.0
    finally:
        for loop in loops:
            loop.close()


def test_backend_helper_gives_fresh_mock_clocks() -> None:
    """Each call of virtual_time_backend("trio") builds a new MockClock that jumps at once."""
    trio_testing = pytest.importorskip("trio.testing")
    first = virtual_time_backend("trio")[1]["clock"]
    second = virtual_time_backend("trio")[1]["clock"]
    assert isinstance(first, trio_testing.MockClock)
    assert first is not second
    assert first.autojump_threshold == 0
