"""The mock server's knobs: seeded errors, retry hints, latency, outages, quota, faults, stats."""

from __future__ import annotations

import random
from typing import Any

import anyio
import httpx2
import pytest

from corral.testing._mock.config import MockConfig, MockHit
from corral.testing._mock.server import MockServer

pytestmark = pytest.mark.anyio

OPENAI = {"authorization": "Bearer sk-test"}
ANTHROPIC = {"x-api-key": "sk-ant-test", "anthropic-version": "2023-06-01"}
GEMINI = {"x-goog-api-key": "AIza-test"}
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]}
MESSAGES = {"model": "claude-sonnet-5", "max_tokens": 64, "messages": CHAT["messages"]}
GENERATE = {"contents": [{"parts": [{"text": "Hi"}]}]}


async def _statuses(call: Any, server: MockServer, count: int, **headers: str) -> list[int]:
    statuses = []
    for _ in range(count):
        status, _, _ = await call(server, "/v1/chat/completions", CHAT, OPENAI | headers)
        statuses.append(status)
    return statuses


async def test_same_seed_same_outcomes_other_seed_others(call: Any) -> None:
    """Two servers with one seed answer a sequence identically; another seed differs."""
    rates = {500: 0.2, 429: 0.1}
    first = await _statuses(call, MockServer(error_rates=rates, seed=5), 100)
    again = await _statuses(call, MockServer(error_rates=rates, seed=5), 100)
    other = await _statuses(call, MockServer(error_rates=rates, seed=6), 100)
    assert first == again
    assert first != other
    assert set(first) == {200, 429, 500}


async def test_error_rates_are_roughly_honoured(call: Any) -> None:
    """Over 2000 requests each status shows up near its rate, and statistics count them."""
    server = MockServer(error_rates={500: 0.10, 503: 0.05})
    statuses = await _statuses(call, server, 2000)
    # Five standard deviations of a binomial: a seed that fails this is not "roughly" right.
    assert 200 - 5 * 13.4 < statuses.count(500) < 200 + 5 * 13.4
    assert 100 - 5 * 9.7 < statuses.count(503) < 100 + 5 * 9.7
    stats = server.statistics()
    assert stats.total_hits == 2000
    assert stats.hits_by_status == {status: statuses.count(status) for status in set(statuses)}
    assert stats.hits_by_path == {"/v1/chat/completions": 2000}


