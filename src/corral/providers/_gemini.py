"""The Gemini API adapter (``generateContent``): chat, streams and embeddings."""

from __future__ import annotations

import json
import math
import mimetypes
from collections.abc import Iterable
from typing import Any, Final
from urllib.parse import quote

import attrs
import httpx2

from .._errors import InvalidRequestError
from .._models import (
    ChatRequest,
    Completion,
    EmbeddingRequest,
    EmbeddingResult,
    ErrorInfo,
    ErrorKind,
    Message,
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
    split_data_url,
    token_count,
    try_json,
)
from ._headers import (
    classify_status,
    gemini_quota_verdict,
    gemini_retry_delay,
    parse_retry_after,
    should_retry_override,
)

__all__ = ["Gemini"]

DEFAULT_BASE_URL: Final = "https://generativelanguage.googleapis.com"
DEFAULT_API_VERSION: Final = "v1beta"

# google.rpc.Code names -> (kind, retryable).
_STATUS_KINDS: Final[dict[str, tuple[ErrorKind, bool]]] = {
    "INVALID_ARGUMENT": (ErrorKind.BAD_REQUEST, False),
    "FAILED_PRECONDITION": (ErrorKind.BAD_REQUEST, False),
    "OUT_OF_RANGE": (ErrorKind.BAD_REQUEST, False),
    "UNAUTHENTICATED": (ErrorKind.AUTHENTICATION, False),
    "PERMISSION_DENIED": (ErrorKind.PERMISSION, False),
    "NOT_FOUND": (ErrorKind.NOT_FOUND, False),
    "RESOURCE_EXHAUSTED": (ErrorKind.RATE_LIMITED, True),
    "ABORTED": (ErrorKind.CONFLICT, True),
    "UNAVAILABLE": (ErrorKind.OVERLOADED, True),
    "DEADLINE_EXCEEDED": (ErrorKind.TIMEOUT, True),
    "INTERNAL": (ErrorKind.SERVER_ERROR, True),
    "UNKNOWN": (ErrorKind.SERVER_ERROR, True),
    "CANCELLED": (ErrorKind.SERVER_ERROR, True),
}

_FINISH_REASONS: Final = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
    "IMAGE_PROHIBITED_CONTENT": "content_filter",
    "IMAGE_RECITATION": "content_filter",
}

# OpenAI body fields with no Gemini meaning, dropped rather than sent to be rejected.
_DROPPED: Final = frozenset(
    {"stream", "stream_options", "store", "user", "parallel_tool_calls", "service_tier"}
)
# OpenAI sampling fields -> Gemini generationConfig fields.
_GENERATION_FIELDS: Final = {
    "seed": "seed",
    "presence_penalty": "presencePenalty",
    "frequency_penalty": "frequencyPenalty",
    "n": "candidateCount",
    "logprobs": "responseLogprobs",
    "top_logprobs": "logprobs",
}


