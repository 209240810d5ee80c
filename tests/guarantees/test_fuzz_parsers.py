"""Bad input everywhere, provider side: every parser meets hostile server output.

Random JSON, random bytes, mutations of the recorded payloads in ``tests/providers/payloads``,
streams cut at every byte and split at random chunk boundaries: each provider's parsers must
answer with a value (a completion, an embedding result, an :class:`corral.ErrorInfo`) or with
the typed exceptions the client turns into a :class:`corral.Failure` (``InvalidResponse``,
``ProviderError``, and for streams whatever ``stream_failure`` maps). Anything else would
propagate out of ``Client.run`` as a bug and crash the whole batch.

Everything here is sans-IO and synchronous, except the chunk-boundary test, which drives the
client's own async event reader on each backend with ``anyio.run``.
"""

from __future__ import annotations

import copy
import datetime
import email.utils
import itertools
import json
import math
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from corral import ChatRequest, Completion, EmbeddingRequest, EmbeddingResult, ErrorInfo, ErrorKind
from corral._streaming import EventReader, stream_failure
from corral.providers import Anthropic, Gemini, InvalidResponse, OpenAI, ProviderError
from corral.providers._headers import parse_retry_after
from corral.testing import render_events

PAYLOADS = Path(__file__).parent.parent / "providers" / "payloads"
LOOPBACK = "http://127.0.0.1:9"

PROVIDERS: dict[str, Any] = {
    "openai": OpenAI(LOOPBACK + "/v1", api_key="sk-fuzz"),
    "anthropic": Anthropic(LOOPBACK, api_key="sk-ant-fuzz"),
    "gemini": Gemini(LOOPBACK, api_key="AIza-fuzz"),
}
EMBEDDERS = ("openai", "gemini")

CHAT = ChatRequest("fuzz-model", [{"role": "user", "content": "hi"}], max_tokens=16, id="fz")
EMBED = EmbeddingRequest("fuzz-embed", ["one", "two"], id="fz-e")

# Field names the three APIs use, so that random objects reach past the first key lookup.
VOCABULARY = (
    "choices", "message", "content", "delta", "finish_reason", "index", "usage", "model",
    "prompt_tokens", "completion_tokens", "prompt_tokens_details", "cached_tokens",
    "completion_tokens_details", "reasoning_tokens", "tool_calls", "function", "arguments",
    "error", "type", "code", "message", "status", "details", "@type", "retryDelay", "seconds",
    "nanos", "violations", "quotaId", "data", "embedding", "embeddings", "values", "text",
    "input_tokens", "output_tokens", "cache_read_input_tokens", "stop_reason", "content_block",
    "candidates", "parts", "finishReason", "usageMetadata", "promptTokenCount",
    "candidatesTokenCount", "thoughtsTokenCount", "promptFeedback", "blockReason",
    "modelVersion", "partial_json", "text_delta", "input_json_delta", "message_start",
    "message_delta", "message_stop", "content_block_start", "content_block_delta",
)  # fmt: skip

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()  # NaN and infinities included: Python's json reads them
    | st.text(max_size=12)
    | st.sampled_from(VOCABULARY)
    | st.sampled_from(["", "0", "-1", "1e400", "nan", "STOP", "end_turn", "[DONE]", "é😀"])
)
JSON = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(VOCABULARY) | st.text(max_size=6), inner, max_size=5)
    ),
    max_leaves=24,
)

# Deeper than the interpreter's recursion limit: json.loads raises RecursionError on it.
DEEP = b"[" * 50_000 + b"]" * 50_000
DEEP_OBJECT = b'{"error":' * 50_000 + b"1" + b"}" * 50_000

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _dumps(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


def _load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def _payloads(provider: str, prefix: str) -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{provider}/{p.name}", _load(p))
        for p in sorted((PAYLOADS / provider).glob(f"{prefix}*.json"))
    ]


