"""The OpenAI-compatible adapter (OpenAI, DeepSeek, vLLM, SGLang...): chat, streams, embeddings."""

from __future__ import annotations

import base64
import math
import sys
from array import array
from typing import Any, Final

import httpx2

from .._models import (
    ChatRequest,
    Completion,
    EmbeddingRequest,
    EmbeddingResult,
    ErrorInfo,
    ErrorKind,
    RateLimitHeaders,
    Usage,
)
from .._secret import Secret
from .._version import __version__
from ._base import (
    PARSE_ERRORS,
    InvalidResponse,
    ProviderError,
    StreamParser,
    add_request_id,
    as_text,
    base_headers,
    body_excerpt,
    check_api_key,
    check_base_url,
    check_headers,
    check_options,
    decode_json,
    details,
    error_info,
    input_token_bound,
    loads,
    post_json,
    resolve_key,
    text_or_none,
    token_count,
    try_json,
)
from ._headers import parse_rate_limit_headers

__all__ = ["OpenAI"]

DEFAULT_BASE_URL: Final = "https://api.openai.com/v1"

_CONTEXT_CODES: Final = frozenset({"context_length_exceeded", "string_above_max_length"})
_FILTER_CODES: Final = frozenset({"content_filter", "content_policy_violation"})

# Error ``type``/``code`` values that can arrive inside a stream, where there is no status.
_STREAM_ERROR_KINDS: Final[dict[str, tuple[ErrorKind, bool]]] = {
    "invalid_request_error": (ErrorKind.BAD_REQUEST, False),
    "authentication_error": (ErrorKind.AUTHENTICATION, False),
    "permission_error": (ErrorKind.PERMISSION, False),
    "not_found_error": (ErrorKind.NOT_FOUND, False),
    "rate_limit_exceeded": (ErrorKind.RATE_LIMITED, True),
    "rate_limit_error": (ErrorKind.RATE_LIMITED, True),
    "insufficient_quota": (ErrorKind.QUOTA_EXHAUSTED, False),
    "overloaded": (ErrorKind.OVERLOADED, True),
    "overloaded_error": (ErrorKind.OVERLOADED, True),
}


