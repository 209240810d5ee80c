"""A conformance kit for provider adapters: the same assertions for every adapter.

A :class:`Case` is one recorded exchange: a provider-independent request, the HTTP response the
API gave (or would give) to it, and what corral must make of it. :func:`check_provider` runs
every case against an adapter, with no network: adapters are pure, so the kit builds the request,
hands the adapter the recorded response, and compares. Cases load from JSON with
:func:`load_cases`; the format is documented in ``docs/providers.md``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import httpx2

from .._models import (
    ChatRequest,
    Completion,
    EmbeddingRequest,
    EmbeddingResult,
    ErrorInfo,
    ErrorKind,
    Usage,
)
from ..providers._base import (
    EmbeddingProvider,
    InvalidResponse,
    Provider,
    ProviderError,
    StreamingProvider,
)

__all__ = [
    "Case",
    "CaseOutcome",
    "ConformanceReport",
    "Expected",
    "RecordedResponse",
    "check_provider",
    "load_cases",
    "render_events",
]

# Query parameters that carry keys in some APIs' documentation (Gemini's ``?key=``): never use.
_KEY_PARAMS = frozenset({"key", "api_key", "apikey", "api-key", "access_token", "token"})


@attrs.frozen
class RecordedResponse:
    """An HTTP response as the API sent it.

    Args:
        status: The HTTP status.
        headers: The response headers.
        body: The body: a JSON value, or a string sent as is (an event stream, an HTML error
            page).
    """

    status: int = 200
    headers: dict[str, str] = attrs.field(factory=dict)
    body: Any = None

    def content(self) -> bytes:
        """Return the body's bytes."""
        if isinstance(self.body, str):
            return self.body.encode()
        if self.body is None:
            return b""
        return json.dumps(self.body, separators=(",", ":")).encode()

    def to_httpx(self, request: httpx2.Request) -> httpx2.Response:
        """Return the response as a read :class:`httpx2.Response` answering *request*.

        Args:
            request: The request the adapter built.
        """
        headers = dict(self.headers)
        if not any(k.lower() == "content-type" for k in headers):
            headers["content-type"] = (
                "text/plain" if isinstance(self.body, str) else "application/json"
            )
        return httpx2.Response(
            self.status, headers=headers, content=self.content(), request=request
        )


@attrs.frozen
class Expected:
    """What a case must parse to. Fields left as None are not checked.

    A case expects either a success (``content``, ``finish_reason``, ``usage``, ``vectors``)
    or a failure (``kind``, ``retryable``, ``retry_after_s``), never both.

    Args:
        content: The completion's text (for streams: the joined deltas, which must also equal
            the final completion's content).
        finish_reason: The normalised finish reason.
        usage: The normalised usage, exactly.
        vectors: The embedding vectors, exactly.
        kind: The failure's kind.
        retryable: Whether the failure is retryable.
        retry_after_s: The failure's retry hint, in seconds.
    """

    content: str | None = None
    finish_reason: str | None = None
    usage: Usage | None = None
    vectors: list[list[float]] | None = None
    kind: ErrorKind | None = attrs.field(
        default=None, converter=attrs.converters.optional(ErrorKind)
    )
    retryable: bool | None = None
    retry_after_s: float | None = None

    @property
    def failure(self) -> bool:
        """Whether this expects a failure."""
        return self.kind is not None


