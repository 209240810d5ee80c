"""Memory stays bounded by concurrency, not by the number of requests."""

from __future__ import annotations

import os
import tracemalloc
from collections.abc import Iterator

import anyio
import anyio.lowlevel
import pytest

import corral
from corral._runner import LazyInput, admit

pytestmark = pytest.mark.anyio


def lazy_requests(n: int) -> Iterator[corral.ChatRequest]:
    for i in range(n):
        yield corral.ChatRequest("m", [corral.Message("user", f"question {i}")], id=f"q{i}")


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def run_admission(n: int, sample_every: int = 0) -> tuple[int, int]:
    """Admit n lazy requests at concurrency 64; return (results, max RSS growth in bytes)."""
    limiter = anyio.CapacityLimiter(64)
    delivered = 0
    baseline = rss_bytes() if sample_every else 0
    growth = 0

    async def execute(request: corral.ChatRequest) -> str:
        await anyio.lowlevel.checkpoint()
        return request.id

    async def deliver(index: int, result: str) -> None:
        nonlocal delivered, growth
        delivered += 1
        if sample_every and delivered % sample_every == 0:
            growth = max(growth, rss_bytes() - baseline)

    await admit(LazyInput(lazy_requests(n), lambda r: None), limiter, execute, deliver)
    return delivered, growth


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc")
async def test_200k_lazy_requests_run_in_bounded_memory() -> None:
    """200,000 lazily generated requests go through admission with flat memory."""
    delivered, growth = await run_admission(200_000, sample_every=10_000)
    assert delivered == 200_000
    # Holding 200k requests (or 200k tasks) would cost hundreds of MB.
    assert growth < 16 * 1024 * 1024, f"RSS grew by {growth / 1e6:.1f} MB"


async def test_traced_peak_does_not_grow_with_input_size() -> None:
    """tracemalloc's peak for 10x more requests stays close to the smaller run's."""
    await run_admission(1_000)  # warm caches (task machinery, code objects, loop structures)
    tracemalloc.start()
    try:
        await run_admission(1_000)
        _, small = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        await run_admission(10_000)
        _, large = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # The slack covers the event loop's own bookkeeping, which moves by tens of kB with timing;
    # keeping even 48 bytes per request would add 430 kB here.
    assert large < small * 1.5 + 65_536, (small, large)