class OpenAI:
    """Speak the OpenAI ``/chat/completions`` and ``/embeddings`` APIs, or a compatible server.

    Streams ask for ``stream_options.include_usage`` so that a streamed completion reports its
    usage like a non-streamed one; an ``extra`` that sets ``stream_options`` itself wins.

    Args:
        base_url: The API root, up to and including the version (``.../v1``).
        api_key: The key; read from *api_key_env* when not given. Loopback servers need none.
        api_key_env: The environment variable that holds the key.
        organization: Sent as ``OpenAI-Organization`` when given.
        project: Sent as ``OpenAI-Project`` when given.
        headers: Extra headers for every request (never put secrets here: use *api_key*).
    """

    __slots__ = ("_api_key", "_base_url", "_chat_url", "_embeddings_url", "_static_headers")

    name = "openai"

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        *,
        api_key: str | Secret | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        organization: str | None = None,
        project: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self._base_url = check_base_url(base_url, "OpenAI")
        check_api_key(api_key, "OpenAI")
        check_headers(headers, "OpenAI")
        check_options(
            "OpenAI",
            api_key_env=(api_key_env, False),
            organization=(organization, True),
            project=(project, True),
        )
        self._api_key = resolve_key(api_key, api_key_env, self._base_url, "OpenAI")
        self._chat_url = httpx2.URL(self._base_url + "/chat/completions")
        self._embeddings_url = httpx2.URL(self._base_url + "/embeddings")
        static = base_headers(f"corral/{__version__}", None)
        if organization:
            static["openai-organization"] = organization
        if project:
            static["openai-project"] = project
        static.update({k.lower(): v for k, v in (headers or {}).items()})
        self._static_headers = static

    def __repr__(self) -> str:
        return f"OpenAI(base_url={self._base_url!r}, api_key={self._api_key!r})"

    @property
    def endpoint(self) -> str:
        """The API root this adapter talks to."""
        return self._base_url

    # -- chat -----------------------------------------------------------------------------

    def body(self, request: ChatRequest) -> dict[str, Any]:
        """Return the JSON body for *request*.

        Args:
            request: The request.
        """
        messages = []
        for m in request.messages:
            content: Any = m.content
            if content == "" and m.extra.get("tool_calls"):
                # An assistant turn that only calls tools has null content in OpenAI's shape.
                content = None
            msg: dict[str, Any] = {"role": m.role, "content": content}
            if m.name is not None:
                msg["name"] = m.name
            if m.extra:
                msg.update(m.extra)
            messages.append(msg)
        body: dict[str, Any] = {"model": request.model, "messages": messages}
        if request.max_tokens is not None:
            body["max_tokens"] = request.max_tokens
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.top_p is not None:
            body["top_p"] = request.top_p
        if request.stop is not None:
            body["stop"] = list(request.stop)
        if request.extra:
            body.update(request.extra)
        return body

    def _headers(self, request_id: str) -> dict[str, str]:
        headers = dict(self._static_headers)
        key = self._api_key.reveal()
        if key:
            headers["authorization"] = f"Bearer {key}"
        add_request_id(headers, request_id)
        return headers

    def build_request(self, request: ChatRequest) -> httpx2.Request:
        """Build the POST to ``/chat/completions`` for *request*.

        Args:
            request: The request.
        """
        body = self.body(request)
        body.pop("stream", None)
        body.pop("stream_options", None)
        return post_json(self._chat_url, self._headers(request.id), body)

    def build_stream_request(self, request: ChatRequest) -> httpx2.Request:
        """Build the streaming POST to ``/chat/completions`` for *request*.

        Args:
            request: The request.
        """
        body = self.body(request)
        body["stream"] = True
        body.setdefault("stream_options", {"include_usage": True})
        headers = self._headers(request.id)
        headers["accept"] = "text/event-stream"
        return post_json(self._chat_url, headers, body)

    def max_input_tokens(
        self, request: ChatRequest | EmbeddingRequest, http_request: httpx2.Request
    ) -> int:
        """Return the most input tokens OpenAI can bill for *http_request* (budget reservations).

        The body's bytes bound its text (see `input_token_bound`). OpenAI's chat format adds 3
        tokens per message (4 with a name) and 3 to prime the reply; 8 and 16 are reserved.
        Tool definitions are rendered into a hidden preamble: 1,024 more when the body has
        tools or a response format. An image costs at most 48,169 tokens (gpt-4o-mini's rate,
        the dearest documented: 2,833 + 5,667 for each of up to 8 tiles of 512 px).

        Args:
            request: The request.
            http_request: The HTTP request built for it.
        """
        preamble = "tools" in request.extra or "response_format" in request.extra
        tools = isinstance(request, ChatRequest) and preamble
        return input_token_bound(
            request,
            http_request,
            per_message=8,
            per_request=16 + (1024 if tools else 0),
            per_image=48_169,
        )

    def parse_response(self, request: ChatRequest, response: httpx2.Response) -> Completion:
        """Parse a chat completion.

        Args:
            request: The request that was sent.
            response: The read 2xx response.
        """
        data = decode_json(response)
        if isinstance(data, dict) and isinstance(data.get("error"), dict | str):
            raise ProviderError(_stream_error(data["error"]))
        try:
            choice = data["choices"][0]
            message = choice.get("message") or {}
            content = message.get("content")
            if content is None:
                content = ""
            if not isinstance(content, str):
                raise InvalidResponse("choices[0].message.content is not a string")
            usage = parse_usage(data.get("usage"))
            return Completion(
                id=request.id,
                model=as_text(data.get("model")) or request.model,
                content=content,
                finish_reason=text_or_none(choice.get("finish_reason")),
                usage=usage,
                raw=data,
            )
        except PARSE_ERRORS as exc:
            raise InvalidResponse(f"not a chat completion: {exc!r}") from exc

    def stream_parser(self, request: ChatRequest) -> StreamParser:
        """Return a parser for one streamed attempt of *request*.

        Args:
            request: The request that was sent.
        """
        return OpenAIStreamParser(request)

    def classify_error(self, response: httpx2.Response) -> ErrorInfo:
        """Describe an OpenAI error response.

        Args:
            response: The read non-2xx response.
        """
        message = f"HTTP {response.status_code}"
        code: str | None = None
        data = try_json(response)
        err = data.get("error") if isinstance(data, dict) else None
        if isinstance(err, dict):
            message = as_text(err.get("message")) or message
            code = text_or_none(err.get("code") or err.get("type"))
        elif isinstance(err, str):
            message = err
        elif data is None:
            text = body_excerpt(response)
            if text:
                message = f"{message}: {text}"
        kind = None
        if code in _CONTEXT_CODES:
            kind = ErrorKind.CONTEXT_LENGTH
        elif code in _FILTER_CODES:
            kind = ErrorKind.CONTENT_FILTER
        elif response.status_code == 429 and code == "insufficient_quota":
            kind = ErrorKind.QUOTA_EXHAUSTED
        info = error_info(response, message, provider_code=code, kind_override=kind)
        if kind is ErrorKind.QUOTA_EXHAUSTED:
            # More attempts cannot help until the account is topped up.
            info = ErrorInfo(
                info.kind,
                info.message,
                info.status_code,
                False,
                info.retry_after_s,
                info.provider_code,
            )
        return info

    # -- embeddings -----------------------------------------------------------------------

    def build_embedding_request(self, request: EmbeddingRequest) -> httpx2.Request:
        """Build the POST to ``/embeddings`` for *request*.

        Vectors are asked for as floats unless ``extra`` sets ``encoding_format`` (base64
        answers are decoded too).

        Args:
            request: The embedding request.
        """
        body: dict[str, Any] = {
            "model": request.model,
            "input": request.input if isinstance(request.input, str) else list(request.input),
            "encoding_format": "float",
        }
        if request.dimensions is not None:
            body["dimensions"] = request.dimensions
        body.update(request.extra)
        return post_json(self._embeddings_url, self._headers(request.id), body)

    def parse_embedding_response(
        self, request: EmbeddingRequest, response: httpx2.Response
    ) -> EmbeddingResult:
        """Parse an ``/embeddings`` answer into one vector per input, in input order.

        Args:
            request: The request that was sent.
            response: The read 2xx response.
        """
        data = decode_json(response)
        try:
            items = sorted(data["data"], key=lambda item: int(item.get("index") or 0))
            vectors = [_vector(item["embedding"]) for item in items]
            usage = Usage(input_tokens=token_count(details(data.get("usage")), "prompt_tokens"))
            model = as_text(data.get("model")) or request.model
        except PARSE_ERRORS as exc:
            raise InvalidResponse(f"not an embeddings response: {exc!r}") from exc
        if len(vectors) != len(request.texts):
            raise InvalidResponse(
                f"asked for {len(request.texts)} embedding(s), got {len(vectors)}"
            )
        return EmbeddingResult(request.id, model, vectors, usage, raw=data)

    # -- rate limits ----------------------------------------------------------------------

    def rate_limits(self, response: httpx2.Response) -> RateLimitHeaders:
        """Read ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}``.

        Args:
            response: Any response.
        """
        return parse_rate_limit_headers(response.headers)


