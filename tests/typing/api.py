"""Type-check the public API the way users write it; mypy --strict runs on this file, not pytest."""

from __future__ import annotations

import anyio

import corral
from corral.providers import OpenAI


async def ask(client: corral.Client) -> str | None:
    request = corral.ChatRequest(
        model="deepseek-v3.2",
        messages=[corral.Message("user", "What is 2 + 2?"), {"role": "user", "content": "Quick."}],
        max_tokens=64,
        id="q0",
    )
    completion: corral.Completion = await client.complete(request)
    usage: corral.Usage = completion.usage
    total: int = usage.total_tokens
    assert total >= 0
    return completion.content


async def main() -> None:
    requests = (
        corral.ChatRequest(model="m", messages=[corral.Message("user", f"{i}?")], id=f"q{i}")
        for i in range(10)
    )
    provider = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="mock")
    async with corral.Client(
        provider, max_concurrency=8, retry=corral.RetryPolicy(attempts=3)
    ) as client:
        await ask(client)
        batch: corral.BatchResult = await client.run(requests)
        for result in batch.results:
            if isinstance(result, corral.Failure):
                kind: corral.ErrorKind = result.error.kind
                print(result.id, kind)
        async with client.stream([]) as results:
            async for streamed in results:
                print(streamed.id, streamed.ok)


async def job(client: corral.Client) -> int:
    summary: corral.JobSummary = await corral.run_jsonl(client, "in.jsonl", "out.jsonl")
    return summary.statistics.failed


async def flow() -> corral.Completion:
    async with corral.Client(
        OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="mock"),
        max_concurrency="auto",
        rate_limit=corral.RateLimit(requests_per_minute=3_000, tokens_per_minute=1_000_000),
        breaker=corral.CircuitBreaker(failure_threshold=20, reset_timeout=30),
        budget=corral.Budget(max_cost_usd=5.00),
        pricing=corral.Pricing.default(),
    ) as client:
        request = corral.ChatRequest("gpt-4o-mini", [corral.Message("user", "hi")], max_tokens=8)
        async with client.complete_stream(request) as deltas:
            async for text in deltas:
                print(text, end="")
        embedding: corral.EmbeddingResult = await client.complete(
            corral.EmbeddingRequest("text-embedding-3-small", "hello")
        )
        print(len(embedding.vectors))
        stats: corral.ClientStatistics = client.statistics()
        print(stats.budget)
        return deltas.completion


if __name__ == "__main__":
    anyio.run(main)