class Gemini:
    """Speak the Gemini API: ``models/{model}:generateContent``, its SSE stream, and embeddings.

    The key travels in the ``x-goog-api-key`` header, never in the URL.

    Translation from the OpenAI shape: system and developer messages become
    ``systemInstruction``; ``assistant`` becomes role ``model``; ``max_tokens``, ``temperature``,
    ``top_p`` and ``stop`` go into ``generationConfig`` (``maxOutputTokens``, ``temperature``,
    ``topP``, ``stopSequences``), as do ``seed``, ``presence_penalty``, ``frequency_penalty``,
    ``n``, ``logprobs``, ``top_logprobs`` and ``response_format`` from ``extra``. OpenAI tools,
    ``tool_choice``, assistant ``tool_calls`` and ``tool`` messages become function declarations,
    ``toolConfig``, ``functionCall`` and ``functionResponse`` parts. A ``generationConfig`` in
    ``extra`` is merged key by key (its keys win); every other ``extra`` key is merged into the
    body as it is (``safetySettings``, ``cachedContent``, ``tools`` already in Gemini's shape...).

    Args:
        base_url: The API root, without the version.
        api_key: The key; read from *api_key_env*, then ``GOOGLE_API_KEY``, when not given.
            Loopback servers need none.
        api_key_env: The environment variable that holds the key.
        api_version: The API version path segment.
        headers: Extra headers for every request (never put secrets here: use *api_key*).
    """

    __slots__ = ("_api_key", "_api_version", "_base_url", "_root", "_static_headers")

    name = "gemini"

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        *,
        api_key: str | Secret | None = None,
        api_key_env: str = "GEMINI_API_KEY",
        api_version: str = DEFAULT_API_VERSION,
        headers: dict[str, str] | None = None,
    ) -> None:
        self._base_url = check_base_url(base_url, "Gemini")
        check_api_key(api_key, "Gemini")
        check_headers(headers, "Gemini")
        check_options("Gemini", api_key_env=(api_key_env, False), api_version=(api_version, False))
        self._api_key = resolve_key(
            api_key, api_key_env, self._base_url, "Gemini", fallback_env=("GOOGLE_API_KEY",)
        )
        self._api_version = api_version.strip("/")
        if self._base_url.endswith("/" + self._api_version):
            self._root = self._base_url
        else:
            self._root = f"{self._base_url}/{self._api_version}"
        self._static_headers = base_headers(f"corral/{__version__}", headers)

    def __repr__(self) -> str:
        return (
            f"Gemini(base_url={self._base_url!r}, api_key={self._api_key!r}, "
            f"api_version={self._api_version!r})"
        )

    @property
    def endpoint(self) -> str:
        """The API root this adapter talks to."""
        return self._base_url

    # -- requests -------------------------------------------------------------------------

    def _url(self, model: str, method: str) -> str:
        return f"{self._root}/{_model_path(model)}:{method}"

    def _headers(self, request_id: str) -> dict[str, str]:
        headers = dict(self._static_headers)
        key = self._api_key.reveal()
        if key:
            headers["x-goog-api-key"] = key
        add_request_id(headers, request_id)
        return headers

    def body(self, request: ChatRequest) -> dict[str, Any]:
        """Return the ``generateContent`` body for *request*.

        Args:
            request: The request.
        """
        system, contents = _translate_messages(request.messages)
        if not contents:
            raise InvalidRequestError(
                f"request {request.id!r}: Gemini needs at least one non-system message"
            )
        body: dict[str, Any] = {"contents": contents}
        if system:
            body["systemInstruction"] = {"parts": system}
        config: dict[str, Any] = {}
        if request.max_tokens is not None:
            config["maxOutputTokens"] = request.max_tokens
        if request.temperature is not None:
            config["temperature"] = request.temperature
        if request.top_p is not None:
            config["topP"] = request.top_p
        if request.stop is not None:
            config["stopSequences"] = list(request.stop)
        _merge_extra(body, config, request.extra)
        if config:
            body["generationConfig"] = config
        return body

    def build_request(self, request: ChatRequest) -> httpx2.Request:
        """Build the POST to ``models/{model}:generateContent`` for *request*.

        Args:
            request: The request.
        """
        return post_json(
            self._url(request.model, "generateContent"),
            self._headers(request.id),
            self.body(request),
        )

    def build_stream_request(self, request: ChatRequest) -> httpx2.Request:
        """Build the POST to ``models/{model}:streamGenerateContent?alt=sse`` for *request*.

        Args:
            request: The request.
        """
        headers = self._headers(request.id)
        headers["accept"] = "text/event-stream"
        url = httpx2.URL(self._url(request.model, "streamGenerateContent"), params={"alt": "sse"})
        return post_json(url, headers, self.body(request))

    def build_embedding_request(self, request: EmbeddingRequest) -> httpx2.Request:
        """Build ``embedContent`` for one text, ``batchEmbedContents`` for a sequence.

        ``extra`` is merged into each ``embedContent`` request (``taskType``, ``title``, ...).

        Args:
            request: The embedding request.
        """

        def one(text: str) -> dict[str, Any]:
            item: dict[str, Any] = {"content": {"parts": [{"text": text}]}}
            if request.dimensions is not None:
                item["outputDimensionality"] = request.dimensions
            item.update(request.extra)
            return item

        if isinstance(request.input, str):
            url = self._url(request.model, "embedContent")
            body = one(request.input)
        else:
            url = self._url(request.model, "batchEmbedContents")
            model = _model_path(request.model)
            body = {"requests": [{"model": model, **one(text)} for text in request.input]}
        return post_json(url, self._headers(request.id), body)

    # -- responses ------------------------------------------------------------------------

    def max_input_tokens(
        self, request: ChatRequest | EmbeddingRequest, http_request: httpx2.Request
    ) -> int:
        """Return the most input tokens Gemini can bill for *http_request* (budgets).

        The body's bytes bound its text (see `input_token_bound`); Gemini's turn markers take
        a few tokens per turn (8 reserved) and per request (64), tool declarations a preamble
        (1,024 more with tools). An image costs 258 tokens per 768 px tile; up to 16 tiles
        (4,128 tokens) are reserved when its size is unknown.

        Args:
            request: The request.
            http_request: The HTTP request built for it.
        """
        tools = isinstance(request, ChatRequest) and "tools" in request.extra
        return input_token_bound(
            request,
            http_request,
            per_message=8,
            per_request=64 + (1024 if tools else 0),
            per_image=4128,
        )

    def parse_response(self, request: ChatRequest, response: httpx2.Response) -> Completion:
        """Parse a ``GenerateContentResponse``: ``candidates[0]`` and ``usageMetadata``.

        A prompt blocked by safety filters (``promptFeedback.blockReason``, no candidates)
        raises :class:`ProviderError` of kind ``content_filter``.

        Args:
            request: The request that was sent.
            response: The read 2xx response.
        """
        data = decode_json(response)
        if not isinstance(data, dict):
            raise InvalidResponse("not a GenerateContentResponse: not a JSON object")
        if isinstance(data.get("error"), dict):
            raise ProviderError(_error_from_object(data["error"], None, {}))
        _check_blocked(data)
        try:
            candidate = data["candidates"][0]
            parts = (candidate.get("content") or {}).get("parts") or []
            return Completion(
                id=request.id,
                model=as_text(data.get("modelVersion")) or request.model,
                content=_join_text(parts),
                finish_reason=_finish_reason(candidate.get("finishReason"), parts),
                usage=parse_usage(data.get("usageMetadata")),
                raw=data,
            )
        except PARSE_ERRORS as exc:
            raise InvalidResponse(f"not a GenerateContentResponse: {exc!r}") from exc

    def stream_parser(self, request: ChatRequest) -> StreamParser:
        """Return a parser for one streamed attempt of *request*.

        Args:
            request: The request that was sent.
        """
        return GeminiStreamParser(request)

    def parse_embedding_response(
        self, request: EmbeddingRequest, response: httpx2.Response
    ) -> EmbeddingResult:
        """Parse ``embedContent`` (``embedding``) or ``batchEmbedContents`` (``embeddings``).

        Args:
            request: The request that was sent.
            response: The read 2xx response.
        """
        data = decode_json(response)
        if not isinstance(data, dict):
            raise InvalidResponse("not an embedding response: not a JSON object")
        try:
            items = data["embeddings"] if "embeddings" in data else [data["embedding"]]
            vectors = [_vector(item["values"]) for item in items]
            usage = Usage(
                input_tokens=token_count(details(data.get("usageMetadata")), "promptTokenCount")
            )
        except PARSE_ERRORS as exc:
            raise InvalidResponse(f"not an embedding response: {exc!r}") from exc
        if len(vectors) != len(request.texts):
            raise InvalidResponse(
                f"asked for {len(request.texts)} embedding(s), got {len(vectors)}"
            )
        return EmbeddingResult(request.id, request.model, vectors, usage, raw=data)

    def classify_error(self, response: httpx2.Response) -> ErrorInfo:
        """Describe a Google API error (``{"error": {"code", "message", "status", "details"}}``).

        ``google.rpc.RetryInfo.retryDelay`` in the details becomes ``retry_after_s`` when no
        ``Retry-After`` header says otherwise.

        Args:
            response: The read non-2xx response.
        """
        data = try_json(response)
        if isinstance(data, list) and data:
            data = data[0]  # some endpoints wrap the error in a list
        err = data.get("error") if isinstance(data, dict) else None
        if not isinstance(err, dict):
            text = body_excerpt(response)
            message = f"HTTP {response.status_code}" + (f": {text}" if text else "")
            return error_info(response, message)
        typed = _error_from_object(err, response.status_code, response.headers)
        info = error_info(
            response, typed.message, provider_code=typed.provider_code, kind_override=typed.kind
        )
        retryable = info.retryable
        if typed.provider_code in _STATUS_KINDS and should_retry_override(response.headers) is None:
            retryable = typed.retryable
        if typed.kind is ErrorKind.QUOTA_EXHAUSTED:
            retryable = False
        return attrs.evolve(
            info,
            retryable=retryable,
            retry_after_s=info.retry_after_s
            if info.retry_after_s is not None
            else typed.retry_after_s,
        )


