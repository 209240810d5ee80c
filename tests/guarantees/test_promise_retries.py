"""Promise: retries only for the documented retryable set; Retry-After honoured within the caps;
the deadline always wins.

The retryable set is written here as ``docs/concepts.md`` documents it, and every status from
300 to 599 (and every way a connection can fail) is sent through the real mock server for each
provider, counting the server's hits. The timing promises are a property test in virtual time:
random scripts of hinted and unhinted failures, stalls and successes, under random policies.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from typing import Any

import anyio
import httpx2
import pytest

import corral
from corral.providers import Anthropic, Gemini, OpenAI
from corral.testing import MockServer

pytestmark = pytest.mark.anyio

# docs/concepts.md, "Error kinds and retries": 408, 409, 429, every 5xx; timeouts; connections.
DOCUMENTED_RETRYABLE = {408, 409, 429} | set(range(500, 600))

PROVIDERS: dict[str, Callable[[], Any]] = {
    "openai": lambda: OpenAI("http://mock/v1", api_key="sk-test"),
    "anthropic": lambda: Anthropic("http://mock", api_key="sk-ant-test"),
    "gemini": lambda: Gemini("http://mock/v1beta", api_key="gm-test"),
}


def chat(i: int | str) -> corral.ChatRequest:
    return corral.ChatRequest(
        "gpt-4o-mini", [corral.Message("user", "What is 2 + 2?")], max_tokens=8, id=f"q{i}"
    )


# The statuses Anthropic and Gemini document. Their adapters let a known error type in the body
# decide over the status, and the mock answers an undocumented 4xx with a server-error type.
DOCUMENTED_STATUSES = [400, 401, 403, 404, 408, 409, 429, 500, 502, 503, 504, 529]
STATUSES = {
    "openai": list(range(400, 600)),
    "anthropic": DOCUMENTED_STATUSES,
    "gemini": DOCUMENTED_STATUSES,
}


@pytest.mark.parametrize("name", sorted(PROVIDERS))
async def test_every_status_is_retried_exactly_when_the_docs_say(
    name: str, no_backoff: None
) -> None:
    """Each error status (all of 400-599 for OpenAI) costs policy.attempts hits if documented
    retryable, else exactly one, on every provider against the real mock server."""
    attempts = 3
    wrong: dict[int, tuple[int, str]] = {}
    for status in STATUSES[name]:
        server = MockServer(error_rates={status: 1.0}, retry_after=0.0)
        http = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=server))
        client = corral.Client(
            PROVIDERS[name](),
            http_client=http,
            retry=corral.RetryPolicy(attempts=attempts),
            rate_limit=corral.RateLimit(learn_from_headers=False),
        )
        async with http, client:
            (result,) = (await client.run([chat(status)])).results
        assert isinstance(result, corral.Failure)
        expected = attempts if status in DOCUMENTED_RETRYABLE else 1
        if server.statistics().total_hits != expected or result.attempts != expected:
            wrong[status] = (server.statistics().total_hits, result.error.kind.value)
    assert wrong == {}, wrong


@pytest.mark.parametrize(
    ("outcome", "retried"),
    [
        ("redirect", False),
        ("reset", True),
        ("refused", True),
        ("stall", True),
        ("truncated", False),
        ("not-json", False),
        ("quota", False),
        ("should-retry-false", False),
        ("should-retry-true", True),
    ],
)
async def test_transport_failures_and_server_verdicts_follow_the_docs(
    outcome: str, retried: bool, no_backoff: None
) -> None:
    """Connection failures and timeouts are retried; redirects, bodies that are not the API's,
    spent quotas and x-should-retry: false are not; x-should-retry: true is."""
    hits = 0

    async def handler(request: httpx2.Request) -> httpx2.Response:
        nonlocal hits
        hits += 1
        if outcome == "redirect":
            return httpx2.Response(302, headers={"location": "http://127.0.0.2/v1"})
        if outcome == "reset":
            raise httpx2.ReadError("connection reset by peer", request=request)
        if outcome == "refused":
            raise httpx2.ConnectError("connection refused", request=request)
        if outcome == "stall":
            await anyio.sleep_forever()
        if outcome == "truncated":
            return httpx2.Response(200, text='{"id": "chatcmpl-1", "choi')
        if outcome == "not-json":
            return httpx2.Response(200, text="<html>hello</html>")
        if outcome == "quota":
            body = {"error": {"message": "quota", "type": "x", "code": "insufficient_quota"}}
            return httpx2.Response(429, json=body)
        verdict = outcome.rpartition("-")[2]
        return httpx2.Response(
            400 if verdict == "true" else 500, headers={"x-should-retry": verdict}, json={}
        )

    http = httpx2.AsyncClient(transport=httpx2.MockTransport(handler))
    client = corral.Client(
        OpenAI("http://mock/v1", api_key="sk-test"),
        http_client=http,
        request_timeout=0.05,
        retry=corral.RetryPolicy(attempts=3),
    )
    async with http, client:
        (result,) = (await client.run([chat(1)])).results
    assert isinstance(result, corral.Failure)
    assert (hits, result.attempts) == ((3, 3) if retried else (1, 1)), result.error


@pytest.mark.virtual_time
@pytest.mark.parametrize("seed", range(30))
async def test_hints_are_honoured_within_the_caps_and_the_deadline_always_wins(seed: int) -> None:
    """For random failure scripts and policies: a usable hint is the exact wait, a hint past
    max_retry_after or the deadline ends the request at once, and no request outlives its
    deadline."""
    rng = random.Random(seed)
    timeout = rng.choice([5.0, 20.0, 60.0, None])
    policy = corral.RetryPolicy(
        attempts=rng.randint(2, 8),
        timeout=timeout,
        wait_initial=rng.uniform(0.1, 2.0),
        wait_max=rng.uniform(2.0, 10.0),
        wait_jitter=rng.uniform(0.0, 1.0),
        max_retry_after=rng.choice([3.0, 30.0]),
    )
    request_timeout = rng.choice([2.0, 8.0])
    script = [rng.choice(["hint", "hint", "plain", "stall", "ok"]) for _ in range(policy.attempts)]
    hints = [round(rng.uniform(0.0, 45.0), 3) for _ in script]
    log: list[tuple[float, float, str, float]] = []  # arrival, answered, outcome, hint

    async def handler(request: httpx2.Request) -> httpx2.Response:
        n = len(log)
        outcome, hint = script[min(n, len(script) - 1)], hints[min(n, len(hints) - 1)]
        log.append((anyio.current_time(), anyio.current_time(), outcome, hint))
        await anyio.sleep(0.25)
        log[n] = (log[n][0], anyio.current_time(), outcome, hint)
        if outcome == "stall":
            await anyio.sleep_forever()
        if outcome == "ok":
            return httpx2.Response(
                200,
                json={
                    "id": "c",
                    "model": "gpt-4o-mini",
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": "4"},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
                },
            )
        if outcome == "hint":
            status = rng.choice([429, 503])
            return httpx2.Response(status, headers={"retry-after": f"{hint:g}"}, json={})
        return httpx2.Response(500, json={})

    http = httpx2.AsyncClient(transport=httpx2.MockTransport(handler))
    client = corral.Client(
        OpenAI("http://mock/v1", api_key="sk-test"),
        http_client=http,
        retry=policy,
        request_timeout=request_timeout,
        rate_limit=corral.RateLimit(learn_from_headers=False),
    )
    async with http, client:
        start = anyio.current_time()
        (result,) = (await client.run([chat(1)])).results
        end = anyio.current_time()
    deadline = start + timeout if timeout is not None else float("inf")
    # The deadline wins over everything: backoff, hints, stalls, attempts in flight.
    assert end <= deadline + 1e-6
    assert all(arrival < deadline for arrival, *_ in log)
    assert result.attempts == len(log)
    for (_, answered, outcome, hint), (arrival, *_) in itertools.pairwise(log):
        if outcome == "hint":
            # The next attempt came exactly when the server asked: not before, not backoff.
            assert hint <= policy.max_retry_after
            assert arrival - answered == pytest.approx(hint, abs=1e-6)
    if log and not result.ok and end < deadline - 1e-6 and len(log) < policy.attempts:
        # Stopped early and before the deadline: only a hint beyond a cap can do that.
        _, answered, outcome, hint = log[-1]
        assert outcome == "hint"
        assert hint > policy.max_retry_after or answered + hint >= deadline
        assert end - answered < 1e-6  # failed at once, without sleeping into the cap
