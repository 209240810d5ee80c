"""A key never appears in a URL, a log line, an exception, a repr or a serialised result, for
every provider, on success, error and stream paths."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import httpx2
import pytest

import corral
from corral._models import EmbeddingRequest
from corral.providers import Anthropic, Gemini, OpenAI
from corral.testing._mock.server import MockServer

pytestmark = pytest.mark.anyio

CANARY = "sk-canary-d41d8cd98f00b204e980"

Factory = Callable[[str, str], Any]
PROVIDERS: dict[str, Factory] = {
    "openai": lambda url, key: OpenAI(url + "/v1", api_key=key),
    "anthropic": lambda url, key: Anthropic(url, api_key=key),
    "gemini": lambda url, key: Gemini(url, api_key=key),
}


def request(i: int, model: str = "model-x") -> corral.ChatRequest:
    return corral.ChatRequest(
        model, [{"role": "user", "content": "What is 2 + 2?"}], max_tokens=8, id=f"s{i}"
    )


def leaks(text: str) -> bool:
    return CANARY in text


@pytest.mark.parametrize("name", sorted(PROVIDERS))
async def test_the_key_never_leaks(name: str, caplog: pytest.LogCaptureFixture) -> None:
    """The key travels only in a header: not in URLs, logs, errors, reprs or results."""
    caplog.set_level(logging.DEBUG)
    urls: list[str] = []

    async def record(request: httpx2.Request) -> None:
        urls.append(str(request.url))

    good = MockServer(api_key=CANARY, seed=1)
    bad = MockServer(api_key="another-key", seed=1)
    texts: list[str] = []
    for mock, expect_ok in ((good, True), (bad, False)):
        http = httpx2.AsyncClient(
            transport=httpx2.ASGITransport(app=mock), event_hooks={"request": [record]}
        )
        provider = PROVIDERS[name]("http://mock", CANARY)
        client = corral.Client(provider, http_client=http, retry=corral.RetryPolicy(attempts=2))
        async with http, client:
            texts += [repr(provider), repr(client), str(client.statistics())]
            batch = await client.run([request(1), request(2)], stream=False)
            streamed = await client.run([request(3)], stream=True)
            if name != "anthropic":
                embedded = await client.run([EmbeddingRequest("embed-x", ["a", "b"])])
                texts += [corral.to_json(r) for r in embedded.results]
            if not expect_ok:
                with pytest.raises(corral.AuthenticationError) as info:
                    await client.complete(request(4))
                exc = info.value
                texts += [str(exc), repr(exc), repr(exc.info), str(exc.__cause__)]
            for result in (*batch.results, *streamed.results):
                assert result.ok is expect_ok
                texts.append(corral.to_json(result))
                texts.append(repr(result))
    assert urls
    assert not [u for u in urls if leaks(u)]
    assert not [t for t in texts if leaks(t)]
    assert caplog.records
    logged = [r.getMessage() + repr(r.args) for r in caplog.records]
    assert not [line for line in logged if leaks(line)]
    # The good server saw every request carry the right key (it answers 401 otherwise).
    assert good.statistics().hits_by_status.get(401, 0) == 0
    assert bad.statistics().hits_by_status.get(401, 0) > 0


@pytest.mark.parametrize("name", sorted(PROVIDERS))
def test_a_missing_key_error_names_the_variable_not_a_value(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a key for a remote API, the error names the variable to set."""
    for var in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY", "GOOGLE_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    remote: dict[str, Callable[[], object]] = {
        "openai": OpenAI,
        "anthropic": Anthropic,
        "gemini": Gemini,
    }
    with pytest.raises(corral.ConfigurationError, match="_API_KEY"):
        remote[name]()
