"""The mock server's rate-limit emulation (RPM/TPM, both algorithms) and its header formats."""

from __future__ import annotations

import datetime
import email.utils
from typing import Any

import anyio
import pytest

from corral.testing._mock.limits import google_duration, http_date, openai_duration, rfc3339
from corral.testing._mock.server import MockServer
from corral.testing._mock.text import count_mock_tokens

pytestmark = pytest.mark.anyio

OPENAI = {"authorization": "Bearer sk-test"}
ANTHROPIC = {"x-api-key": "sk-ant-test", "anthropic-version": "2023-06-01"}
GEMINI = {"x-goog-api-key": "AIza-test"}
ORIGIN = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


def _chat(max_tokens: int = 16, prompt: str = "What is 1 + 1?") -> dict[str, Any]:
    return {
        "model": "gpt-4o-mini",
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": prompt}],
    }


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.02, "20ms"),
        (0.0201, "21ms"),
        (1, "1s"),
        (1.5, "1.5s"),
        (59.993, "59.993s"),
        (360, "6m0s"),
        (3723.5, "1h2m3.5s"),
    ],
)
def test_openai_durations(seconds: float, text: str) -> None:
    """Waits are printed like OpenAI's reset headers (Go durations), rounded up to the ms."""
    assert openai_duration(seconds) == text


def test_google_duration_and_dates() -> None:
    """RetryInfo delays, RFC 3339 resets (rounded up) and HTTP dates have the APIs' formats."""
    assert google_duration(3) == "3s"
    assert google_duration(1.25) == "1.25s"
    moment = ORIGIN + datetime.timedelta(seconds=30, microseconds=1)
    assert rfc3339(moment) == "2026-01-01T00:00:31Z"
    assert rfc3339(ORIGIN) == "2026-01-01T00:00:00Z"
    assert email.utils.parsedate_to_datetime(http_date(moment)) == moment.replace(microsecond=0)


@pytest.mark.virtual_time
async def test_requests_per_minute_token_bucket(connect: Any) -> None:
    """A full bucket admits RPM requests at once; then a 429 says how long until one fits."""
    server = MockServer(requests_per_minute=60, clock_origin=ORIGIN)
    async with connect(server) as client:
        remaining = []
        for _ in range(60):
            response = await client.post("/v1/chat/completions", json=_chat(), headers=OPENAI)
            assert response.status_code == 200
            remaining.append(int(response.headers["x-ratelimit-remaining-requests"]))
        refused = await client.post("/v1/chat/completions", json=_chat(), headers=OPENAI)
        await anyio.sleep(1.0)
        admitted = await client.post("/v1/chat/completions", json=_chat(), headers=OPENAI)
    assert remaining == list(range(59, -1, -1))
    assert response.headers["x-ratelimit-limit-requests"] == "60"
    assert response.headers["x-ratelimit-reset-requests"] == "1m0s"
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert (error["type"], error["code"]) == ("requests", "rate_limit_exceeded")
    assert refused.headers["retry-after"] == "1"
    assert refused.headers["retry-after-ms"] == "1000"
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert admitted.status_code == 200


@pytest.mark.virtual_time
async def test_requests_per_minute_fixed_window(connect: Any) -> None:
    """A fixed window refuses until the minute ends, then admits a full minute's worth again."""
    server = MockServer(requests_per_minute=10, rate_limit_algorithm="fixed_window")
    async with connect(server) as client:
        start = anyio.current_time()
        statuses = [
            (await client.post("/v1/chat/completions", json=_chat(), headers=OPENAI)).status_code
            for _ in range(10)
        ]
        await anyio.sleep(start + 45 - anyio.current_time())
        refused = await client.post("/v1/chat/completions", json=_chat(), headers=OPENAI)
        await anyio.sleep(start + 60 - anyio.current_time())
        again = [
            (await client.post("/v1/chat/completions", json=_chat(), headers=OPENAI)).status_code
            for _ in range(10)
        ]
    assert statuses == [200] * 10
    assert refused.status_code == 429
    assert refused.headers["x-ratelimit-reset-requests"] == "15s"
    assert refused.headers["retry-after"] == "15"
    assert again == [200] * 10


@pytest.mark.virtual_time
@pytest.mark.parametrize("algorithm", ["token_bucket", "fixed_window"])
async def test_a_client_paced_at_the_limit_never_sees_a_429(connect: Any, algorithm: str) -> None:
    """Requests spaced exactly 60/RPM apart for two minutes are all admitted."""
    server = MockServer(requests_per_minute=30, rate_limit_algorithm=algorithm)
    async with connect(server) as client:
        start = anyio.current_time()
        for index in range(60):
            await anyio.sleep(start + index * 2.0 - anyio.current_time())
            response = await client.post("/v1/chat/completions", json=_chat(), headers=OPENAI)
            assert response.status_code == 200, index
    assert server.statistics().hits_by_status == {200: 60}


