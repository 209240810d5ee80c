"""A stream kept open by keep-alive comments alone fails as ``timeout`` after request_timeout.

Against :class:`KeepAliveServer` on loopback (one delta, then ``: ping`` every second), in
virtual time on asyncio and trio, through ``complete_stream`` and ``run(stream=True)``.
"""

from __future__ import annotations

import anyio
import pytest

import corral
from corral.providers import OpenAI
from corral.testing import serve

from .keepalive_server import KeepAliveServer

pytestmark = [pytest.mark.anyio, pytest.mark.virtual_time]

REQUEST_TIMEOUT = 3.0


def chat() -> corral.ChatRequest:
    """Return a small streamed chat request."""
    return corral.ChatRequest(
        "gpt-4o-mini", [{"role": "user", "content": "Hi"}], max_tokens=16, id="k1"
    )


async def test_complete_stream_fails_when_only_comments_come() -> None:
    """``complete_stream`` raises a timeout once no event came for request_timeout."""
    server = KeepAliveServer(interval=1.0)
    async with serve(server) as running:
        provider = OpenAI(running.url + "/v1", api_key="sk-test")
        async with corral.Client(provider, request_timeout=REQUEST_TIMEOUT) as client:
            deltas: list[str] = []
            began = anyio.current_time()
            with anyio.fail_after(25), pytest.raises(corral.RequestTimeoutError) as raised:
                async with client.complete_stream(chat()) as stream:
                    async for text in stream:
                        deltas.append(text)
            waited = anyio.current_time() - began
    assert deltas == ["Hi"]
    assert raised.value.info.kind is corral.ErrorKind.TIMEOUT
    assert "no stream event" in raised.value.info.message
    # The comments kept coming, and did not count as events.
    assert server.comments >= 2
    assert REQUEST_TIMEOUT <= waited <= REQUEST_TIMEOUT + 1


async def test_a_streamed_run_fails_when_only_comments_come() -> None:
    """``run(stream=True)`` records a timeout failure once no event came for request_timeout."""
    server = KeepAliveServer(interval=1.0)
    async with serve(server) as running:
        provider = OpenAI(running.url + "/v1", api_key="sk-test")
        async with corral.Client(provider, request_timeout=REQUEST_TIMEOUT) as client:
            with anyio.fail_after(25):
                batch = await client.run([chat()], stream=True)
    (failure,) = batch.results
    assert isinstance(failure, corral.Failure)
    assert failure.error.kind is corral.ErrorKind.TIMEOUT
    # After its first delta a stream is never retried.
    assert failure.attempts == 1
    assert REQUEST_TIMEOUT <= failure.latency_s <= REQUEST_TIMEOUT + 1
