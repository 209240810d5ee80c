"""The pieces the mock server's API modules share: ASGI types, replies, errors and work items."""

from __future__ import annotations

import datetime
import json
import math
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any, TypeAlias

import attrs

from .config import MockConfig
from .limits import Denial, LimitState

__all__ = [
    "Api",
    "ApiError",
    "Context",
    "Headers",
    "Message",
    "Receive",
    "Reply",
    "Scope",
    "Send",
    "Work",
    "context_check",
    "dumps",
    "json_reply",
    "load_object",
    "optional_int",
    "retry_after_header",
    "sse_reply",
]

Scope: TypeAlias = MutableMapping[str, Any]
Message: TypeAlias = MutableMapping[str, Any]
Receive: TypeAlias = Callable[[], Awaitable[Message]]
Send: TypeAlias = Callable[[Message], Awaitable[None]]
Headers: TypeAlias = list[tuple[bytes, bytes]]

_JSON = (b"content-type", b"application/json")
_SSE = (b"content-type", b"text/event-stream; charset=utf-8")


def dumps(value: object) -> bytes:
    """Encode JSON compactly, as the real APIs send it."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


class Reply:
    """A response ready to send: a JSON body, or the events of a stream.

    Args:
        status: The HTTP status.
        headers: Response headers.
        body: The body of a non-streamed response.
        events: The encoded events of a streamed response, in order.
        tail: How many trailing events make up the stream's end (dropped by the truncate fault).
        output_tokens: Output tokens produced, to settle the rate-limit reservation with.
    """

    __slots__ = ("body", "events", "headers", "output_tokens", "status", "tail")

    def __init__(
        self,
        status: int,
        headers: Headers,
        body: bytes = b"",
        *,
        events: list[bytes] | None = None,
        tail: int = 0,
        output_tokens: int = 0,
    ) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.events = events
        self.tail = tail
        self.output_tokens = output_tokens

    def __repr__(self) -> str:
        size = (
            f"events={len(self.events)}" if self.events is not None else f"body={len(self.body)}B"
        )
        return f"<Reply status={self.status} {size}>"


def json_reply(status: int, value: object, *, output_tokens: int = 0) -> Reply:
    """Build a JSON reply."""
    body = dumps(value)
    return Reply(status, [_JSON], body, output_tokens=output_tokens)


def sse_reply(events: list[bytes], *, tail: int, output_tokens: int, sse: bool = True) -> Reply:
    """Build a streamed reply: server-sent events, or (``sse=False``) a streamed JSON body."""
    headers: Headers = [_SSE, (b"cache-control", b"no-cache")] if sse else [_JSON]
    return Reply(200, headers, events=events, tail=tail, output_tokens=output_tokens)


class ApiError(Exception):
    """An error the mock answers in the API's own envelope.

    Args:
        status: The HTTP status.
        reason: What happened: ``"invalid"``, ``"auth_missing"``, ``"auth_invalid"``,
            ``"not_found"``, ``"method"``, ``"context_length"``, ``"too_large"``, ``"outage"``,
            ``"quota"``, ``"rate_limit"`` or ``"injected"``.
        message: The human-readable message.
        param: The offending request field, where the API reports one.
        code: A machine-readable code, where the API has one (``"context_length_exceeded"``).
        retry_after: Seconds the client should wait, sent as the API sends retry hints.
        denial: For ``"rate_limit"``: the limit that ran out.
        limits: For ``"rate_limit"``: the state of every limit, for the headers.
    """

    def __init__(
        self,
        status: int,
        reason: str,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
        denial: Denial | None = None,
        limits: Mapping[str, LimitState] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message
        self.param = param
        self.code = code
        self.retry_after = retry_after
        self.denial = denial
        self.limits = limits

    def __repr__(self) -> str:
        return f"ApiError({self.status}, {self.reason!r}, {self.message!r})"


@attrs.frozen
class Work:
    """A parsed, valid request, in the terms the server needs to admit and answer it.

    Attributes:
        op: The operation, for example ``"chat"``, ``"embed"`` or ``"models"``.
        model: The requested model ("" when the operation has none).
        input_tokens: Input tokens, counted by the mock tokenizer.
        output_reserve: The most output tokens the request may produce.
        limited: Whether rate limits and the daily quota apply.
        cache_prefix: The system prompt or first message, when long enough to be cached.
        payload: The API module's own parsed request.
    """

    op: str
    model: str = ""
    input_tokens: int = 0
    output_reserve: int = 0
    limited: bool = False
    cache_prefix: str | None = None
    payload: Any = None


class Context:
    """Per-request facts an API module needs to render a reply; the server fills them in.

    Args:
        config: The server's configuration.
        request_id: This response's id, for the request-id header and response ids.
        now: The wall-clock time of the response.
        query: The query string's parameters.
    """

    __slots__ = (
        "cache_read",
        "cache_write",
        "config",
        "limits",
        "model",
        "now",
        "query",
        "request_id",
    )

    def __init__(
        self,
        config: MockConfig,
        request_id: str,
        now: datetime.datetime,
        query: Mapping[str, str],
    ) -> None:
        self.config = config
        self.request_id = request_id
        self.now = now
        self.query = query
        #: The requested model, once the body is parsed.
        self.model = ""
        #: Prompt tokens served from the mock's prompt cache.
        self.cache_read = 0
        #: Prompt tokens written to the cache by this request.
        self.cache_write = 0
        #: Rate-limit state per dimension, for the headers.
        self.limits: Mapping[str, LimitState] = {}

    @property
    def created(self) -> int:
        """The response time in whole seconds since the epoch, for ``created`` fields."""
        return int(self.now.timestamp())

    def __repr__(self) -> str:
        return f"<Context request_id={self.request_id!r} model={self.model!r}>"


class Api:
    """What each emulated API (OpenAI, Anthropic, Gemini) provides to the server.

    Args:
        config: The server's configuration (its key, seed, context window and so on).
    """

    __slots__ = ("_config",)

    #: The family name: rate limits, caches and error envelopes are per family.
    family: str = ""
    #: The status every request gets during an outage window.
    outage_status: int = 503

    def __init__(self, config: MockConfig) -> None:
        self._config = config

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def authenticate(self, headers: Mapping[str, str], query: Mapping[str, str]) -> None:
        """Raise `ApiError` unless the request carries an acceptable key."""
        raise NotImplementedError

    def parse(
        self,
        op: str,
        model: str,
        body: bytes,
        headers: Mapping[str, str],
        query: Mapping[str, str],
    ) -> Work:
        """Validate a request body; raise `ApiError` for what the real API would refuse."""
        raise NotImplementedError

    def render(self, work: Work, ctx: Context) -> Reply:
        """Answer a parsed request."""
        raise NotImplementedError

    def error(self, error: ApiError, ctx: Context) -> Reply:
        """Render `error` in the API's error envelope, with its retry hint."""
        raise NotImplementedError

    def add_headers(self, reply: Reply, ctx: Context, processing_s: float) -> None:
        """Add the API's own response headers: request id, rate limits, timings."""
        raise NotImplementedError