class GeminiStreamParser:
    """Assemble a ``streamGenerateContent?alt=sse`` stream.

    Gemini sends no end-of-stream event: the chunk that carries a ``finishReason`` is the final
    one, and a stream that closes before it is truncated.
    """

    __slots__ = ("_calls", "_done", "_finish", "_last", "_parts", "_request", "_usage")

    def __init__(self, request: ChatRequest) -> None:
        self._request = request
        self._parts: list[str] = []
        self._calls: list[dict[str, Any]] = []
        self._finish: str | None = None
        self._usage: Any = None
        self._last: dict[str, Any] = {}
        self._done = False

    def __repr__(self) -> str:
        return (
            f"<GeminiStreamParser {self._request.id!r} deltas={len(self._parts)} done={self._done}>"
        )

    @property
    def done(self) -> bool:
        """Whether a chunk with a ``finishReason`` arrived."""
        return self._done

    def feed(self, event: httpx2.ServerSentEvent) -> str:
        """Take one chunk; return its text.

        Args:
            event: The next event.
        """
        if not event.data.strip():
            return ""
        chunk = loads(event.data, "stream chunk")
        if not isinstance(chunk, dict):
            raise InvalidResponse("stream chunk is not a JSON object")
        if isinstance(chunk.get("error"), dict):
            raise ProviderError(_error_from_object(chunk["error"], None, {}))
        _check_blocked(chunk)
        self._last = chunk
        if chunk.get("usageMetadata"):
            self._usage = chunk["usageMetadata"]
        try:
            candidates = chunk.get("candidates") or []
            if not candidates:
                return ""
            candidate = candidates[0]
            parts = (candidate.get("content") or {}).get("parts") or []
            text = _join_text(parts)
            self._calls.extend(p for p in parts if isinstance(p, dict) and "functionCall" in p)
            if candidate.get("finishReason"):
                self._finish = as_text(candidate["finishReason"])
                self._done = True
        except PARSE_ERRORS as exc:
            raise InvalidResponse(f"bad stream chunk: {exc!r}") from exc
        if text:
            self._parts.append(text)
        return text

    def result(self) -> Completion:
        """Return the completion; raise :class:`InvalidResponse` before the final chunk."""
        if not self._done:
            raise InvalidResponse(
                "the stream ended before its final event (a chunk with a finishReason)"
            )
        content = "".join(self._parts)
        parts: list[dict[str, Any]] = [{"text": content}] if content else []
        parts.extend(self._calls)
        raw: dict[str, Any] = {
            "candidates": [
                {
                    "content": {"role": "model", "parts": parts},
                    "finishReason": self._finish,
                    "index": 0,
                }
            ],
        }
        for key in ("modelVersion", "responseId"):
            if key in self._last:
                raw[key] = self._last[key]
        if self._usage is not None:
            raw["usageMetadata"] = self._usage
        usage = parse_usage(self._usage)
        return Completion(
            id=self._request.id,
            model=as_text(self._last.get("modelVersion")) or self._request.model,
            content=content,
            finish_reason=_finish_reason(self._finish, self._calls),
            usage=usage,
            raw=raw,
        )


