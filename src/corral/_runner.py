"""The admission loop: take a concurrency token, then start a task; deliver results.

Acquire-then-spawn keeps at most ``max_concurrency`` request tasks alive at any moment, however
many requests the input holds, so memory is bounded by concurrency, not by input size. The input is
read one item at a time, only when a token is free.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Iterator
from typing import Any, Generic, TypeVar

import anyio

__all__ = ["LazyInput", "admit"]

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
    deliver: Callable[[int, R], Awaitable[None]],
) -> int:
    """Run *execute* on every item with at most ``limiter.total_tokens`` running at once.

    Each item's token is taken before its task starts and given back after its result was
    delivered, so a slow consumer slows admission down instead of piling results up.

    Returns the number of items admitted. An exception raised while reading or checking the
    input cancels the work in flight and propagates unwrapped.

    Args:
        items: The input, read lazily.
        limiter: The concurrency limit.
        execute: Turns one item into its result; must not raise for expected failures.
        deliver: Receives ``(index, result)`` for each item, in completion order.
    """

    async def work(index: int, item: T, borrower: object) -> None:
        try:
            result = await execute(item)
            await deliver(index, result)
        finally:
            limiter.release_on_behalf_of(borrower)

    count = 0
    input_error: Exception | None = None
    try:
        async with anyio.create_task_group() as tg:
            while True:
                # The token comes first: an item is read only when it can start at once.
                borrower = object()
                await limiter.acquire_on_behalf_of(borrower)
                try:
                    item = await items.__anext__()
                except StopAsyncIteration:
                    limiter.release_on_behalf_of(borrower)
                    break
                except Exception as exc:
                    # A bad input item is the caller's bug: stop everything and raise it as is,
                    # not wrapped in the task group's ExceptionGroup.
                    limiter.release_on_behalf_of(borrower)
                    input_error = exc
                    tg.cancel_scope.cancel()
                    break
                except BaseException:
                    limiter.release_on_behalf_of(borrower)
                    raise
                tg.start_soon(work, count, item, borrower)
                count += 1
    finally:
        await items.aclose()
    if input_error is not None:
        raise input_error
    return count