class OpenAIStreamParser:
    """Assemble an OpenAI ``chat.completion.chunk`` stream; the final event is ``[DONE]``."""

    __slots__ = ("_done", "_finish", "_meta", "_parts", "_request", "_tool_calls", "_usage")

    def __init__(self, request: ChatRequest) -> None:
        self._request = request
        self._parts: list[str] = []
        self._finish: str | None = None
        self._usage: dict[str, Any] | None = None
        self._meta: dict[str, Any] = {}
        self._tool_calls: dict[int, dict[str, Any]] = {}
        self._done = False

    def __repr__(self) -> str:
        return (
            f"<OpenAIStreamParser {self._request.id!r} deltas={len(self._parts)} done={self._done}>"
        )

    @property
    def done(self) -> bool:
        """Whether ``data: [DONE]`` arrived."""
        return self._done

    def feed(self, event: httpx2.ServerSentEvent) -> str:
        """Take one chunk; return its text.

        Args:
            event: The next event.
        """
        data = event.data
        if data.strip() == "[DONE]":
            self._done = True
            return ""
        if not data.strip():
            return ""
        chunk = loads(data, "stream chunk")
        if not isinstance(chunk, dict):
            raise InvalidResponse("stream chunk is not a JSON object")
        if "error" in chunk:
            raise ProviderError(_stream_error(chunk["error"]))
        try:
            return self._take(chunk)
        except PARSE_ERRORS as exc:
            raise InvalidResponse(f"bad stream chunk: {exc!r}") from exc

    def _take(self, chunk: dict[str, Any]) -> str:
        for key in ("id", "created", "model", "system_fingerprint"):
            if chunk.get(key) is not None:
                self._meta[key] = chunk[key]
        if chunk.get("usage"):
            self._usage = chunk["usage"]
        text = ""
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            content = delta.get("content")
            if isinstance(content, str):
                text += content
            for call in delta.get("tool_calls") or ():
                self._merge_tool_call(call)
            if choice.get("finish_reason"):
                self._finish = as_text(choice["finish_reason"])
        if text:
            self._parts.append(text)
        return text

    def _merge_tool_call(self, call: dict[str, Any]) -> None:
        slot = self._tool_calls.setdefault(
            int(call.get("index", 0)),
            {"id": "", "type": "function", "function": {"name": "", "arguments": ""}},
        )
        if call.get("id"):
            slot["id"] = call["id"]
        function = call.get("function") or {}
        if function.get("name"):
            slot["function"]["name"] += function["name"]
        if function.get("arguments"):
            slot["function"]["arguments"] += function["arguments"]

    def result(self) -> Completion:
        """Return the completion; raise :class:`InvalidResponse` before ``[DONE]``."""
        if not self._done:
            raise InvalidResponse("the stream ended before its final event (data: [DONE])")
        content = "".join(self._parts)
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if self._tool_calls:
            message["tool_calls"] = [self._tool_calls[i] for i in sorted(self._tool_calls)]
        model = as_text(self._meta.get("model")) or self._request.model
        raw: dict[str, Any] = {
            "id": self._meta.get("id", ""),
            "object": "chat.completion",
            "created": self._meta.get("created", 0),
            "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": self._finish}],
        }
        if "system_fingerprint" in self._meta:
            raw["system_fingerprint"] = self._meta["system_fingerprint"]
        if self._usage is not None:
            raw["usage"] = self._usage
        usage = parse_usage(self._usage)
        return Completion(
            id=self._request.id,
            model=model,
            content=content,
            finish_reason=self._finish,
            usage=usage,
            raw=raw,
        )