RECORDED_BODIES = [
    (name.split("/")[0], name, case["response"]["json"])
    for provider in PROVIDERS
    for name, case in _payloads(provider, "")
    if "json" in case["response"]
]
RECORDED_STREAMS = [
    (name.split("/")[0], name, case["response"]["events"])
    for provider in PROVIDERS
    for name, case in _payloads(provider, "stream-")
]


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Return the path of every node in a JSON value, the root included."""
    found = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _paths(item, (*prefix, index))
    return found


@st.composite
def mutations(draw: st.DrawFn, document: Any) -> Any:
    """Return a copy of *document* with one to three nodes replaced, dropped or wrapped."""
    doc = copy.deepcopy(document)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(doc)))
        op = draw(st.sampled_from(["replace", "drop", "wrap", "null"]))
        if not path:
            doc = draw(JSON) if op == "replace" else [doc] if op == "wrap" else None
            continue
        parent = doc
        for step in path[:-1]:
            parent = parent[step]
        last = path[-1]
        if op == "drop":
            del parent[last]
        elif op == "wrap":
            parent[last] = [parent[last]]
        elif op == "null":
            parent[last] = None
        else:
            parent[last] = draw(JSON)
    return doc


def _response(
    status: int, content: bytes, headers: dict[str, str] | None = None
) -> httpx2.Response:
    request = httpx2.Request("POST", LOOPBACK + "/v1/x")
    return httpx2.Response(status, headers=headers or {}, content=content, request=request)


def _check_error_info(info: ErrorInfo) -> None:
    assert isinstance(info, ErrorInfo)
    assert isinstance(info.kind, ErrorKind)
    assert isinstance(info.message, str)
    assert info.message
    assert isinstance(info.retryable, bool)
    assert info.provider_code is None or isinstance(info.provider_code, str)
    if info.retry_after_s is not None:
        assert math.isfinite(info.retry_after_s)
        assert info.retry_after_s >= 0


def _check_completion(completion: Completion) -> None:
    assert isinstance(completion, Completion)
    assert completion.id == CHAT.id
    assert isinstance(completion.model, str)
    assert completion.model
    assert isinstance(completion.content, str)
    assert completion.finish_reason is None or isinstance(completion.finish_reason, str)
    usage = completion.usage
    for value in (usage.input_tokens, usage.output_tokens, usage.cached_input_tokens):
        assert isinstance(value, int)
        assert value >= 0


def parse_chat(name: str, content: bytes) -> Completion | ErrorInfo:
    """Parse a 200 chat body the way the client does: a completion, or a typed failure."""
    try:
        completion = PROVIDERS[name].parse_response(CHAT, _response(200, content))
    except InvalidResponse as exc:
        return ErrorInfo(ErrorKind.INVALID_RESPONSE, str(exc) or "(no message)")
    except ProviderError as exc:
        _check_error_info(exc.info)
        return exc.info
    _check_completion(completion)
    return completion


def parse_embedding(name: str, content: bytes) -> EmbeddingResult | ErrorInfo:
    """Parse a 200 embeddings body: vectors for every input, or a typed failure."""
    try:
        result = PROVIDERS[name].parse_embedding_response(EMBED, _response(200, content))
    except InvalidResponse as exc:
        return ErrorInfo(ErrorKind.INVALID_RESPONSE, str(exc))
    assert isinstance(result, EmbeddingResult)
    assert len(result.vectors) == len(EMBED.texts)
    for vector in result.vectors:
        assert all(isinstance(x, float) and math.isfinite(x) for x in vector)
    assert result.usage.input_tokens >= 0
    return result


def classify(name: str, status: int, content: bytes, headers: dict[str, str]) -> ErrorInfo:
    """Classify an error response: must always give an ErrorInfo, never raise."""
    info = PROVIDERS[name].classify_error(_response(status, content, headers))
    _check_error_info(info)
    assert info.status_code == status
    return info


SSE_HEADERS = {"content-type": "text/event-stream"}


def parse_stream(name: str, body: bytes) -> Completion | ErrorInfo:
    """Feed a whole event-stream body to a fresh parser, as the client would."""
    parser = PROVIDERS[name].stream_parser(CHAT)
    deltas: list[str] = []
    try:
        for event in httpx2.EventSource(_response(200, body, SSE_HEADERS)):
            delta = parser.feed(event)
            assert isinstance(delta, str)
            deltas.append(delta)
        completion = parser.result()
    except (InvalidResponse, ProviderError, httpx2.SSEError) as exc:
        info = stream_failure(exc)
        assert info is not None
        _check_error_info(info)
        return info
    assert parser.done
    _check_completion(completion)
    assert "".join(deltas) == completion.content
    return completion


# -- whole bodies --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PROVIDERS)
@FUZZ
@given(value=JSON)
@example(value={"choices": [{"message": {"content": "x"}}], "usage": {"prompt_tokens": 1e400}})
@example(value={"choices": [{"message": {"content": "x"}}], "usage": {"prompt_tokens": "nan"}})
@example(value={"content": [], "usage": {"input_tokens": float("inf")}})
@example(value={"candidates": [{}], "usageMetadata": {"promptTokenCount": float("inf")}})
@example(value={"choices": [{"message": {"content": "x"}, "finish_reason": {"a": 1}}]})
def test_random_json_chat_body(name: str, value: Any) -> None:
    """A 2xx chat body of random JSON parses to a completion or a typed failure."""
    parse_chat(name, _dumps(value))


@pytest.mark.parametrize("name", PROVIDERS)
@FUZZ
@given(content=st.binary(max_size=64))
@example(content=DEEP)
@example(content=DEEP_OBJECT)
@example(content=b"\xff\xfe{}")
def test_random_bytes_chat_body(name: str, content: bytes) -> None:
    """A 2xx chat body of random bytes (or JSON nested past the recursion limit) is refused."""
    parse_chat(name, content)


@pytest.mark.parametrize(("name", "case", "document"), RECORDED_BODIES, ids=lambda v: str(v)[:40])
@settings(max_examples=10, deadline=None)
@given(data=st.data())
def test_mutated_recorded_bodies(name: str, case: str, document: Any, data: st.DataObject) -> None:
    """Recorded bodies with nodes replaced, dropped or wrapped: every parser stays typed."""
    mutated = data.draw(mutations(document))
    content = _dumps(mutated)
    parse_chat(name, content)
    classify(name, data.draw(st.sampled_from([400, 429, 500, 503, 529])), content, {})
    if name in EMBEDDERS:
        parse_embedding(name, content)


@pytest.mark.parametrize("name", EMBEDDERS)
@FUZZ
@given(value=JSON | st.binary(max_size=32))
@example(value={"data": [{"embedding": [1e400]}, {"embedding": [1.0]}]})
@example(value={"data": [{"embedding": [1.0], "index": 1e400}, {"embedding": [2.0]}]})
@example(value={"data": [{"embedding": "!!"}, {"embedding": [2.0]}]})
@example(value={"embeddings": [{"values": [float("nan")]}, {"values": [1]}]})
@example(value={"embeddings": [{"values": [10**400]}, {"values": [1]}]})
@example(value=DEEP)
def test_random_embedding_body(name: str, value: Any) -> None:
    """A 2xx embeddings body of random JSON or bytes gives finite vectors or a typed failure."""
    content = value if isinstance(value, bytes) else _dumps(value)
    parse_embedding(name, content)


HEADER_TEXT = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40)
HOSTILE_HINTS = st.sampled_from(
    [
        "NaN", "nan", "inf", "-inf", "Infinity", "-1", "-0", "0", "1e309", "1e-400", "0x10",
        " 5 ", "5s", "1e18", "9" * 400, "", "Wed, 21 Oct 2015 07:28:00 GMT",
        "Fri, 31 Dec 9999 23:59:59 GMT", "Mon, 99 Foo 2024 99:99:99 GMT", "Thu, 01 Jan 1970",
        "2026-01-01T00:00:00Z", "-5ms", "5m0s", "1h1h", "\t7\t",
    ]
)  # fmt: skip
HINT_HEADERS = st.sampled_from(
    [
        "retry-after", "retry-after-ms", "x-should-retry", "date",
        "x-ratelimit-limit-requests", "x-ratelimit-remaining-requests",
        "x-ratelimit-reset-requests", "x-ratelimit-limit-tokens", "x-ratelimit-reset-tokens",
        "anthropic-ratelimit-requests-limit", "anthropic-ratelimit-requests-remaining",
        "anthropic-ratelimit-requests-reset", "anthropic-ratelimit-tokens-reset",
        "anthropic-ratelimit-input-tokens-reset", "anthropic-ratelimit-output-tokens-limit",
    ]
)  # fmt: skip
HEADERS = st.dictionaries(HINT_HEADERS, HOSTILE_HINTS | HEADER_TEXT, max_size=6)


@pytest.mark.parametrize("name", PROVIDERS)
@FUZZ
@given(
    status=st.integers(300, 599) | st.integers(100, 299),
    value=JSON | st.binary(max_size=48),
    headers=HEADERS,
)
@example(status=429, value=DEEP, headers={})
@example(status=500, value=DEEP_OBJECT, headers={})
@example(status=429, value={"error": {"message": 12, "code": ["x"]}}, headers={})
@example(
    status=429,
    value={
        "error": {"details": [{"@type": "google.rpc.RetryInfo", "retryDelay": {"seconds": 1e999}}]}
    },
    headers={},
)
@example(
    status=429,
    value={
        "error": {
            "details": [{"@type": "google.rpc.RetryInfo", "retryDelay": {"seconds": 10**400}}]
        }
    },
    headers={},
)
@example(status=302, value=b"", headers={"retry-after": "NaN"})
def test_error_responses_always_classify(
    name: str, status: int, value: Any, headers: dict[str, str]
) -> None:
    """Any status, body and hint headers classify to an ErrorInfo; hints are finite and >= 0."""
    content = value if isinstance(value, bytes) else _dumps(value)
    classify(name, status, content, headers)


@pytest.mark.parametrize("name", ["openai", "anthropic"])
@FUZZ
@given(headers=HEADERS, status=st.sampled_from([200, 429, 500]))
def test_rate_limit_headers_are_sane(name: str, headers: dict[str, str], status: int) -> None:
    """Hostile x-ratelimit-* / anthropic-ratelimit-* values are dropped or clamped, never raise."""
    found = PROVIDERS[name].rate_limits(_response(status, b"{}", headers))
    for info in found.limits.values():
        for value in (info.limit, info.remaining, info.reset):
            assert value is None or (isinstance(value, float) and math.isfinite(value))
            assert value is None or value >= 0
        assert info.limit is None or info.limit > 0
        assert info.reset is None or info.reset <= 86_400


@FUZZ
@given(offset=st.integers(-(10**9), 10**9))
@example(offset=0)
@example(offset=-1)
@example(offset=86_400 * 365 * 50)
def test_retry_after_dates_are_honoured(offset: int) -> None:
    """An HTTP-date Retry-After means its distance from now; a date in the past means 0."""
    now = datetime.datetime(2026, 6, 1, 12, 0, 0, tzinfo=datetime.UTC)
    when = now + datetime.timedelta(seconds=offset)
    header = email.utils.format_datetime(when, usegmt=True)
    got = parse_retry_after({"retry-after": header}, now=now)
    assert got == max(offset, 0)


@FUZZ
@given(
    seconds=HOSTILE_HINTS | HEADER_TEXT | st.floats().map(repr),
    ms=st.none() | HOSTILE_HINTS | HEADER_TEXT,
)
@example(seconds="Fri, 31 Dec 9999 23:59:59 GMT", ms=None)
@example(seconds="Mon, 01 Jan 0001 00:00:00 GMT", ms="nan")
@example(seconds="Thu, 01 Jan 1970 00:00:00 -2359", ms="-1")
@example(seconds="1e999", ms="1e999")
def test_retry_after_values_are_finite(seconds: str, ms: str | None) -> None:
    """Any Retry-After / retry-after-ms gives no hint or a finite wait >= 0 (NaN, <0 ignored)."""
    headers = {"retry-after": seconds}
    if ms is not None:
        headers["retry-after-ms"] = ms
    got = parse_retry_after(headers)
    assert got is None or (math.isfinite(got) and got >= 0)
    for name in PROVIDERS:
        info = classify(name, 429, b"{}", headers)
        if got is None:
            assert info.retry_after_s is None
        else:
            # An HTTP date is measured against the wall clock, which moved meanwhile.
            assert info.retry_after_s is not None
            assert abs(info.retry_after_s - got) < 5


@pytest.mark.parametrize("value", ["0.000001", "0.5", "1e-300"])
def test_learned_limits_below_one_are_ignored(value: str) -> None:
    """A server announcing a limit under one request per minute is not believed."""
    found = PROVIDERS["openai"].rate_limits(
        _response(200, b"{}", {"x-ratelimit-limit-requests": value})
    )
    info = found.limits.get("requests")
    assert info is None or info.limit is None or info.limit >= 1


# -- streams -------------------------------------------------------------------------------------

STREAM_OK = {name: events for name, case, events in RECORDED_STREAMS if case.endswith("ok.json")}
# A stream whose text has multi-byte characters, for chunk boundaries inside a character.
STREAM_OK["openai-utf8"] = [
    {"data": {"id": "c", "model": "m", "choices": [{"index": 0, "delta": {"content": t}}]}}
    for t in ("é", "😀 ✓", "ß")
] + [
    {"data": {"id": "c", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}},
    {"data": "[DONE]"},
]


def _stream_provider(key: str) -> str:
    return key.split("-")[0]


def _body(events: list[dict[str, Any]]) -> bytes:
    return render_events(events).encode()


@pytest.mark.parametrize("key", sorted(STREAM_OK))
def test_truncated_streams_never_succeed_short(key: str) -> None:
    """A recorded stream cut at every byte: a cut stream is a failure, never a shorter success."""
    name = _stream_provider(key)
    body = _body(STREAM_OK[key])
    full = parse_stream(name, body)
    assert isinstance(full, Completion)
    successes = 0
    for cut in range(len(body)):
        outcome = parse_stream(name, body[:cut])
        if isinstance(outcome, Completion):
            # Only a cut after the final event may succeed, and then with everything.
            successes += 1
            assert outcome.content == full.content
            assert outcome.finish_reason == full.finish_reason
            assert outcome.usage == full.usage
        else:
            assert outcome.kind is ErrorKind.INVALID_RESPONSE
    assert successes < 8  # at most the trailing newlines after the final event


@pytest.mark.parametrize("name", PROVIDERS)
@FUZZ
@given(
    events=st.lists(
        st.fixed_dictionaries(
            {"data": JSON | st.text(max_size=20)},
            optional={"event": st.sampled_from(VOCABULARY) | st.text(max_size=8)},
        ),
        max_size=6,
    )
)
@example(events=[{"data": {"choices": [{"delta": {"tool_calls": [{"index": 1e400}]}}]}}])
@example(events=[{"data": {"choices": [{"delta": "x"}]}}])
@example(events=[{"data": {"choices": 5}}])
@example(events=[{"data": {"type": "content_block_delta", "index": 1e400, "delta": {}}}])
@example(
    events=[
        {"data": {"type": "message_start", "message": {"usage": {"input_tokens": "x"}}}},
        {"data": {"type": "message_stop"}},
    ]
)
@example(
    events=[
        {"data": {"type": "message_start", "message": {}}},
        {
            "data": {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "input_json_delta", "partial_json": "[" * 50_000},
            }
        },
        {"data": {"type": "message_stop"}},
    ]
)
@example(
    events=[
        {
            "data": {
                "candidates": [{"finishReason": "STOP"}],
                "usageMetadata": {"promptTokenCount": 1e400},
            }
        }
    ]
)
@example(events=[{"data": "[" * 50_000}])
def test_random_stream_events(name: str, events: list[dict[str, Any]]) -> None:
    """Random events fed to each stream parser give deltas and a completion, or a typed failure."""
    parse_stream(name, _body(events))


@pytest.mark.parametrize(("name", "case", "events"), RECORDED_STREAMS, ids=lambda v: str(v)[:40])
@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_mutated_recorded_streams(
    name: str, case: str, events: list[dict[str, Any]], data: st.DataObject
) -> None:
    """Recorded streams with events replaced, dropped or wrapped: each parser stays typed."""
    mutated = data.draw(mutations(events))
    if not isinstance(mutated, list) or not all(isinstance(e, dict) for e in mutated):
        mutated = [{"data": mutated}]
    parse_stream(name, _body(mutated))


@pytest.mark.parametrize("name", PROVIDERS)
@FUZZ
@given(body=st.binary(max_size=200))
@example(body=b"data: \xff\xfe\n\n")
@example(body=b"data: " + b"[" * 50_000 + b"\n\n")
def test_random_stream_bytes(name: str, body: bytes) -> None:
    """Random bytes as an event stream give a typed failure, never an exception of another type."""
    parse_stream(name, body)


async def _read_chunked(name: str, chunks: list[bytes]) -> Completion | ErrorInfo:
    """Read *chunks* through the client's own EventReader, as a live stream arrives."""

    async def body() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk

    request = httpx2.Request("POST", LOOPBACK + "/v1/x")
    response = httpx2.Response(200, headers=SSE_HEADERS, content=body(), request=request)
    reader = EventReader(response, PROVIDERS[name].stream_parser(CHAT), anyio.current_time())
    try:
        await reader.prime()
        deltas = []
        while (delta := await reader.next_delta()) is not None:
            deltas.append(delta)
        completion = reader.completion()
    except Exception as exc:
        # The client re-raises (crashing the batch) whatever stream_failure does not map.
        info = stream_failure(exc)
        if info is None:
            raise
        return info
    finally:
        await reader.aclose()
    assert "".join(deltas) == completion.content
    return completion


