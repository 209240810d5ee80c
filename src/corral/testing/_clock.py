"""Virtual time for tests on both anyio backends.

trio ships ``trio.testing.MockClock``; asyncio has nothing like it. :class:`VirtualTimeEventLoop`
fills that gap: an asyncio event loop whose clock only moves when the loop would otherwise sit
idle waiting for a timer, so an hour of ``anyio.sleep`` takes no wall time at all.
"""

from __future__ import annotations

# This module imports asyncio on purpose, unlike the rest of src/: it is a test helper *for*
# the asyncio backend and lives under corral.testing, which corral/__init__ never imports.
import asyncio
import selectors
from collections.abc import Callable
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any, Self, TypeVar, TypeVarTuple

import attrs

from .._errors import check_number

if TYPE_CHECKING:
    from _typeshed import FileDescriptorLike

_T = TypeVar("_T")
_Ts = TypeVarTuple("_Ts")

__all__ = ["VirtualTimeEventLoop", "VirtualTimeStatistics", "virtual_time_backend"]

_BACKENDS = ("asyncio", "trio")


@attrs.frozen
class VirtualTimeStatistics:
    """A snapshot of a virtual clock.

    Attributes:
        time: The current virtual time, in seconds since the loop was created.
        jumps: How many times the clock jumped forward, automatically or through ``jump()``.
        jumped: The total virtual time skipped by those jumps, in seconds.
    """

    time: float
    jumps: int
    jumped: float


class _VirtualClock:
    """Hold the virtual time that a loop and its selector share."""

    __slots__ = ("holds", "jumped", "jumps", "now")

    def __init__(self) -> None:
        self.now = 0.0
        self.jumps = 0
        self.jumped = 0.0
        # Jobs of the loop's own executor still running: while any is, time must not jump.
        self.holds = 0

    def release(self, _: object = None) -> None:
        self.holds -= 1

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.jumps += 1
        self.jumped += seconds


class _AutojumpSelector(selectors.BaseSelector):
    """Wrap a real selector so that waiting only for a timer jumps the clock instead.

    asyncio's loop asks its selector to wait until the earliest timer is due. This selector
    first polls the real one briefly (for ``autojump_threshold`` real seconds, usually zero):
    if any I/O is ready it is returned as usual; if not, nothing can happen before that timer,
    so the clock jumps straight to it. While an executor job of the loop runs, its result may
    arrive at any moment, so the selector waits for it in real time, up to the timer. With no
    timer at all (``timeout`` is None) it blocks on the real selector, as a normal loop would.
    """

    __slots__ = ("_clock", "_real", "_threshold")

    def __init__(
        self, real: selectors.BaseSelector, clock: _VirtualClock, threshold: float
    ) -> None:
        self._real = real
        self._clock = clock
        self._threshold = threshold

    def register(
        self, fileobj: FileDescriptorLike, events: int, data: Any = None
    ) -> selectors.SelectorKey:
        return self._real.register(fileobj, events, data)

    def unregister(self, fileobj: FileDescriptorLike) -> selectors.SelectorKey:
        return self._real.unregister(fileobj)

    def modify(
        self, fileobj: FileDescriptorLike, events: int, data: Any = None
    ) -> selectors.SelectorKey:
        return self._real.modify(fileobj, events, data)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None or timeout <= 0:
            return self._real.select(timeout)
        wait = timeout if self._clock.holds else min(timeout, self._threshold)
        events = self._real.select(wait)
        if not events:
            self._clock.advance(timeout)
        return events

    def close(self) -> None:
        self._real.close()

    def get_key(self, fileobj: FileDescriptorLike) -> selectors.SelectorKey:
        return self._real.get_key(fileobj)

    def get_map(self) -> Any:
        return self._real.get_map()