def parse_usage(raw: Any) -> Usage:
    """Normalise Gemini's ``usageMetadata``.

    ``promptTokenCount`` already includes ``cachedContentTokenCount``; tool-use prompt tokens
    are input too. ``candidatesTokenCount`` excludes ``thoughtsTokenCount``, so output adds both
    (as OpenAI counts reasoning inside ``completion_tokens``). Input plus output equals
    ``totalTokenCount``.

    Args:
        raw: The ``usageMetadata`` object, or None.
    """
    if not isinstance(raw, dict):
        return Usage()
    thoughts = token_count(raw, "thoughtsTokenCount")
    return Usage(
        input_tokens=token_count(raw, "promptTokenCount")
        + token_count(raw, "toolUsePromptTokenCount"),
        output_tokens=token_count(raw, "candidatesTokenCount") + thoughts,
        cached_input_tokens=token_count(raw, "cachedContentTokenCount"),
        reasoning_tokens=thoughts,
    )


def _model_path(model: str) -> str:
    path = model if model.startswith(("models/", "tunedModels/")) else f"models/{model}"
    # A ':' or '?' in a model name must not become part of the method or the query.
    return quote(path, safe="/-._~")


def _vector(values: Any) -> list[float]:
    if not isinstance(values, list):
        raise TypeError("an embedding's values must be a list of numbers")
    vector = [float(x) for x in values]
    if not all(math.isfinite(x) for x in vector):
        raise ValueError("an embedding has a NaN or infinite component")
    return vector