@attrs.frozen
class Case:
    """One recorded exchange and its expected meaning.

    Args:
        name: A short unique name, shown in reports.
        request: The provider-independent request.
        response: The API's recorded answer.
        expect: What corral must make of it.
        stream: Whether the request is sent as a stream (the response then is an event stream).
        sent_path: The URL path the adapter must build, if checked.
        sent_body: The JSON body the adapter must build, exactly, if checked.
    """

    name: str
    request: ChatRequest | EmbeddingRequest
    response: RecordedResponse
    expect: Expected = attrs.field(factory=Expected)
    stream: bool = False
    sent_path: str | None = None
    sent_body: Any = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Case:
        """Build a case from its JSON form (see ``docs/providers.md``).

        Args:
            data: The decoded JSON object.
        """
        name = str(data["name"])
        if "embedding_request" in data:
            request: ChatRequest | EmbeddingRequest = EmbeddingRequest.from_openai(
                data["embedding_request"], id=name
            )
        else:
            request = ChatRequest.from_openai(data["request"], id=name)
        raw_response = data.get("response") or {}
        if "events" in raw_response:
            body: Any = render_events(raw_response["events"])
            headers = {"content-type": "text/event-stream", **raw_response.get("headers", {})}
        else:
            body = raw_response.get("json", raw_response.get("text"))
            headers = dict(raw_response.get("headers", {}))
        response = RecordedResponse(int(raw_response.get("status", 200)), headers, body)
        raw_expect = dict(data.get("expect") or {})
        if "usage" in raw_expect:
            raw_expect["usage"] = Usage(**raw_expect["usage"])
        sent = data.get("sent") or {}
        return cls(
            name=name,
            request=request,
            response=response,
            expect=Expected(**raw_expect),
            stream=bool(data.get("stream", False)),
            sent_path=sent.get("path"),
            sent_body=sent.get("body"),
        )


def render_events(events: Iterable[Mapping[str, Any]]) -> str:
    """Render events as a ``text/event-stream`` body.

    Each event is ``{"event": name?, "data": JSON value or raw string}``.

    Args:
        events: The events, in order.
    """
    lines = []
    for event in events:
        if event.get("event"):
            lines.append(f"event: {event['event']}")
        data = event.get("data", "")
        text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
        lines.extend(f"data: {line}" for line in text.split("\n"))
        lines.append("")
    return "\n".join(lines) + "\n"


def load_cases(path: str | Path) -> list[Case]:
    """Load cases from a JSON file (one case or a list) or from every ``*.json`` in a folder.

    Args:
        path: A file or a folder.
    """
    path = Path(path)
    files = sorted(path.glob("*.json")) if path.is_dir() else [path]
    cases: list[Case] = []
    for file in files:
        data = json.loads(file.read_text(encoding="utf-8"))
        for item in data if isinstance(data, list) else [data]:
            try:
                cases.append(Case.from_dict(item))
            except (KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"{file}: bad case {item.get('name')!r}: {exc}") from exc
    return cases


@attrs.frozen
class CaseOutcome:
    """The result of one case.

    Args:
        name: The case's name.
        problems: What did not conform; empty when the case passed.
    """

    name: str
    problems: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        """Whether the case passed."""
        return not self.problems


@attrs.frozen
class ConformanceReport:
    """Every case's outcome for one adapter.

    Args:
        provider: The adapter's repr.
        outcomes: One outcome per case, in order.
    """

    provider: str
    outcomes: tuple[CaseOutcome, ...]

    @property
    def passed(self) -> bool:
        """Whether every case passed."""
        return all(o.passed for o in self.outcomes)

    @property
    def failures(self) -> list[CaseOutcome]:
        """The cases that failed."""
        return [o for o in self.outcomes if not o.passed]

    def __str__(self) -> str:
        ok = sum(o.passed for o in self.outcomes)
        lines = [f"{self.provider}: {ok}/{len(self.outcomes)} case(s) conform"]
        for outcome in self.failures:
            lines.append(f"  FAILED {outcome.name}:")
            lines.extend(f"    - {p}" for p in outcome.problems)
        return "\n".join(lines)


