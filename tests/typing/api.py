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


if __name__ == "__main__":
    anyio.run(main)
