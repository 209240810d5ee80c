"""The admission loop: take a concurrency token, then an item; deliver results.

Acquire-then-read keeps at most ``max_concurrency`` items in flight at any moment, however many
requests the input holds, so memory is bounded by concurrency, not by input size. The input is
read one item at a time, only when a token is held for it. Workers are started as tokens are
taken and each runs items one after another, so a batch costs one task per slot, not per item.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Iterator
from typing import Any, Final, Generic, TypeVar

import anyio
import anyio.abc
import anyio.lowlevel

__all__ = ["LazyInput", "admit"]

# Items a worker takes in a row before it passes through the event loop on purpose.
_YIELD_EVERY: Final = 64

T = TypeVar("T")
R = TypeVar("R")


class LazyInput(Generic[T]):
    """Read a sync or async iterable one item at a time, checking each item as it is read.

    A class rather than an async generator: generators left unfinished by a cancellation are
    finalised by the garbage collector, out of order and with a warning.

    Args:
        items: Any iterable or async iterable.
        check: Called with each item before it is handed out; raise to refuse it.
    """

    __slots__ = ("_async", "_check", "_sync")

    def __init__(self, items: Iterable[T] | AsyncIterable[T], check: Callable[[T], Any]) -> None:
        self._check = check
        self._sync: Iterator[T] | None = None
        self._async: AsyncIterator[T] | None = None
        if isinstance(items, AsyncIterable):
            self._async = aiter(items)
        elif isinstance(items, Iterable) and not isinstance(items, str | bytes):
            self._sync = iter(items)
        else:
            raise TypeError(
                f"requests must be an iterable or an async iterable of requests, "
                f"got {type(items).__name__}"
            )

    def __repr__(self) -> str:
        source = self._sync if self._sync is not None else self._async
        return f"<LazyInput from {type(source).__name__}>"

    @property
    def is_async(self) -> bool:
        """Whether the source is an async iterable (its reads may await)."""
        return self._async is not None

    def __aiter__(self) -> LazyInput[T]:
        return self

    async def __anext__(self) -> T:
        if self._sync is not None:
            try:
                item = next(self._sync)
            except StopIteration:
                raise StopAsyncIteration from None
        else:
            assert self._async is not None
            item = await self._async.__anext__()
        self._check(item)
        return item

    async def aclose(self) -> None:
        """Close the underlying async generator, if the input is one."""
        closer = getattr(self._async, "aclose", None)
        if closer is not None:
            await closer()


async def admit(
    items: LazyInput[T],
    limiter: anyio.CapacityLimiter,
    execute: Callable[[T], Awaitable[R]],
    deliver: Callable[[int, R], Awaitable[None] | None],
    *,
    elastic: bool = True,
) -> int:
    """Run *execute* on every item with at most ``limiter.total_tokens`` running at once.

    A worker takes a token, then an item; after delivering its result it keeps the token and
    takes the next item, so a batch starts one task per concurrency slot, not one per item.
    A worker hands its token back when the input is done or when the limit shrank below the
    tokens in use (adaptive concurrency). An item is read only when a token is held for it, and
    the next one only after the last result was delivered, so a slow consumer slows admission
    down instead of piling results up.

    Returns the number of items admitted. An exception raised while reading or checking the
    input cancels the work in flight and propagates unwrapped.

    Args:
        items: The input, read lazily.
        limiter: The concurrency limit.
        execute: Turns one item into its result; must not raise for expected failures.
        deliver: Receives ``(index, result)`` for each item, in completion order; it may
            return an awaitable (to push back on the workers) or None.
        elastic: Whether ``limiter.total_tokens`` may shrink while the batch runs (adaptive
            concurrency); if not, workers skip checking it after every item.
    """
    count = 0
    exhausted = False
    input_error: Exception | None = None
    # An async source may await inside __anext__, and a second reader would then find its
    # generator already running: async reads take turns. A sync source never awaits.
    read_lock = anyio.Lock() if items.is_async else None

    async def read(tg: anyio.abc.TaskGroup) -> tuple[int, T] | None:
        nonlocal count, exhausted, input_error
        if exhausted:
            return None
        try:
            if read_lock is None:
                item = await items.__anext__()
            else:
                async with read_lock:
                    if exhausted:
                        return None
                    item = await items.__anext__()
        except StopAsyncIteration:
            exhausted = True
            return None
        except Exception as exc:
            # A bad input item is the caller's bug: stop everything and raise it as is, not
            # wrapped in the task group's ExceptionGroup.
            exhausted = True
            input_error = exc
            tg.cancel_scope.cancel()
            return None
        index = count
        count += 1
        return index, item

    async def work(index: int, item: T, borrower: object, tg: anyio.abc.TaskGroup) -> None:
        streak = 0
        try:
            while True:
                result = await execute(item)
                pending = deliver(index, result)
                if pending is not None:
                    await pending
                if elastic and limiter.borrowed_tokens > limiter.total_tokens:
                    return
                streak += 1
                if streak == _YIELD_EVERY:
                    # Items that fail before any I/O never reach the event loop: let the
                    # other tasks (and a cancellation) in now and then.
                    streak = 0
                    await anyio.lowlevel.checkpoint()
                taken = await read(tg)
                if taken is None:
                    return
                index, item = taken
        finally:
            limiter.release_on_behalf_of(borrower)

    try:
        async with anyio.create_task_group() as tg:
            while not exhausted:
                # The token comes first: an item is read only when it can start at once.
                borrower = object()
                try:
                    # A free slot is taken without a trip through the event loop: when every
                    # slot is busy, the wait below is the checkpoint that lets others run.
                    limiter.acquire_on_behalf_of_nowait(borrower)
                except anyio.WouldBlock:
                    await limiter.acquire_on_behalf_of(borrower)
                try:
                    taken = await read(tg)
                except BaseException:
                    limiter.release_on_behalf_of(borrower)
                    raise
                if taken is None:
                    limiter.release_on_behalf_of(borrower)
                    break
                tg.start_soon(work, *taken, borrower, tg)
    finally:
        await items.aclose()
    if input_error is not None:
        raise input_error
    return count