def check_provider(
    provider: Provider,
    cases: Iterable[Case],
    *,
    api_key: str | None = None,
    raise_on_failure: bool = True,
) -> ConformanceReport:
    """Run every case against *provider* and report what does not conform.

    For each case it checks that:

    - the built request is a POST to an absolute http(s) URL (with the expected path and JSON
      body, when the case records them), with a JSON content type, and with credentials only
      in headers: never in the URL, never in the body;
    - a 2xx answer parses to a result for the request's id with the expected content, finish
      reason, vectors and usage, and a usage that is internally consistent (``input_tokens``
      covers the cached and cache-write tokens, ``output_tokens`` covers reasoning);
    - an error answer (or a 2xx that reports a failure) maps to the expected kind, retry
      decision and retry hint, keeping the HTTP status;
    - a stream's deltas join to the expected text, equal to the final completion's content, and
      a stream cut before its final event is ``invalid_response``, never a success;
    - the adapter's repr does not show the key.

    Args:
        provider: The adapter under test.
        cases: The cases.
        api_key: The key *provider* was built with; enables the credential checks.
        raise_on_failure: Raise :class:`AssertionError` with the report when a case fails.
    """
    outcomes = []
    for case in cases:
        problems: list[str] = []
        try:
            _check_case(provider, case, api_key, problems)
        except Exception as exc:  # the kit reports a crashing adapter instead of dying
            problems.append(f"raised {type(exc).__name__}: {exc}")
        outcomes.append(CaseOutcome(case.name, tuple(problems)))
    if api_key and api_key in repr(provider):
        outcomes.append(CaseOutcome("repr", ("the adapter's repr shows the API key",)))
    report = ConformanceReport(repr(provider), tuple(outcomes))
    if raise_on_failure and not report.passed:
        raise AssertionError(str(report))
    return report


def _check_case(provider: Provider, case: Case, api_key: str | None, problems: list[str]) -> None:
    request = case.request
    if isinstance(request, EmbeddingRequest):
        if not isinstance(provider, EmbeddingProvider):
            problems.append("the adapter has no embeddings (not an EmbeddingProvider)")
            return
        built = provider.build_embedding_request(request)
    elif case.stream:
        if not isinstance(provider, StreamingProvider):
            problems.append("the adapter cannot stream (not a StreamingProvider)")
            return
        built = provider.build_stream_request(request)
    else:
        built = provider.build_request(request)
    _check_built(built, case, api_key, problems)
    response = case.response.to_httpx(built)
    if case.stream and 200 <= response.status_code < 300:
        assert isinstance(request, ChatRequest)
        assert isinstance(provider, StreamingProvider)
        _check_stream(provider, request, response, case.expect, problems)
    elif 200 <= response.status_code < 300:
        try:
            result: Completion | EmbeddingResult
            if isinstance(request, EmbeddingRequest):
                assert isinstance(provider, EmbeddingProvider)
                result = provider.parse_embedding_response(request, response)
            else:
                result = provider.parse_response(request, response)
        except ProviderError as exc:
            _check_error(exc.info, case.expect, None, problems)
            return
        except InvalidResponse as exc:
            _check_error(
                ErrorInfo(ErrorKind.INVALID_RESPONSE, str(exc)), case.expect, None, problems
            )
            return
        _check_success(result, request.id, case.expect, problems)
    else:
        info = provider.classify_error(response)
        _check_error(info, case.expect, response.status_code, problems)


def _check_built(
    built: httpx2.Request, case: Case, api_key: str | None, problems: list[str]
) -> None:
    if built.method != "POST":
        problems.append(f"request method is {built.method}, expected POST")
    if built.url.scheme not in ("http", "https") or not built.url.host:
        problems.append(f"request URL {built.url} is not an absolute http(s) URL")
    for name, _ in built.url.params.multi_items():
        if name.lower() in _KEY_PARAMS:
            problems.append(f"request URL carries a {name!r} query parameter: keys go in headers")
    if case.sent_path is not None and built.url.path != case.sent_path:
        problems.append(f"request path is {built.url.path!r}, expected {case.sent_path!r}")
    if "json" not in built.headers.get("content-type", ""):
        problems.append("request content-type is not JSON")
    content = built.read()
    try:
        body = json.loads(content)
    except ValueError:
        problems.append("request body is not JSON")
        body = None
    if body is not None and not isinstance(body, dict):
        problems.append("request body is not a JSON object")
    if case.sent_body is not None and body != case.sent_body:
        problems.append(
            f"request body differs from the recorded one:\n      built:    "
            f"{json.dumps(body, sort_keys=True)}\n      recorded: "
            f"{json.dumps(case.sent_body, sort_keys=True)}"
        )
    if api_key:
        if api_key in str(built.url):
            problems.append("the API key appears in the request URL")
        if api_key.encode() in content:
            problems.append("the API key appears in the request body")
        if not any(api_key in value for value in built.headers.values()):
            problems.append("the API key is in no request header")