def _stream_error(err: Any) -> ErrorInfo:
    if isinstance(err, str):
        return ErrorInfo(ErrorKind.SERVER_ERROR, err, retryable=True)
    if not isinstance(err, dict):
        return ErrorInfo(ErrorKind.SERVER_ERROR, "error event without details", retryable=True)
    message = as_text(err.get("message")) or "error event in stream"
    code = text_or_none(err.get("code") or err.get("type"))
    if code in _CONTEXT_CODES:
        return ErrorInfo(ErrorKind.CONTEXT_LENGTH, message, provider_code=code)
    if code in _FILTER_CODES:
        return ErrorInfo(ErrorKind.CONTENT_FILTER, message, provider_code=code)
    for candidate in (err.get("code"), err.get("type")):
        known = _STREAM_ERROR_KINDS.get(as_text(candidate))
        if known is not None:
            return ErrorInfo(known[0], message, retryable=known[1], provider_code=code)
    return ErrorInfo(ErrorKind.SERVER_ERROR, message, retryable=True, provider_code=code)


def _vector(value: Any) -> list[float]:
    if isinstance(value, str):
        # encoding_format=base64: little-endian float32s.
        floats = array("f")
        floats.frombytes(base64.b64decode(value, validate=True))
        if sys.byteorder != "little":
            floats.byteswap()
        return floats.tolist()
    if not isinstance(value, list):
        raise TypeError("an embedding must be a list of numbers or a base64 string")
    vector = [float(x) for x in value]
    if not all(math.isfinite(x) for x in vector):
        raise ValueError("an embedding has a NaN or infinite component")
    return vector


def parse_usage(raw: Any) -> Usage:
    """Normalise an OpenAI ``usage`` object.

    Reads ``prompt_tokens_details.cached_tokens`` and, for DeepSeek, which reports its cache
    instead as ``prompt_cache_hit_tokens``, that field.

    Args:
        raw: The ``usage`` object, or None.
    """
    if not isinstance(raw, dict):
        return Usage()
    prompt_details = details(raw.get("prompt_tokens_details"))
    if prompt_details.get("cached_tokens") is not None:
        cached = token_count(prompt_details, "cached_tokens")
    else:
        cached = token_count(raw, "prompt_cache_hit_tokens")
    return Usage(
        input_tokens=token_count(raw, "prompt_tokens"),
        output_tokens=token_count(raw, "completion_tokens"),
        cached_input_tokens=cached,
        reasoning_tokens=token_count(
            details(raw.get("completion_tokens_details")), "reasoning_tokens"
        ),
    )