def load_object(body: bytes) -> dict[str, Any]:
    """Decode a JSON object body, or raise the 400 that the real APIs send."""
    try:
        value = json.loads(body)
    except ValueError as exc:
        raise ApiError(400, "invalid", f"The request body is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise ApiError(400, "invalid", "The request body must be a JSON object.")
    return value


def retry_after_header(seconds: float) -> tuple[bytes, bytes]:
    """Return a ``retry-after`` header: whole seconds, rounded up, as HTTP requires."""
    return (b"retry-after", str(max(0, math.ceil(seconds))).encode())


def optional_int(
    data: Mapping[str, Any], name: str, *, minimum: int, maximum: int | None = None
) -> int | None:
    """Read an optional integer field, or raise the 400 for a wrong type or range."""
    value = data.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(400, "invalid", f"{name}: Input should be a valid integer", param=name)
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
        raise ApiError(400, "invalid", f"{name}: Input should be {bound}", param=name)
    return value


def context_check(input_tokens: int, max_tokens: int | None, window: int) -> None:
    """Raise the context-length error when input plus output budget exceeds the window."""
    requested = input_tokens + (max_tokens or 0)
    if requested > window:
        raise ApiError(
            400,
            "context_length",
            f"This model's maximum context length is {window} tokens. However, you requested"
            f" {requested} tokens ({input_tokens} in the messages, {max_tokens or 0} in the"
            " completion). Please reduce the length of the messages or completion.",
            param="messages",
            code="context_length_exceeded",
        )
