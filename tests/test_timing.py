"""Timing tests in virtual time: Retry-After, deadlines and per-attempt timeouts."""

from __future__ import annotations

import anyio
import pytest

import corral
from corral.providers import OpenAI

from .scripted import ScriptedServer

pytestmark = [pytest.mark.anyio, pytest.mark.virtual_time]


def req(i: int) -> corral.ChatRequest:
    return corral.ChatRequest("gpt-4o-mini", [{"role": "user", "content": "x"}], id=f"q{i}")


def client_for(server: ScriptedServer, **kwargs: object) -> corral.Client:
    return corral.Client(
        OpenAI("http://127.0.0.1:9/v1", api_key="k"),
        http_client=server.client(),
        **kwargs,  # type: ignore[arg-type]
    )


async def test_retry_after_becomes_the_wait() -> None:
    """A 429 with Retry-After: 7 is retried after 7 seconds, not after the backoff."""
    server = ScriptedServer({"q1": [429, 200]}, retry_after="7")
    policy = corral.RetryPolicy(attempts=3, wait_initial=0.1, wait_jitter=0)
    async with client_for(server, retry=policy) as client:
        start = anyio.current_time()
        result = await client.complete(req(1))
        elapsed = anyio.current_time() - start
    assert result.attempts == 2
    assert 7.0 <= elapsed < 7.01
    assert result.latency_s == pytest.approx(elapsed, abs=1e-3)


async def test_retry_after_ms_wins_over_retry_after() -> None:
    """retry-after-ms is honoured in preference to Retry-After."""

    def answer(request):  # type: ignore[no-untyped-def]
        import httpx2

        return httpx2.Response(
            503, headers={"retry-after-ms": "1500", "retry-after": "60"}, json={}
        )

    server = ScriptedServer({"q1": [answer, 200]})
    async with client_for(server, retry=corral.RetryPolicy(attempts=2)) as client:
        start = anyio.current_time()
        await client.complete(req(1))
    assert 1.5 <= anyio.current_time() - start < 1.51


async def test_backoff_is_exponential_without_hints() -> None:
    """Without a hint, waits follow the exponential backoff of the policy."""
    server = ScriptedServer({"q1": [500, 500, 500, 200]})
    policy = corral.RetryPolicy(attempts=4, wait_initial=1, wait_exp_base=2, wait_jitter=0)
    async with client_for(server, retry=policy) as client:
        start = anyio.current_time()
        result = await client.complete(req(1))
    assert result.attempts == 4
    assert anyio.current_time() - start == pytest.approx(1 + 2 + 4, abs=0.01)


async def test_deadline_beats_a_long_retry_after() -> None:
    """A Retry-After beyond the deadline fails at once, as rate_limited, with the hint recorded."""
    server = ScriptedServer(default=lambda rid, n: 429, retry_after="30")
    policy = corral.RetryPolicy(attempts=5, timeout=10)
    async with client_for(server, retry=policy) as client:
        start = anyio.current_time()
        batch = await client.run([req(1)])
        elapsed = anyio.current_time() - start
    (result,) = batch.results
    assert isinstance(result, corral.Failure)
    assert result.error.kind is corral.ErrorKind.RATE_LIMITED
    assert result.error.retry_after_s == 30
    assert "deadline" in result.error.message
    assert result.attempts == 1 == server.hits["q1"]
    assert elapsed < 0.01


async def test_max_retry_after_caps_the_wait() -> None:
    """A hint longer than max_retry_after fails at once without sleeping."""
    server = ScriptedServer(default=lambda rid, n: 429, retry_after="121")
    async with client_for(server, retry=corral.RetryPolicy(timeout=None)) as client:
        start = anyio.current_time()
        with pytest.raises(corral.RateLimitedError, match="max_retry_after"):
            await client.complete(req(1))
    assert anyio.current_time() - start < 0.01
    assert server.hits["q1"] == 1


async def test_deadline_stops_backoff_in_time() -> None:
    """The per-request deadline ends retries, as a timeout naming the last error."""
    server = ScriptedServer(default=lambda rid, n: 500)
    policy = corral.RetryPolicy(attempts=50, timeout=20, wait_initial=3, wait_max=3, wait_jitter=0)
    async with client_for(server, retry=policy) as client:
        start = anyio.current_time()
        batch = await client.run([req(1)])
        elapsed = anyio.current_time() - start
    (result,) = batch.results
    assert isinstance(result, corral.Failure)
    assert result.error.kind is corral.ErrorKind.TIMEOUT
    assert "scripted 500" in result.error.message
    assert elapsed == pytest.approx(20, abs=0.01)
    assert result.attempts == server.hits["q1"] == 7  # at 0, 3, 6, ..., 18


async def test_request_timeout_bounds_each_attempt() -> None:
    """An attempt that never answers times out after request_timeout and is retried."""
    server = ScriptedServer({"q1": ["stall", 200]})
    policy = corral.RetryPolicy(attempts=3, wait_initial=1, wait_jitter=0)
    async with client_for(server, retry=policy, request_timeout=5) as client:
        start = anyio.current_time()
        result = await client.complete(req(1))
    assert result.attempts == 2
    assert anyio.current_time() - start == pytest.approx(5 + 1, abs=0.01)
    assert server.in_flight == 0