def _check_blocked(data: dict[str, Any]) -> None:
    feedback = data.get("promptFeedback")
    if isinstance(feedback, dict) and feedback.get("blockReason") and not data.get("candidates"):
        reason = as_text(feedback["blockReason"])
        raise ProviderError(
            ErrorInfo(
                ErrorKind.CONTENT_FILTER,
                f"Gemini blocked the prompt ({reason})",
                provider_code=reason,
            )
        )


def _join_text(parts: Iterable[Any]) -> str:
    # Thought summaries (``thought: true``) are not part of the answer.
    return "".join(
        as_text(p["text"])
        for p in parts
        if isinstance(p, dict) and "text" in p and not p.get("thought")
    )


def _finish_reason(reason: Any, parts: Iterable[Any]) -> str | None:
    if reason is None:
        return None
    if reason == "STOP" and any(isinstance(p, dict) and "functionCall" in p for p in parts):
        return "tool_calls"
    text = as_text(reason)
    return _FINISH_REASONS.get(text, text.lower())


def _has_reason(details: Any, reason: str) -> bool:
    return isinstance(details, list) and any(
        isinstance(d, dict) and d.get("reason") == reason for d in details
    )


def _error_from_object(err: dict[str, Any], status: int | None, headers: Any) -> ErrorInfo:
    code = as_text(err.get("status"))
    message = as_text(err.get("message")) or code or "error"
    details = err.get("details")
    kind, retryable = _STATUS_KINDS.get(code, (ErrorKind.SERVER_ERROR, True))
    if code not in _STATUS_KINDS and status is not None:
        kind, retryable = classify_status(status)
    lowered = message.lower()
    if _has_reason(details, "API_KEY_INVALID"):
        kind, retryable = ErrorKind.AUTHENTICATION, False
    elif kind is ErrorKind.BAD_REQUEST and "token" in lowered and "exceed" in lowered:
        kind = ErrorKind.CONTEXT_LENGTH
    elif kind is ErrorKind.RATE_LIMITED and gemini_quota_verdict(details):
        kind, retryable = ErrorKind.QUOTA_EXHAUSTED, False
    retry_after = gemini_retry_delay(details)
    if retry_after is None and headers:
        retry_after = parse_retry_after(headers)
    return ErrorInfo(
        kind, message, status, retryable, retry_after_s=retry_after, provider_code=code or None
    )


# -- translation from corral's (OpenAI-shaped) messages ---------------------------------------


def _translate_messages(
    messages: Iterable[Message],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    system: list[dict[str, Any]] = []
    contents: list[dict[str, Any]] = []
    call_names: dict[str, str] = {}
    for m in messages:
        if m.role in ("system", "developer"):
            system.extend(_parts(m.content))
        elif m.role == "assistant":
            parts = _parts(m.content) if m.content else []
            for call in m.extra.get("tool_calls") or ():
                function = call.get("function") or {}
                name = function.get("name")
                arguments = function.get("arguments") or "{}"
                try:
                    args = json.loads(arguments) if isinstance(arguments, str) else arguments
                except ValueError as exc:
                    raise InvalidRequestError(
                        f"tool call {call.get('id')!r} has arguments that are not JSON"
                    ) from exc
                if call.get("id") and name:
                    call_names[str(call["id"])] = str(name)
                parts.append({"functionCall": {"name": name, "args": args}})
            contents.append({"role": "model", "parts": parts or [{"text": ""}]})
        elif m.role == "tool":
            name = m.name or call_names.get(str(m.extra.get("tool_call_id")))
            if not name:
                raise InvalidRequestError(
                    "a 'tool' message needs a name, or a tool_call_id of an earlier tool call, "
                    "for Gemini"
                )
            contents.append(
                {
                    "role": "user",
                    "parts": [{"functionResponse": {"name": name, "response": _tool_response(m)}}],
                }
            )
        else:
            contents.append({"role": "user", "parts": _parts(m.content)})
    return system, contents


def _tool_response(m: Message) -> dict[str, Any]:
    text = m.text
    try:
        value = json.loads(text)
    except ValueError:
        return {"result": text}
    return value if isinstance(value, dict) else {"result": value}


def _parts(content: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"text": content}]
    return [_part(p) for p in content]