@pytest.mark.virtual_time
async def test_tokens_are_reserved_then_settled(connect: Any) -> None:
    """TPM reserves input + max_tokens on admission and refunds what was not produced."""
    prompt = "What is 1 + 1?"
    spent = count_mock_tokens(prompt) + 1  # the answer "2" is one token
    server = MockServer(tokens_per_minute=1000)
    async with connect(server) as client:
        first = await client.post("/v1/chat/completions", json=_chat(500, prompt), headers=OPENAI)
        second = await client.post("/v1/chat/completions", json=_chat(500, prompt), headers=OPENAI)
        too_big = await client.post("/v1/chat/completions", json=_chat(995), headers=OPENAI)
    assert first.headers["x-ratelimit-remaining-tokens"] == str(1000 - (spent + 499))
    # By the second request the first has been settled to what it really used.
    assert second.headers["x-ratelimit-remaining-tokens"] == str(1000 - spent - (spent + 499))
    assert too_big.status_code == 429
    assert too_big.json()["error"]["type"] == "tokens"
    wait = float(too_big.headers["retry-after-ms"]) / 1000
    reserve = count_mock_tokens(prompt) + 995
    assert wait == pytest.approx((2 * spent + reserve - 1000) * 60 / 1000, abs=0.001)


async def test_a_request_larger_than_the_limit_gets_no_retry_hint(connect: Any) -> None:
    """A request that can never fit is refused as too large, without Retry-After."""
    async with connect(MockServer(tokens_per_minute=100)) as client:
        response = await client.post("/v1/chat/completions", json=_chat(500), headers=OPENAI)
    assert response.status_code == 429
    assert "too large" in response.json()["error"]["message"]
    assert "retry-after" not in response.headers


@pytest.mark.virtual_time
async def test_anthropic_headers_report_every_limit_with_rfc3339_resets(connect: Any) -> None:
    """Anthropic gets requests, tokens, input- and output-token headers; resets are RFC 3339."""
    server = MockServer(
        requests_per_minute=50,
        input_tokens_per_minute=10_000,
        output_tokens_per_minute=2_000,
        clock_origin=ORIGIN,
    )
    body = {
        "model": "claude-sonnet-5",
        "max_tokens": 100,
        "messages": [{"role": "user", "content": "What is 2 + 2?"}],
    }
    async with connect(server) as client:
        response = await client.post("/v1/messages", json=body, headers=ANTHROPIC)
    headers = response.headers
    assert headers["date"] == "Thu, 01 Jan 2026 00:00:00 GMT"
    assert headers["anthropic-ratelimit-requests-limit"] == "50"
    assert headers["anthropic-ratelimit-requests-remaining"] == "49"
    # One request of a 50 RPM bucket refills in 1.2 s: rounded up to the next second.
    assert headers["anthropic-ratelimit-requests-reset"] == "2026-01-01T00:00:02Z"
    assert headers["anthropic-ratelimit-input-tokens-remaining"] == str(
        10_000 - count_mock_tokens("What is 2 + 2?")
    )
    assert headers["anthropic-ratelimit-output-tokens-remaining"] == "1900"
    # The tokens headers show the most restrictive token limit: output here.
    assert headers["anthropic-ratelimit-tokens-limit"] == "2000"
    assert headers["anthropic-ratelimit-tokens-remaining"] == "1900"


@pytest.mark.virtual_time
async def test_anthropic_and_gemini_429s_carry_their_retry_hints(connect: Any) -> None:
    """Over the limit, Anthropic sends retry-after and Gemini a RetryInfo with the wait."""
    server = MockServer(requests_per_minute=1)
    gemini_path = "/v1beta/models/gemini-2.5-flash:generateContent"
    gemini_body = {"contents": [{"parts": [{"text": "Hi"}]}]}
    anthropic_body = {
        "model": "claude-sonnet-5",
        "max_tokens": 10,
        "messages": [{"role": "user", "content": "Hi"}],
    }
    async with connect(server) as client:
        await client.post("/v1/messages", json=anthropic_body, headers=ANTHROPIC)
        anthropic = await client.post("/v1/messages", json=anthropic_body, headers=ANTHROPIC)
        await client.post(gemini_path, json=gemini_body, headers=GEMINI)
        gemini = await client.post(gemini_path, json=gemini_body, headers=GEMINI)
    assert anthropic.status_code == 429
    assert anthropic.json()["error"]["type"] == "rate_limit_error"
    assert anthropic.headers["retry-after"] == "60"
    assert anthropic.headers["anthropic-ratelimit-requests-remaining"] == "0"
    assert gemini.status_code == 429
    details = {d["@type"].rsplit(".", 1)[1]: d for d in gemini.json()["error"]["details"]}
    assert details["RetryInfo"]["retryDelay"] == "60s"
    assert "PerMinute" in details["QuotaFailure"]["violations"][0]["quotaId"]


@pytest.mark.virtual_time
async def test_refused_requests_do_not_use_up_the_limit(connect: Any) -> None:
    """A 429 costs nothing, and each API family has limits of its own."""
    server = MockServer(requests_per_minute=2)
    async with connect(server) as client:
        statuses = [
            (await client.post("/v1/chat/completions", json=_chat(), headers=OPENAI)).status_code
            for _ in range(5)
        ]
        await anyio.sleep(30)
        after = await client.post("/v1/chat/completions", json=_chat(), headers=OPENAI)
        body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "Hi"}]}
        other = await client.post("/v1/messages", json=body, headers=ANTHROPIC)
    assert statuses == [200, 200, 429, 429, 429]
    assert after.status_code == 200
    assert other.status_code == 200


@pytest.mark.virtual_time
async def test_models_listing_is_not_rate_limited(connect: Any) -> None:
    """Only generation and embedding requests count against the limits."""
    async with connect(MockServer(requests_per_minute=1)) as client:
        statuses = [(await client.get("/v1/models", headers=OPENAI)).status_code for _ in range(5)]
    assert statuses == [200] * 5
