"""The asyncio mode chosen by CORRAL_ASYNCIO_MODE reaches every asyncio test, virtual time too."""

from __future__ import annotations

import asyncio

import pytest
import sniffio

from .conftest import ASYNCIO_MODE

pytestmark = pytest.mark.anyio


def _check_running_loop() -> None:
    """Assert that the running asyncio loop runs in the selected mode."""
    loop = asyncio.get_running_loop()
    assert loop.get_debug() is (ASYNCIO_MODE == "debug")
    eager = getattr(asyncio, "eager_task_factory", None)
    factory = loop.get_task_factory()
    if ASYNCIO_MODE == "eager":
        assert factory is eager
    else:
        assert factory is None or factory is not eager


async def test_mode_applies_on_the_real_clock() -> None:
    """An unmarked asyncio test runs its loop in the selected mode."""
    if sniffio.current_async_library() != "asyncio":
        pytest.skip("asyncio modes apply to asyncio only")
    _check_running_loop()


@pytest.mark.virtual_time
async def test_mode_applies_in_virtual_time() -> None:
    """A virtual-time asyncio test keeps its virtual clock and runs in the selected mode."""
    if sniffio.current_async_library() != "asyncio":
        pytest.skip("asyncio modes apply to asyncio only")
    from corral.testing import VirtualTimeEventLoop

    assert isinstance(asyncio.get_running_loop(), VirtualTimeEventLoop)
    _check_running_loop()
