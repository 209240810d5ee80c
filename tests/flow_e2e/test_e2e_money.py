"""Money and quotas end to end: budgets that stop a batch, true cost with cached input, unknown
prices, and the daily quota that fails fast."""

from __future__ import annotations

import logging

import anyio
import pytest

import corral
from corral.providers import OpenAI
from corral.providers._base import token_bounds
from corral.testing import MockServer

from .flowkit import chat, open_client, stories

pytestmark = [pytest.mark.anyio, pytest.mark.virtual_time]


async def test_a_budget_stops_the_batch_and_every_other_input_fails_as_budget_exhausted() -> None:
    """A budget stops sending once the next request cannot fit; the rest come back as failures."""
    model = "gpt-4o-mini"  # priced by the bundled table
    limit = 0.001
    budget = corral.Budget(max_cost_usd=limit)
    requests = list(stories(200, model=model, max_tokens=64))
    server = MockServer(latency=0.5)
    async with open_client(server, max_concurrency=8, budget=budget) as client:
        batch = await client.run(requests)
        spend = client.statistics().budget

    # Exactly one result per input, in input order.
    assert [r.id for r in batch.results] == [r.id for r in requests]
    completions, failures = batch.completions, batch.failures
    assert 10 <= len(completions) < 200  # it did spend, and it did stop
    assert {f.error.kind for f in failures} == {corral.ErrorKind.BUDGET_EXHAUSTED}
    assert all(f.attempts == 0 for f in failures)
    # Nothing refused was sent: the server saw exactly the requests that completed.
    assert server.statistics().total_hits == len(completions) == batch.statistics.attempts
    for failure in failures:
        assert server.hits_for(failure.id) == 0
    # Settled spend is the true cost of what was sent, and never more than the budget.
    assert spend is not None
    costs = [c.cost_usd for c in completions]
    assert None not in costs
    true_cost = sum(c for c in costs if c is not None)
    assert spend.spent_usd == pytest.approx(true_cost, abs=1e-9 * len(costs))
    assert batch.statistics.cost_usd == pytest.approx(true_cost)
    assert spend.spent_usd <= limit
    assert (spend.reserved_usd, spend.in_flight, spend.exhausted) == (0.0, 0, True)
    # And it did not stop early: what is left cannot hold one more request's worst case.
    pricing = corral.Pricing.default()
    provider = OpenAI("http://mock/v1", api_key="sk-test")
    worst = max(
        pricing.worst_case_cost(model, *token_bounds(provider, r, provider.build_request(r))) or 0.0
        for r in requests
    )
    assert limit - spend.spent_usd < worst


async def test_a_daily_quota_429_fails_fast_as_quota_exhausted_with_one_hit() -> None:
    """A quota-exhausted 429 is not retried and pauses nobody: one hit, failed at once."""
    server = MockServer(daily_quota=3, latency=0.5)
    policy = corral.RetryPolicy(attempts=5)
    async with open_client(server, max_concurrency=1, retry=policy) as client:
        start = anyio.current_time()
        batch = await client.run([chat(i) for i in range(5)])
        elapsed = anyio.current_time() - start
        limiter = client.statistics().rate_limiter

    assert [r.ok for r in batch.results] == [True, True, True, False, False]
    for failure in batch.failures:
        assert failure.error.kind is corral.ErrorKind.QUOTA_EXHAUSTED
        assert failure.error.status_code == 429
        assert failure.error.retryable is False
        assert failure.attempts == 1 == server.hits_for(failure.id)
    assert server.statistics().total_hits == 5
    # Three answers took their latency; the refusals took no time: no backoff, no cooldown.
    assert elapsed == pytest.approx(3 * 0.5, abs=1e-6)
    assert limiter is not None
    assert limiter.cooldowns == 0


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_cost_prices_cached_input_separately_as_computed_by_hand(stream: bool) -> None:
    """cost_usd and the batch's cost match the hand-computed prices of input, cache and output."""
    pricing = corral.Pricing(
        models={"house-model": corral.ModelPrice(input=2.0, output=8.0, cached_input=0.5)}
    )
    # A 1200-token system prompt: the mock caches it on the first request and reads it from
    # the cache on the second, in blocks of 1024 tokens plus multiples of 128 (1152 here).
    system = "abcd" * 1200
    question = "What is 2 + 3?"  # 14 characters: 4 tokens; the answer "5" is 1 token
    input_tokens, cached, output = 1200 + 4, 1152, 1
    first_usd = (input_tokens * 2.0 + output * 8.0) / 1e6
    second_usd = ((input_tokens - cached) * 2.0 + cached * 0.5 + output * 8.0) / 1e6

    def ask(i: int) -> corral.ChatRequest:
        return corral.ChatRequest(
            "house-model",
            [{"role": "system", "content": system}, {"role": "user", "content": question}],
            max_tokens=8,
            id=f"q{i}",
        )

    server = MockServer()
    async with open_client(server, max_concurrency=1, pricing=pricing) as client:
        batch = await client.run([ask(0), ask(1)], stream=stream)

    first, second = batch.completions
    assert (first.content, second.content) == ("5", "5")
    assert (first.usage.input_tokens, first.usage.cached_input_tokens) == (input_tokens, 0)
    assert (second.usage.input_tokens, second.usage.cached_input_tokens) == (input_tokens, cached)
    assert first.usage.output_tokens == second.usage.output_tokens == output
    assert first.cost_usd == pytest.approx(first_usd, rel=1e-12)
    assert second.cost_usd == pytest.approx(second_usd, rel=1e-12)
    assert batch.statistics.cost_usd == pytest.approx(first_usd + second_usd, rel=1e-12)
    assert batch.statistics.usage.cached_input_tokens == cached
    assert batch.statistics.unpriced == 0


async def test_an_unknown_model_costs_none_with_a_single_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A model without a price gives cost_usd None (never 0) and one warning for the whole run."""
    server = MockServer()
    with caplog.at_level(logging.WARNING, logger="corral"):
        async with open_client(server) as client:
            batch = await client.run([chat(i, model="mystery-model-7") for i in range(5)])
            one = await client.complete(chat(5, model="mystery-model-7"))

    assert batch.statistics.succeeded == 5
    assert [r.cost_usd for r in batch.completions] == [None] * 5
    assert one.cost_usd is None
    assert batch.statistics.unpriced == 5
    assert batch.statistics.cost_usd == 0.0  # the sum of known costs: there are none
    warnings = [r for r in caplog.records if r.name == "corral" and r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert "mystery-model-7" in warnings[0].getMessage()


async def test_an_unknown_model_under_a_cost_budget_is_never_sent_as_if_free() -> None:
    """Under max_cost_usd, a request whose worst case cannot be priced is refused, not sent."""
    server = MockServer()
    async with open_client(server, budget=corral.Budget(max_cost_usd=1.0)) as client:
        batch = await client.run([chat(i, model="mystery-model-7") for i in range(3)])
        spend = client.statistics().budget

    assert [f.error.kind for f in batch.failures] == [corral.ErrorKind.BUDGET_EXHAUSTED] * 3
    assert all("no known price" in f.error.message for f in batch.failures)
    assert server.statistics().total_hits == 0
    assert spend is not None
    assert spend.spent_usd == 0.0