class VirtualTimeEventLoop(asyncio.SelectorEventLoop):
    """Run asyncio with a virtual clock that jumps over idle time, like trio's ``MockClock``.

    The clock starts at 0 and stands still while callbacks run. Whenever every task waits and
    the only thing that could wake one is a timer, the clock jumps to that timer at once. Real
    I/O still works: the loop polls its selector before each jump, so a socket that is ready
    is always served first. The class itself is a loop factory, so it can be given to
    ``asyncio.Runner(loop_factory=...)`` or to anyio's ``loop_factory`` backend option; see
    :func:`virtual_time_backend`.

    Work the loop hands to its own executor (``run_in_executor``, which asyncio uses for
    ``getaddrinfo``, and the executor's shutdown) holds the clock: while any runs, the loop
    waits for it in real time rather than jump. Other work outside the loop (anyio's worker
    threads, another process, a remote peer) does not, as with ``MockClock(autojump_threshold=0)``:
    raise ``autojump_threshold`` to give such work that much real time before each jump.

    Args:
        autojump_threshold: Real seconds to wait for I/O before jumping to the next timer.
    """

    def __new__(cls, *, autojump_threshold: float = 0.0) -> Self:
        # Checked before the loop exists: a half-built loop fails in BaseEventLoop.__del__.
        check_number(autojump_threshold, "autojump_threshold", minimum=0)
        return super().__new__(cls)

    def __init__(self, *, autojump_threshold: float = 0.0) -> None:
        self._virtual_clock = _VirtualClock()
        self._autojump_threshold = autojump_threshold
        super().__init__(
            _AutojumpSelector(selectors.DefaultSelector(), self._virtual_clock, autojump_threshold)
        )

    @property
    def autojump_threshold(self) -> float:
        """Real seconds the loop waits for I/O before it jumps to the next timer."""
        return self._autojump_threshold

    def time(self) -> float:
        """Return the virtual time, in seconds since the loop was created."""
        return self._virtual_clock.now

    def jump(self, seconds: float) -> None:
        """Move the virtual clock forward by hand; due timers fire on the next loop iteration.

        Args:
            seconds: How far to move the clock; must not be negative.
        """
        if seconds < 0:
            raise ValueError(f"time can only move forward, not by {seconds!r} seconds")
        self._virtual_clock.advance(seconds)

    def run_in_executor(
        self,
        executor: Executor | None,
        func: Callable[[*_Ts], _T],
        *args: *_Ts,
    ) -> asyncio.Future[_T]:
        """Run *func* in *executor*, holding the virtual clock until it is done.

        Args:
            executor: The executor; None for the loop's default one.
            func: The function to call in a worker thread.
            args: Its positional arguments.
        """
        future = super().run_in_executor(executor, func, *args)
        self._virtual_clock.holds += 1
        future.add_done_callback(self._virtual_clock.release)
        return future

    async def shutdown_default_executor(self, *args: Any) -> None:
        """Shut the default executor down, holding the virtual clock while its threads join.

        asyncio.Runner bounds this wait by a timeout in loop time; without the hold, the clock
        would jump straight past it and report threads that are merely still finishing.

        Args:
            args: Passed on unchanged (Python 3.12 and later take a timeout).
        """
        self._virtual_clock.holds += 1
        try:
            await super().shutdown_default_executor(*args)
        finally:
            self._virtual_clock.release()

    def statistics(self) -> VirtualTimeStatistics:
        """Return a snapshot of the virtual clock."""
        clock = self._virtual_clock
        return VirtualTimeStatistics(time=clock.now, jumps=clock.jumps, jumped=clock.jumped)

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} time={self._virtual_clock.now!r}"
            f" autojump_threshold={self._autojump_threshold!r}"
            f" running={self.is_running()} closed={self.is_closed()}>"
        )


def virtual_time_backend(
    backend: str, *, autojump_threshold: float = 0.0
) -> tuple[str, dict[str, Any]]:
    """Return an ``anyio_backend`` value that runs a test in virtual time on *backend*.

    The result plugs into the anyio pytest plugin: return it from an ``anyio_backend`` fixture.
    On trio it carries a fresh ``trio.testing.MockClock``; on asyncio a ``loop_factory`` that
    builds a :class:`VirtualTimeEventLoop`. Either way ``anyio.sleep(3600)`` returns at once while
    ``anyio.current_time()`` moves on by 3600. Call it once per test, so that every test
    starts with its own clock.

    Args:
        backend: ``"asyncio"`` or ``"trio"``.
        autojump_threshold: Real seconds to wait for I/O before jumping to the next timer.

    Raises:
        ValueError: If *backend* is not one of the two, or the threshold is negative.
        ImportError: If *backend* is ``"trio"`` and trio is not installed.
    """
    if autojump_threshold < 0:
        raise ValueError(f"autojump_threshold must be >= 0, not {autojump_threshold!r}")
    if backend == "asyncio":

        def loop_factory() -> VirtualTimeEventLoop:
            return VirtualTimeEventLoop(autojump_threshold=autojump_threshold)

        return "asyncio", {"loop_factory": loop_factory}
    if backend == "trio":
        try:
            from trio.testing import MockClock
        except ImportError as exc:
            raise ImportError(
                "virtual time on trio needs trio: install corral[trio]", name=exc.name
            ) from exc
        return "trio", {"clock": MockClock(autojump_threshold=autojump_threshold)}
    raise ValueError(f"backend must be one of {_BACKENDS!r}, not {backend!r}")