def _split(body: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(body) + 1) for c in cuts} | {0, len(body)})
    return [body[a:b] for a, b in itertools.pairwise(points)]


@pytest.mark.parametrize("key", sorted(STREAM_OK))
@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(cuts=st.lists(st.integers(0, 10_000), max_size=30), truncate=st.booleans())
def test_stream_chunk_boundaries(
    anyio_backend_name: str,
    anyio_backend_options: dict[str, Any],
    key: str,
    cuts: list[int],
    truncate: bool,
) -> None:
    """Any split of a recorded stream into chunks parses the same; any truncation fails typed.

    Runs the client's own async event reader on each backend (a sync test calling
    ``anyio.run``, so that hypothesis drives the examples).
    """
    name = _stream_provider(key)
    body = _body(STREAM_OK[key])
    whole = parse_stream(name, body)
    assert isinstance(whole, Completion)
    chunks = _split(body, cuts)
    if truncate and len(chunks) > 1:
        chunks = chunks[:-1]
    outcome: Callable[[], Any] = lambda: _read_chunked(name, chunks)  # noqa: E731
    result = anyio.run(outcome, backend=anyio_backend_name, backend_options=anyio_backend_options)
    if isinstance(result, Completion):
        assert result.content == whole.content
        assert result.finish_reason == whole.finish_reason
        assert result.usage == whole.usage
    else:
        assert truncate
        assert result.kind is ErrorKind.INVALID_RESPONSE
