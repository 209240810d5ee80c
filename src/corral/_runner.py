"""The admission loop: take a concurrency token, then start a task; deliver results.

Acquire-then-spawn keeps at most ``max_concurrency`` request tasks alive at any moment, however
many requests the input holds, so memory is bounded by concurrency, not by input size. The input is
read one item at a time, only when a token is free.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
from typing import TypeVar

import anyio

__all__ = ["admit", "aiterate"]

T = TypeVar("T")
R = TypeVar("R")


async def aiterate(items: Iterable[T] | AsyncIterable[T]) -> AsyncIterator[T]:
    """Iterate a sync or async iterable lazily, one item at a time.

    Args:
        items: Any iterable or async iterable.
    """
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield item
    elif isinstance(items, Iterable):
        for item in items:
            yield item
    else:
        raise TypeError(
            f"requests must be an iterable or an async iterable, got {type(items).__name__}"
        )


async def admit(
    items: Iterable[T] | AsyncIterable[T],
    limiter: anyio.CapacityLimiter,
    execute: Callable[[T], Awaitable[R]],
    deliver: Callable[[int, R], Awaitable[None]],
) -> int:
    """Run *execute* on every item with at most ``limiter.total_tokens`` running at once.

    Each item's token is taken before its task starts and given back after its result was
    delivered, so a slow consumer slows admission down instead of piling results up.

    Returns the number of items admitted.

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
    async with anyio.create_task_group() as tg:
        iterator = aiterate(items)
        try:
            async for item in iterator:
                borrower = object()
                await limiter.acquire_on_behalf_of(borrower)
                try:
                    tg.start_soon(work, count, item, borrower)
                except BaseException:
                    limiter.release_on_behalf_of(borrower)
                    raise
                count += 1
        finally:
            await iterator.aclose()  # type: ignore[attr-defined]
    return count