def _part(part: dict[str, Any]) -> dict[str, Any]:
    kind = part.get("type")
    if kind is None:
        return part  # already a Gemini part
    if kind == "text":
        return {"text": str(part.get("text", ""))}
    if kind == "image_url":
        image = part.get("image_url")
        url = image.get("url") if isinstance(image, dict) else image
        if not isinstance(url, str):
            raise InvalidRequestError("an image_url part has no url")
        data = split_data_url(url)
        if data is not None:
            return {"inlineData": {"mimeType": data[0], "data": data[1]}}
        mime = mimetypes.guess_type(url)[0]
        if mime is None:
            raise InvalidRequestError(
                f"cannot tell the MIME type of image {url[:80]!r} for Gemini; use a data: URL "
                f"or a native fileData part"
            )
        return {"fileData": {"fileUri": url, "mimeType": mime}}
    raise InvalidRequestError(f"Gemini: cannot translate a content part of type {kind!r}")


def _merge_extra(body: dict[str, Any], config: dict[str, Any], extra: dict[str, Any]) -> None:
    native_config: dict[str, Any] = {}
    for key, value in extra.items():
        if key in _DROPPED:
            continue
        if key in _GENERATION_FIELDS:
            config[_GENERATION_FIELDS[key]] = value
        elif key == "response_format":
            config.update(_response_format(value))
        elif key == "tools" and isinstance(value, list):
            body["tools"] = _tools(value)
        elif key == "tool_choice":
            body["toolConfig"] = {"functionCallingConfig": _tool_choice(value)}
        elif key == "generationConfig" and isinstance(value, dict):
            native_config.update(value)
        else:
            body[key] = value
    config.update(native_config)


def _response_format(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidRequestError("response_format must be an object")
    kind = value.get("type")
    if kind == "json_object":
        return {"responseMimeType": "application/json"}
    if kind == "json_schema":
        schema = (value.get("json_schema") or {}).get("schema")
        out: dict[str, Any] = {"responseMimeType": "application/json"}
        if schema is not None:
            out["responseJsonSchema"] = schema
        return out
    if kind in (None, "text"):
        return {}
    raise InvalidRequestError(f"Gemini: cannot translate response_format type {kind!r}")


def _tools(tools: list[Any]) -> list[Any]:
    declarations = []
    native = []
    for tool in tools:
        if (
            isinstance(tool, dict)
            and tool.get("type") == "function"
            and isinstance(tool.get("function"), dict)
        ):
            function = tool["function"]
            declaration: dict[str, Any] = {"name": function.get("name")}
            if function.get("description"):
                declaration["description"] = function["description"]
            if function.get("parameters"):
                declaration["parametersJsonSchema"] = function["parameters"]
            declarations.append(declaration)
        else:
            native.append(tool)
    if declarations:
        native.insert(0, {"functionDeclarations": declarations})
    return native


def _tool_choice(value: Any) -> dict[str, Any]:
    if value == "auto":
        return {"mode": "AUTO"}
    if value == "none":
        return {"mode": "NONE"}
    if value == "required":
        return {"mode": "ANY"}
    if isinstance(value, dict) and value.get("type") == "function":
        name = (value.get("function") or {}).get("name")
        return {"mode": "ANY", "allowedFunctionNames": [name]}
    raise InvalidRequestError(f"Gemini: cannot translate tool_choice {value!r}")