def _check_usage(usage: Usage, expect: Usage | None, problems: list[str]) -> None:
    if usage.cached_input_tokens + usage.cache_write_tokens > usage.input_tokens:
        problems.append(
            f"usage.input_tokens ({usage.input_tokens}) does not include the cached "
            f"({usage.cached_input_tokens}) and cache-write ({usage.cache_write_tokens}) tokens"
        )
    if usage.reasoning_tokens > usage.output_tokens:
        problems.append(
            f"usage.output_tokens ({usage.output_tokens}) does not include the reasoning "
            f"tokens ({usage.reasoning_tokens})"
        )
    if expect is not None and usage != expect:
        problems.append(f"usage is {usage}, expected {expect}")


def _check_success(
    result: Completion | EmbeddingResult, request_id: str, expect: Expected, problems: list[str]
) -> None:
    if expect.failure:
        problems.append(f"parsed to a success, expected a {expect.kind} failure")
        return
    if result.id != request_id:
        problems.append(f"result id is {result.id!r}, expected the request's {request_id!r}")
    _check_usage(result.usage, expect.usage, problems)
    if isinstance(result, EmbeddingResult):
        if expect.vectors is not None and result.vectors != expect.vectors:
            problems.append(f"vectors are {result.vectors}, expected {expect.vectors}")
        return
    if expect.content is not None and result.content != expect.content:
        problems.append(f"content is {result.content!r}, expected {expect.content!r}")
    if expect.finish_reason is not None and result.finish_reason != expect.finish_reason:
        problems.append(
            f"finish_reason is {result.finish_reason!r}, expected {expect.finish_reason!r}"
        )
    if not isinstance(result.raw, dict):
        problems.append("raw is not the provider's JSON object")


def _check_error(
    info: ErrorInfo, expect: Expected, status: int | None, problems: list[str]
) -> None:
    if not expect.failure:
        problems.append(f"failed as {info.kind.value} ({info.message}), expected a success")
        return
    if info.kind != expect.kind:
        problems.append(f"error kind is {info.kind.value}, expected {expect.kind}")
    if expect.retryable is not None and info.retryable != expect.retryable:
        problems.append(f"retryable is {info.retryable}, expected {expect.retryable}")
    if expect.retry_after_s is not None and (
        info.retry_after_s is None or not math.isclose(info.retry_after_s, expect.retry_after_s)
    ):
        problems.append(f"retry_after_s is {info.retry_after_s}, expected {expect.retry_after_s}")
    if status is not None and info.status_code != status:
        problems.append(f"status_code is {info.status_code}, expected {status}")
    if not info.message:
        problems.append("the error has no message")


def _check_stream(
    provider: StreamingProvider,
    request: ChatRequest,
    response: httpx2.Response,
    expect: Expected,
    problems: list[str],
) -> None:
    parser = provider.stream_parser(request)
    deltas: Sequence[str] = []
    try:
        collected = []
        for event in httpx2.EventSource(response):
            delta = parser.feed(event)
            if not isinstance(delta, str):
                problems.append(f"feed() returned {type(delta).__name__}, expected str")
                return
            if delta:
                collected.append(delta)
        deltas = collected
        completion = parser.result()
    except ProviderError as exc:
        _check_error(exc.info, expect, None, problems)
        return
    except InvalidResponse as exc:
        if parser.done:
            problems.append(f"done is True but the stream did not parse: {exc}")
        _check_error(ErrorInfo(ErrorKind.INVALID_RESPONSE, str(exc)), expect, None, problems)
        return
    if not parser.done:
        problems.append("result() succeeded but done is False")
    joined = "".join(deltas)
    if joined != completion.content:
        problems.append(
            f"the deltas join to {joined!r} but the completion's content is {completion.content!r}"
        )
    _check_success(completion, request.id, expect, problems)