async def test_outcomes_per_request_id_do_not_depend_on_order(connect: Any) -> None:
    """The n-th attempt of an id draws the same outcome whatever other traffic came between."""
    ids = [f"req-{i}" for i in range(30)]
    schedule = [(request_id, attempt) for attempt in range(3) for request_id in ids]
    shuffled = schedule[:]
    random.Random(1).shuffle(shuffled)
    shuffled.sort(key=lambda item: item[1])  # attempts of one id stay in order

    async def run(order: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
        server = MockServer(error_rates={500: 0.5})
        outcome = {}
        async with connect(server) as client:
            for request_id, attempt in order:
                headers = OPENAI | {"x-client-request-id": request_id}
                response = await client.post("/v1/chat/completions", json=CHAT, headers=headers)
                outcome[request_id, attempt] = response.status_code
        assert all(server.hits_for(request_id) == 3 for request_id in ids)
        return outcome

    assert await run(schedule) == await run(shuffled)


async def test_hit_log_records_ids_paths_and_statuses(connect: Any) -> None:
    """Each finished request is logged with its client request id, path and status."""
    server = MockServer()
    async with connect(server) as client:
        await client.post(
            "/v1/chat/completions", json=CHAT, headers=OPENAI | {"x-client-request-id": "a"}
        )
        await client.post("/v1/chat/completions", json=CHAT, headers={"x-client-request-id": "a"})
        await client.get("/v1/models", headers=OPENAI)
    assert server.statistics().hit_log == (
        MockHit("a", "/v1/chat/completions", 200),
        MockHit("a", "/v1/chat/completions", 401),
        MockHit(None, "/v1/models", 200),
    )
    assert server.hits_for("a") == 2
    assert server.hits_for("b") == 0


async def test_record_hits_off_keeps_counts_only(call: Any) -> None:
    """With record_hits=False the log and per-id counts stay empty; totals still count."""
    server = MockServer(record_hits=False)
    await _statuses(call, server, 3, **{"x-client-request-id": "a"})
    stats = server.statistics()
    assert stats.total_hits == 3
    assert stats.hit_log == ()
    assert server.hits_for("a") == 0


@pytest.mark.parametrize(
    ("path", "body", "headers", "status"),
    [
        ("/v1/chat/completions", CHAT, OPENAI, 429),
        ("/v1/chat/completions", CHAT, OPENAI, 503),
        ("/v1/messages", MESSAGES, ANTHROPIC, 429),
        ("/v1/messages", MESSAGES, ANTHROPIC, 529),
    ],
)
async def test_retry_after_on_429_503_529(
    connect: Any, path: str, body: dict[str, Any], headers: dict[str, str], status: int
) -> None:
    """Injected 429, 503 and 529 carry Retry-After (and retry-after-ms on OpenAI paths)."""
    async with connect(MockServer(error_rates={status: 1.0}, retry_after=2.5)) as client:
        response = await client.post(path, json=body, headers=headers)
    assert response.status_code == status
    assert response.headers["retry-after"] == "3"
    if path.startswith("/v1/chat"):
        assert response.headers["retry-after-ms"] == "2500"


async def test_no_retry_after_on_500(connect: Any) -> None:
    """A 500 carries no retry hint: the client's own backoff applies."""
    async with connect(MockServer(error_rates={500: 1.0})) as client:
        response = await client.post("/v1/chat/completions", json=CHAT, headers=OPENAI)
    assert response.status_code == 500
    assert response.json()["error"]["type"] == "server_error"
    assert "retry-after" not in response.headers


@pytest.mark.virtual_time
async def test_latency_is_applied_in_virtual_time(connect: Any) -> None:
    """A fixed latency delays the answer by exactly that much; processing-ms reports it."""
    async with connect(MockServer(latency=2.5)) as client:
        start = anyio.current_time()
        response = await client.post("/v1/chat/completions", json=CHAT, headers=OPENAI)
        elapsed = anyio.current_time() - start
    assert elapsed == pytest.approx(2.5)
    assert response.headers["openai-processing-ms"] == "2500"


@pytest.mark.virtual_time
async def test_latency_range_and_function(connect: Any) -> None:
    """A (low, high) latency stays in range; a callable latency gets a seeded RNG."""
    seen: list[float] = []
    for latency in [(1.0, 2.0), lambda rng: 3 + rng.random()]:
        async with connect(MockServer(latency=latency)) as client:
            for _ in range(20):
                start = anyio.current_time()
                await client.post("/v1/chat/completions", json=CHAT, headers=OPENAI)
                seen.append(anyio.current_time() - start)
    assert all(1.0 <= value <= 2.0 for value in seen[:20])
    assert all(3.0 <= value <= 4.0 for value in seen[20:])
    assert len(set(seen)) == 40


@pytest.mark.virtual_time
async def test_errors_from_auth_and_limits_skip_the_latency(connect: Any) -> None:
    """Refusals (here a missing key) are answered at once, without the latency."""
    async with connect(MockServer(latency=10)) as client:
        start = anyio.current_time()
        response = await client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 401
    assert anyio.current_time() == start


@pytest.mark.virtual_time
@pytest.mark.parametrize(
    ("path", "body", "headers", "status"),
    [
        ("/v1/chat/completions", CHAT, OPENAI, 503),
        ("/v1/messages", MESSAGES, ANTHROPIC, 529),
        ("/v1beta/models/gemini-2.5-flash:generateContent", GENERATE, GEMINI, 503),
    ],
)
async def test_outage_window_fails_every_request(
    connect: Any, path: str, body: dict[str, Any], headers: dict[str, str], status: int
) -> None:
    """Inside an outage window every request fails (529 on Anthropic); outside, all succeed."""
    server = MockServer(outages=[(10, 20)], retry_after=4)
    seen = []
    async with connect(server) as client:
        start = anyio.current_time()
        for at in (0, 9.9, 10, 15, 19.9, 20, 30):
            await anyio.sleep(start + at - anyio.current_time())
            response = await client.post(path, json=body, headers=headers)
            seen.append(response.status_code)
            if response.status_code != 200 and not path.startswith("/v1beta"):
                assert response.headers["retry-after"] == "4"
    assert seen == [200, 200, status, status, status, 200, 200]


@pytest.mark.virtual_time
async def test_daily_quota_then_429_without_short_hint_then_reset(connect: Any) -> None:
    """After daily_quota requests OpenAI says insufficient_quota; a day later it serves again."""
    server = MockServer(daily_quota=3)
    async with connect(server) as client:
        start = anyio.current_time()
        statuses = [
            (await client.post("/v1/chat/completions", json=CHAT, headers=OPENAI)).status_code
            for _ in range(3)
        ]
        refused = await client.post("/v1/chat/completions", json=CHAT, headers=OPENAI)
        await anyio.sleep(start + 86_400 - anyio.current_time())
        again = await client.post("/v1/chat/completions", json=CHAT, headers=OPENAI)
    assert statuses == [200, 200, 200]
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert error["code"] == error["type"] == "insufficient_quota"
    assert "quota" in error["message"]
    assert "retry-after" not in refused.headers
    assert again.status_code == 200


async def test_daily_quota_bodies_for_gemini_and_anthropic(connect: Any) -> None:
    """Gemini names a per-day QuotaFailure without RetryInfo; Anthropic says "daily"."""
    async with connect(MockServer(daily_quota=1)) as client:
        path = "/v1beta/models/gemini-2.5-flash:generateContent"
        await client.post(path, json=GENERATE, headers=GEMINI)
        gemini = await client.post(path, json=GENERATE, headers=GEMINI)
        await client.post("/v1/messages", json=MESSAGES, headers=ANTHROPIC)
        anthropic = await client.post("/v1/messages", json=MESSAGES, headers=ANTHROPIC)
    assert gemini.status_code == anthropic.status_code == 429
    details = gemini.json()["error"]["details"]
    types = [detail["@type"].rsplit(".", 1)[1] for detail in details]
    assert types == ["QuotaFailure"]
    assert "PerDay" in details[0]["violations"][0]["quotaId"]
    assert anthropic.json()["error"]["type"] == "rate_limit_error"
    assert "daily" in anthropic.json()["error"]["message"]
    assert "retry-after" not in anthropic.headers


@pytest.mark.virtual_time
async def test_peak_in_flight_counts_concurrent_requests(connect: Any) -> None:
    """25 concurrent slow requests make a peak of 25; in-flight falls back to 0 after."""
    server = MockServer(latency=1.0)
    async with connect(server) as client:

        async def one() -> None:
            response = await client.post("/v1/chat/completions", json=CHAT, headers=OPENAI)
            assert response.status_code == 200

        async with anyio.create_task_group() as group:
            for _ in range(25):
                group.start_soon(one)
            await anyio.sleep(0.5)
            assert server.statistics().in_flight == 25
        for _ in range(3):
            await one()
    stats = server.statistics()
    assert stats.peak_in_flight == 25
    assert stats.in_flight == 0
    server.reset()
    assert server.statistics().peak_in_flight == 0
    assert server.statistics().total_hits == 0


@pytest.mark.virtual_time
async def test_stall_outlasts_the_client_and_is_logged_unanswered(connect: Any) -> None:
    """A stalled request sleeps stall_seconds; a client that gives up leaves no request behind."""
    server = MockServer(stall_rate=1.0, stall_seconds=600)
    async with connect(server) as client:
        with pytest.raises(TimeoutError):
            with anyio.fail_after(30):
                await client.post("/v1/chat/completions", json=CHAT, headers=OPENAI)
    stats = server.statistics()
    assert stats.in_flight == 0
    assert stats.hits_by_status == {0: 1}


@pytest.mark.virtual_time
async def test_stalled_request_is_answered_after_the_stall(connect: Any) -> None:
    """A patient client gets the answer after latency plus stall_seconds."""
    async with connect(MockServer(stall_rate=1.0, stall_seconds=60, latency=1)) as client:
        start = anyio.current_time()
        response = await client.post("/v1/chat/completions", json=CHAT, headers=OPENAI)
    assert response.status_code == 200
    assert anyio.current_time() - start == pytest.approx(61)


async def test_drop_raises_a_protocol_error_in_process(connect: Any) -> None:
    """A dropped connection reaches an in-process client as httpx2.RemoteProtocolError."""
    server = MockServer(drop_rate=1.0)
    async with connect(server) as client:
        with pytest.raises(httpx2.RemoteProtocolError):
            await client.post("/v1/chat/completions", json=CHAT, headers=OPENAI)
    assert server.statistics().hits_by_status == {0: 1}


async def test_truncated_json_body_is_not_valid_json(connect: Any) -> None:
    """truncate_rate cuts a JSON body in half: a 200 that does not parse."""
    async with connect(MockServer(truncate_rate=1.0)) as client:
        response = await client.post("/v1/chat/completions", json=CHAT, headers=OPENAI)
    assert response.status_code == 200
    with pytest.raises(ValueError, match=r"Unterminated|Expecting|delimiter"):
        response.json()


@pytest.mark.parametrize(
    ("path", "body", "headers", "last_marker"),
    [
        ("/v1/chat/completions", CHAT | {"stream": True}, OPENAI, "[DONE]"),
        ("/v1/messages", MESSAGES | {"stream": True}, ANTHROPIC, "message_stop"),
        (
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
            GENERATE,
            GEMINI,
            "finishReason",
        ),
    ],
)
async def test_truncated_stream_lacks_its_final_event(
    connect: Any, path: str, body: dict[str, Any], headers: dict[str, str], last_marker: str
) -> None:
    """truncate_rate ends a stream early: content arrives but the final event never does."""
    async with connect(MockServer()) as client:
        whole = await client.post(path, json=body, headers=headers)
    async with connect(MockServer(truncate_rate=1.0)) as client:
        cut = await client.post(path, json=body, headers=headers)
    assert last_marker in whole.text
    assert cut.status_code == 200
    assert last_marker not in cut.text
    assert whole.text.startswith(cut.text)
    assert len(cut.text) > 0


@pytest.mark.virtual_time
async def test_chunk_delay_spaces_stream_events(connect: Any) -> None:
    """chunk_delay puts that much time between two events of a stream."""
    server = MockServer(chunk_delay=0.25, latency=1)
    async with connect(server) as client:
        start = anyio.current_time()
        response = await client.post(
            "/v1/chat/completions", json=CHAT | {"stream": True}, headers=OPENAI
        )
        elapsed = anyio.current_time() - start
    events = response.text.count("data: ")
    assert elapsed == pytest.approx(1 + 0.25 * (events - 1))


@pytest.mark.parametrize(
    "knobs",
    [
        {"error_rates": {500: 0.7, 429: 0.4}},
        {"error_rates": {200: 0.1}},
        {"latency": -1},
        {"latency": (2.0, 1.0)},
        {"outages": [(5, 5)]},
        {"requests_per_minute": 0},
        {"drop_rate": 1.5},
        {"rate_limit_algorithm": "leaky"},
    ],
)
def test_bad_knobs_are_refused(knobs: dict[str, Any]) -> None:
    """Impossible configurations raise at construction instead of misbehaving later."""
    with pytest.raises((ValueError, TypeError)):
        MockConfig(**knobs)


def test_knobs_override_a_config_and_reprs_are_informative() -> None:
    """Keyword knobs override a given config; reprs show the seed and counters, not the key."""
    server = MockServer(MockConfig(seed=3, latency=1.0), latency=2.0, api_key="sk-secret")
    assert server.config.seed == 3
    assert server.config.latency == 2.0
    assert "seed=3" in repr(server)
    assert "hits=0" in repr(server)
    assert "sk-secret" not in repr(server.config)
