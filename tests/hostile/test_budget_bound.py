"""The budget is a hard cap against a server that bills the most a provider could."""

from __future__ import annotations

import math
from typing import Any

import pytest

import corral
from corral.providers import OpenAI
from corral.providers._base import token_bounds
from corral.testing import serve

from .budget_server import BudgetServer

pytestmark = pytest.mark.anyio

MODEL = "dear-model"
PRICING = corral.Pricing(models={MODEL: {"input": 100.0, "output": 100.0}})


def worst_case(request: corral.ChatRequest) -> float:
    """Return one attempt's worst-case cost, as the client reserves it."""
    provider = OpenAI("http://127.0.0.1/v1", api_key="sk-test")
    cost = PRICING.worst_case_cost(
        MODEL, *token_bounds(provider, request, provider.build_request(request))
    )
    assert cost is not None
    return cost


async def run_batch(
    server: BudgetServer, requests: list[corral.ChatRequest], limit: float, **options: Any
) -> tuple[corral.BatchResult, corral.BudgetStatistics]:
    """Run *requests* against *server* under a *limit* in dollars; return results and spend."""
    async with serve(server) as running:
        client = corral.Client(
            OpenAI(running.url + "/v1", api_key="sk-test"),
            budget=corral.Budget(max_cost_usd=limit),
            pricing=PRICING,
            **options,
        )
        async with client:
            batch = await client.run(requests)
            spend = client.statistics().budget
    assert spend is not None
    return batch, spend


@pytest.mark.parametrize("characters", [1_000, 10_000])
async def test_dense_prompts_never_settle_above_the_budget(characters: int) -> None:
    """CJK prompts (3 bytes a character) billed a token per byte settle within a $1.00 budget."""
    requests = [
        corral.ChatRequest(MODEL, [{"role": "user", "content": "漢" * characters}], max_tokens=50)
        for _ in range(12)
    ]
    batch, spend = await run_batch(BudgetServer(), requests, 1.0, max_concurrency=4)
    billed = sum(r.cost_usd or 0.0 for r in batch.completions)
    assert spend.spent_usd == pytest.approx(billed)
    assert spend.spent_usd <= 1.0, spend
    assert spend.overruns == 0
    assert {f.error.kind for f in batch.failures} <= {corral.ErrorKind.BUDGET_EXHAUSTED}
    if characters == 1_000:
        assert len(batch.completions) >= 2  # it did spend: the bound is not absurdly loose


async def test_short_prompts_with_many_messages_settle_within_the_budget() -> None:
    """Per-message template tokens are reserved: many tiny messages settle within $0.50."""
    messages = [{"role": "user" if i % 2 else "assistant", "content": "hi"} for i in range(41)]
    requests = [corral.ChatRequest(MODEL, messages, max_tokens=8) for _ in range(400)]
    batch, spend = await run_batch(BudgetServer(), requests, 0.5, max_concurrency=16)
    assert spend.spent_usd <= 0.5, spend
    assert spend.overruns == 0
    assert len(batch.completions) >= 10  # it did spend, then stopped
    assert spend.exhausted


async def test_an_attempt_cut_after_a_2xx_head_is_charged_and_so_is_its_retry() -> None:
    """A 200 head then a lost connection may be billed: the retry adds another worst case."""
    request = corral.ChatRequest(MODEL, [{"role": "user", "content": "hello"}], max_tokens=20)
    server = BudgetServer(cut_first=True)
    batch, spend = await run_batch(
        server, [request], 10.0, retry=corral.RetryPolicy(attempts=2, wait_initial=0.01)
    )
    (completion,) = batch.completions
    assert completion.attempts == 2
    assert completion.cost_usd is not None
    assert spend.spent_usd == pytest.approx(worst_case(request) + completion.cost_usd)


async def test_a_retry_the_budget_cannot_cover_fails_as_budget_exhausted() -> None:
    """After a billed attempt, a retry that no longer fits is not sent: budget_exhausted."""
    request = corral.ChatRequest(MODEL, [{"role": "user", "content": "hello"}], max_tokens=20)
    limit = worst_case(request) * 1.5
    server = BudgetServer(cut_first=True)
    batch, spend = await run_batch(
        server, [request], limit, retry=corral.RetryPolicy(attempts=3, wait_initial=0.01)
    )
    (failure,) = batch.failures
    assert failure.error.kind is corral.ErrorKind.BUDGET_EXHAUSTED
    assert sum(server.attempts.values()) == 1
    assert spend.spent_usd == pytest.approx(worst_case(request))
    assert spend.spent_usd <= limit


@pytest.mark.parametrize(
    "usage",
    [
        {"prompt_tokens": 10, "completion_tokens": 21},  # above max_tokens
        {"prompt_tokens": 10**6, "completion_tokens": 1},  # above the body's bound
        {"prompt_tokens": 1e300, "completion_tokens": 1},
        {"prompt_tokens": math.nan, "completion_tokens": 1},
        {"prompt_tokens": -5, "completion_tokens": 1},
    ],
    ids=["output-above-max-tokens", "input-above-bound", "1e300", "nan", "negative"],
)
async def test_impossible_usage_is_an_invalid_response_charged_its_worst_case(
    usage: dict[str, Any],
) -> None:
    """A usage no provider could bill fails the request, at the reserved worst case."""
    request = corral.ChatRequest(MODEL, [{"role": "user", "content": "hello"}], max_tokens=20)
    batch, spend = await run_batch(
        BudgetServer(usage=usage), [request], 10.0, retry=corral.RetryPolicy(attempts=1)
    )
    (failure,) = batch.failures
    assert failure.error.kind is corral.ErrorKind.INVALID_RESPONSE
    assert spend.spent_usd == pytest.approx(worst_case(request))
    assert math.isfinite(spend.spent_usd)
