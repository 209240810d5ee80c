"""A key never leaks: not into logs, reprs, exceptions, tracebacks or serialised results."""

from __future__ import annotations

import base64
import logging
import pickle
import traceback
from collections.abc import Iterator

import httpx2
import pytest
import stamina

import corral
from corral.providers import OpenAI

from .scripted import ScriptedServer

pytestmark = pytest.mark.anyio

CANARY = "sk-canary-7f3a9c1e5b2d4068"
FORMS = (CANARY, base64.b64encode(CANARY.encode()).decode(), CANARY[3:])


def assert_clean(text: str) -> None:
    for form in FORMS:
        assert form not in text, f"secret leaked: {text[:300]!r}"


@pytest.fixture
def debug_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Capture DEBUG records of every logger a request passes through."""
    names = ["", "corral", "httpx2", "httpcore2", "stamina"]
    for name in names:
        caplog.set_level(logging.DEBUG, logger=name)
    with stamina.set_testing(True, attempts=100, cap=True):
        yield caplog


def test_secret_wrapper_masks_every_rendering() -> None:
    """Secret's repr, str, format and f-string show a mask, and it refuses to be pickled."""
    secret = corral.Secret(CANARY)
    for text in (repr(secret), str(secret), f"{secret}", f"{secret!r}", "%s" % secret):  # noqa: UP031
        assert_clean(text)
    assert secret.reveal() == CANARY
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(secret)


async def test_canary_key_never_leaks(debug_logs: pytest.LogCaptureFixture) -> None:
    """Across successes, retries and every failure kind, the key appears nowhere but the header."""
    server = ScriptedServer(
        {
            "ok": [200],
            "retry": [500, "reset", 200],
            "auth": [401] * 2,
            "gone": [404] * 2,
            "slow": [429] * 6,
            "broken": [lambda r: httpx2.Response(200, text="{")] * 2,
        },
        retry_after="0",
    )
    provider = OpenAI("http://127.0.0.1:9/v1", api_key=CANARY)
    texts: list[str] = [repr(provider), str(provider)]
    async with corral.Client(
        provider, http_client=server.client(), retry=corral.RetryPolicy(attempts=3)
    ) as client:
        texts.append(repr(client))
        texts.append(repr(client.statistics()))
        ids = ["ok", "retry", "auth", "gone", "slow", "broken"]
        requests = [corral.ChatRequest("m", [{"role": "user", "content": "x"}], id=i) for i in ids]
        batch = await client.run(requests)
        for request in requests[2:]:
            with pytest.raises(corral.RequestFailed) as info:
                await client.complete(request)
            texts.append(str(info.value))
            texts.append(repr(info.value))
            texts.append("".join(traceback.format_exception(info.value)))
    # The key did go out, in the header, where it belongs.
    assert all(h["authorization"] == f"Bearer {CANARY}" for h in server.seen_headers)
    texts += [corral.to_json(r) for r in batch]
    texts.append(corral.to_json(batch))
    texts.append(repr(batch))
    texts += [record.getMessage() for record in debug_logs.records]
    texts += [repr(record.__dict__) for record in debug_logs.records]
    texts.append(debug_logs.text)
    assert batch.statistics.failed == 4
    for text in texts:
        assert_clean(text)


def test_key_is_never_in_the_url() -> None:
    """The key travels in a header only, never in the request URL."""
    request = OpenAI("http://127.0.0.1:9/v1", api_key=CANARY).build_request(
        corral.ChatRequest("m", [{"role": "user", "content": "x"}])
    )
    assert_clean(str(request.url))
    assert_clean(repr(request))


# -- the fragment rule --------------------------------------------------------------------------

FRAGMENT_KEY = "sk-frag-0123456789abcdefghijklmnopqrstuv"


def test_scrub_masks_every_fragment_of_eight_characters_or_more() -> None:
    """A key's prefix, suffix or middle of 8+ characters is masked; 7 or fewer are left."""
    from corral._secret import scrub

    key = FRAGMENT_KEY
    for fragment in (key, key[:8], key[:20], key[-8:], key[5:30]):
        text = scrub(f"bad key: {fragment}!", secrets=[key])
        assert text == "bad key: ********!", (fragment, text)
    short = f"short {key[:7]} and {key[-7:]}"
    assert scrub(short, secrets=[key]) == short
    # Two fragments apart: two masks, the words between them kept.
    assert scrub(f"{key[:10]} then {key[-10:]}", secrets=[key]) == "******** then ********"
    assert scrub("nothing to hide here", secrets=[key]) == "nothing to hide here"


def test_redact_masks_whole_keys_and_spares_corral_s_words() -> None:
    """``redact`` (for corral's own sentences) masks a whole key, never a word a key contains."""
    from corral._secret import redact

    key = "sk-redirect-canary-5e0d1c2b"
    assert (
        redact(f"redirect not followed; key {key}", [key]) == "redirect not followed; key ********"
    )


def test_scrub_masks_before_it_cuts() -> None:
    """A cut falling inside a key leaves none of it: the key is masked first, then cut."""
    from corral._secret import scrub

    text = "x" * 190 + FRAGMENT_KEY + " tail"
    for data in (text, text.encode()):
        cut = scrub(data, limit=200, secrets=[FRAGMENT_KEY])
        assert cut == ("x" * 190 + "******** tail")[:200]
    assert scrub("y" * 195 + FRAGMENT_KEY, limit=200, secrets=[FRAGMENT_KEY]) == "y" * 195 + "*****"


def test_scrub_masks_every_live_secret_without_being_given_it() -> None:
    """Server text is cleaned of any live Secret's fragments; a collected Secret is forgotten."""
    import gc

    from corral._secret import scrub

    key = "sk-live-" + "q7w8e9r0t1y2u3i4o5p6"
    secret = corral.Secret(key)
    assert scrub(f"echo {key[4:20]} done") == "echo ******** done"
    # An equal Secret made and dropped meanwhile does not make the first one forgotten.
    twin = corral.Secret(key)
    del twin
    gc.collect()
    assert scrub(f"echo {key[4:20]} done") == "echo ******** done"
    del secret
    gc.collect()
    assert scrub(f"echo {key[4:20]} done") == f"echo {key[4:20]} done"


def test_exceptions_built_from_server_text_are_masked_when_built() -> None:
    """InvalidResponse and ProviderError never hold a live key, not even for a moment."""
    from corral.providers._base import InvalidResponse, ProviderError, loads

    secret = corral.Secret(FRAGMENT_KEY)
    with pytest.raises(InvalidResponse) as raised:
        loads(("z" * 100 + secret.reveal()).encode(), "stream chunk")
    assert "********" in str(raised.value)
    assert FRAGMENT_KEY[:8] not in str(raised.value)
    info = corral.ErrorInfo(corral.ErrorKind.SERVER_ERROR, f"bad {FRAGMENT_KEY}")
    error = ProviderError(info)
    assert FRAGMENT_KEY[:8] not in repr(error) + str(error)
