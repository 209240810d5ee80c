"""The Anthropic Messages API adapter: chat and streams (Anthropic has no embeddings API)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, Final

import attrs
import httpx2

from .._errors import InvalidRequestError
from .._models import (
    ChatRequest,
    Completion,
    ErrorInfo,
    ErrorKind,
    Message,
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
    error_info,
    input_token_bound,
    loads,
    post_json,
    resolve_key,
    split_data_url,
    token_count,
    try_json,
)
from ._headers import is_quota_exhausted, parse_rate_limit_headers, should_retry_override

__all__ = ["Anthropic"]

DEFAULT_BASE_URL: Final = "https://api.anthropic.com"
DEFAULT_VERSION: Final = "2023-06-01"

# Anthropic's error ``type`` -> (kind, retryable). The type wins over the status: a 529
# ``overloaded_error`` and an ``overloaded_error`` event inside a 200 stream mean the same.
_ERROR_TYPES: Final[dict[str, tuple[ErrorKind, bool]]] = {
    "invalid_request_error": (ErrorKind.BAD_REQUEST, False),
    "authentication_error": (ErrorKind.AUTHENTICATION, False),
    "permission_error": (ErrorKind.PERMISSION, False),
    "not_found_error": (ErrorKind.NOT_FOUND, False),
    "request_too_large": (ErrorKind.BAD_REQUEST, False),
    "billing_error": (ErrorKind.QUOTA_EXHAUSTED, False),
    "rate_limit_error": (ErrorKind.RATE_LIMITED, True),
    "api_error": (ErrorKind.SERVER_ERROR, True),
    "timeout_error": (ErrorKind.TIMEOUT, True),
    "overloaded_error": (ErrorKind.OVERLOADED, True),
}

# Phrases Anthropic uses when the prompt does not fit the context window.
_CONTEXT_PHRASES: Final = (
    "prompt is too long",
    "exceed context limit",
    "exceeds the context window",
    "context window",
)

_STOP_REASONS: Final = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

# OpenAI body fields that mean nothing to Anthropic and are dropped rather than rejected.
_DROPPED: Final = frozenset({"stream", "stream_options", "store"})
# Tool types whose whole definition is in the body (Anthropic's own tools are named only).
_CUSTOM_TOOL_TYPES: Final = (None, "custom", "function")


class Anthropic:
    """Speak the Anthropic Messages API (``POST /v1/messages``).

    ``max_tokens`` is required by the API: a request without it is refused before it is sent
    (:class:`corral.InvalidRequestError` from ``complete``, a ``bad_request`` failure with
    ``attempts=0`` from ``run`` and ``stream``).

    Translation from the OpenAI shape: system and developer messages are lifted into ``system``;
    ``stop`` becomes ``stop_sequences``; OpenAI ``tools``, ``tool_choice``,
    ``parallel_tool_calls``, assistant ``tool_calls`` and ``tool`` messages become Anthropic
    tools, ``tool_use`` and ``tool_result`` blocks; ``image_url`` parts become image blocks; other
    content parts and every other ``extra`` key go into the body as they are, so native fields
    (``thinking``, ``top_k``, ``metadata``, ``cache_control`` on parts) work.

    Args:
        base_url: The API root, without ``/v1``.
        api_key: The key; read from *api_key_env* when not given. Loopback servers need none.
        api_key_env: The environment variable that holds the key.
        version: The ``anthropic-version`` header.
        headers: Extra headers for every request, for example ``anthropic-beta`` (never put
            secrets here: use *api_key*).
    """

    __slots__ = ("_api_key", "_base_url", "_messages_url", "_static_headers", "_version")

    name = "anthropic"

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        *,
        api_key: str | Secret | None = None,
        api_key_env: str = "ANTHROPIC_API_KEY",
        version: str = DEFAULT_VERSION,
        headers: dict[str, str] | None = None,
    ) -> None:
        self._base_url = check_base_url(base_url, "Anthropic")
        check_api_key(api_key, "Anthropic")
        check_headers(headers, "Anthropic")
        check_options("Anthropic", api_key_env=(api_key_env, False), version=(version, False))
        self._api_key = resolve_key(api_key, api_key_env, self._base_url, "Anthropic")
        self._version = version
        root = self._base_url[: -len("/v1")] if self._base_url.endswith("/v1") else self._base_url
        self._messages_url = httpx2.URL(root + "/v1/messages")
        static = base_headers(f"corral/{__version__}", None)
        static["anthropic-version"] = version
        static.update({k.lower(): v for k, v in (headers or {}).items()})
        self._static_headers = static

    def __repr__(self) -> str:
        return (
            f"Anthropic(base_url={self._base_url!r}, api_key={self._api_key!r}, "
            f"version={self._version!r})"
        )

    @property
    def endpoint(self) -> str:
        """The API root this adapter talks to."""
        return self._base_url

    # -- requests -------------------------------------------------------------------------

    def body(self, request: ChatRequest) -> dict[str, Any]:
        """Return the Messages API body for *request*.

        Raises :class:`corral.InvalidRequestError` when ``max_tokens`` is missing or a message
        cannot be translated.

        Args:
            request: The request.
        """
        if request.max_tokens is None:
            raise InvalidRequestError(
                f"request {request.id!r}: the Anthropic Messages API requires max_tokens; "
                f"set ChatRequest(max_tokens=...) (or max_tokens in the OpenAI body)"
            )
        system, messages = _translate_messages(request.messages)
        if not messages:
            raise InvalidRequestError(
                f"request {request.id!r}: Anthropic needs at least one non-system message"
            )
        body: dict[str, Any] = {
            "model": request.model,
            "max_tokens": request.max_tokens,
            "messages": messages,
        }
        if system is not None:
            body["system"] = system
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.top_p is not None:
            body["top_p"] = request.top_p
        if request.stop is not None:
            body["stop_sequences"] = list(request.stop)
        _merge_extra(body, request.extra)
        return body

    def _build(self, request: ChatRequest, *, stream: bool) -> httpx2.Request:
        body = self.body(request)
        headers = dict(self._static_headers)
        key = self._api_key.reveal()
        if key:
            headers["x-api-key"] = key
        add_request_id(headers, request.id)
        if stream:
            body["stream"] = True
            headers["accept"] = "text/event-stream"
        return post_json(self._messages_url, headers, body)

    def build_request(self, request: ChatRequest) -> httpx2.Request:
        """Build the POST to ``/v1/messages`` for *request*.

        Args:
            request: The request.
        """
        return self._build(request, stream=False)

    def build_stream_request(self, request: ChatRequest) -> httpx2.Request:
        """Build the streaming POST to ``/v1/messages`` for *request*.

        Args:
            request: The request.
        """
        return self._build(request, stream=True)

    def max_input_tokens(self, request: ChatRequest, http_request: httpx2.Request) -> int:
        """Return the most input tokens Anthropic can bill for *http_request* (budgets).

        The body's bytes bound its text (see `input_token_bound`); the turn markers of
        Claude's format take a few tokens per message (8 reserved) and per request (64).
        Tools add a hidden system prompt (at most 530 tokens in Anthropic's table: 1,024
        reserved), and each of Anthropic's own tools (``bash``, ``text_editor``, ``computer``,
        with a ``type``) a definition of up to 735 tokens that the body names only (1,024
        each). An image costs (width x height) / 750 tokens, at most about 1,600 once resized
        to 1.15 megapixels, more on models that take higher resolutions: 4,800 reserved.

        Args:
            request: The request.
            http_request: The HTTP request built for it.
        """
        overhead = 64
        tools = request.extra.get("tools")
        if tools:
            overhead += 1024
            if isinstance(tools, list):
                overhead += 1024 * sum(
                    1
                    for tool in tools
                    if isinstance(tool, dict) and tool.get("type") not in _CUSTOM_TOOL_TYPES
                )
        return input_token_bound(
            request, http_request, per_message=8, per_request=overhead, per_image=4800
        )

    # -- responses ------------------------------------------------------------------------

    def parse_response(self, request: ChatRequest, response: httpx2.Response) -> Completion:
        """Parse a Message: text blocks joined into ``content``, usage normalised.

        Args:
            request: The request that was sent.
            response: The read 2xx response.
        """
        data = decode_json(response)
        if isinstance(data, dict) and data.get("type") == "error":
            raise ProviderError(_error_from_object(data.get("error"), None))
        blocks = data.get("content") if isinstance(data, dict) else None
        if not isinstance(blocks, list):
            raise InvalidResponse("not an Anthropic message: no content list")
        try:
            content = _join_text(blocks)
            return Completion(
                id=request.id,
                model=as_text(data.get("model")) or request.model,
                content=content,
                finish_reason=_finish_reason(data.get("stop_reason")),
                usage=parse_usage(data.get("usage")),
                raw=data,
            )
        except PARSE_ERRORS as exc:
            raise InvalidResponse(f"not an Anthropic message: {exc!r}") from exc

    def stream_parser(self, request: ChatRequest) -> StreamParser:
        """Return a parser for one streamed attempt of *request*.

        Args:
            request: The request that was sent.
        """
        return AnthropicStreamParser(request)

    def classify_error(self, response: httpx2.Response) -> ErrorInfo:
        """Describe an Anthropic error (``{"type": "error", "error": {"type", "message"}}``).

        Args:
            response: The read non-2xx response.
        """
        data = try_json(response)
        err = data.get("error") if isinstance(data, dict) else None
        if not isinstance(err, dict):
            text = body_excerpt(response)
            message = f"HTTP {response.status_code}" + (f": {text}" if text else "")
            return error_info(response, message)
        typed = _error_from_object(err, response.status_code)
        # An error type Anthropic never documented says nothing: the status decides then.
        known = typed.provider_code in _ERROR_TYPES
        info = error_info(
            response,
            typed.message,
            provider_code=typed.provider_code,
            kind_override=typed.kind if known else None,
        )
        if typed.provider_code in _ERROR_TYPES and should_retry_override(response.headers) is None:
            # A known type decides, whatever the status; only x-should-retry overrules it.
            info = attrs.evolve(info, retryable=typed.retryable)
        if is_quota_exhausted(response.status_code, response.headers, data):
            # A daily limit will not clear within any retry budget.
            info = attrs.evolve(info, kind=ErrorKind.QUOTA_EXHAUSTED, retryable=False)
        return info

    def rate_limits(self, response: httpx2.Response) -> RateLimitHeaders:
        """Read ``anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-*``.

        Reset times are RFC 3339 timestamps, turned into seconds from the response's ``date``.

        Args:
            response: Any response.
        """
        return parse_rate_limit_headers(response.headers)


class AnthropicStreamParser:
    """Assemble a Messages stream: ``message_start`` ... ``message_stop`` (the final event)."""

    __slots__ = ("_blocks", "_done", "_message", "_parts", "_request", "_tool_json")

    def __init__(self, request: ChatRequest) -> None:
        self._request = request
        self._message: dict[str, Any] | None = None
        self._blocks: dict[int, dict[str, Any]] = {}
        self._tool_json: dict[int, list[str]] = {}
        self._parts: list[str] = []
        self._done = False

    def __repr__(self) -> str:
        return (
            f"<AnthropicStreamParser {self._request.id!r} deltas={len(self._parts)} "
            f"done={self._done}>"
        )

    @property
    def done(self) -> bool:
        """Whether ``message_stop`` arrived."""
        return self._done

    def feed(self, event: httpx2.ServerSentEvent) -> str:
        """Take one event; return the text of a ``text_delta``.

        Args:
            event: The next event.
        """
        if not event.data.strip():
            return ""
        data = loads(event.data, "stream event")
        if not isinstance(data, dict):
            raise InvalidResponse("stream event is not a JSON object")
        kind = as_text(data.get("type") or event.event)
        try:
            return self._handle(kind, data)
        except PARSE_ERRORS as exc:
            raise InvalidResponse(f"bad {kind} event: {exc!r}") from exc

    def _handle(self, kind: str, data: dict[str, Any]) -> str:
        if kind == "content_block_delta":
            index = int(data["index"])
            delta = data["delta"]
            block = self._blocks.setdefault(index, {"type": "text", "text": ""})
            if delta.get("type") == "text_delta":
                text = str(delta.get("text", ""))
                block["text"] = block.get("text", "") + text
                if text:
                    self._parts.append(text)
                return text
            if delta.get("type") == "input_json_delta":
                self._tool_json.setdefault(index, []).append(str(delta.get("partial_json", "")))
            elif delta.get("type") == "thinking_delta":
                block["thinking"] = block.get("thinking", "") + str(delta.get("thinking", ""))
            elif delta.get("type") == "signature_delta":
                block["signature"] = delta.get("signature")
            return ""
        if kind == "message_start":
            self._message = dict(data["message"])
            self._message["usage"] = dict(self._message.get("usage") or {})
        elif kind == "content_block_start":
            self._blocks[int(data["index"])] = dict(data["content_block"])
        elif kind == "message_delta":
            if self._message is None:
                raise InvalidResponse("message_delta before message_start")
            self._message.update(data.get("delta") or {})
            for key, value in (data.get("usage") or {}).items():
                # Usage in message_delta is cumulative; unset fields keep message_start's.
                if value is not None:
                    self._message["usage"][key] = value
        elif kind == "message_stop":
            if self._message is None:
                raise InvalidResponse("message_stop before message_start")
            self._done = True
        elif kind == "error":
            raise ProviderError(_error_from_object(data.get("error"), None))
        # ping, content_block_stop and event types added later carry nothing we need.
        return ""

    def result(self) -> Completion:
        """Return the completion; raise :class:`InvalidResponse` before ``message_stop``."""
        if not self._done or self._message is None:
            raise InvalidResponse("the stream ended before its final event (message_stop)")
        blocks = []
        for index in sorted(self._blocks):
            block = dict(self._blocks[index])
            if index in self._tool_json:
                text = "".join(self._tool_json[index])
                block["input"] = loads(text, "tool input") if text else {}
            blocks.append(block)
        raw = dict(self._message)
        raw["content"] = blocks
        return Completion(
            id=self._request.id,
            model=as_text(raw.get("model")) or self._request.model,
            content="".join(self._parts),
            finish_reason=_finish_reason(raw.get("stop_reason")),
            usage=parse_usage(raw.get("usage")),
            raw=raw,
        )


def parse_usage(raw: Any) -> Usage:
    """Normalise an Anthropic ``usage`` object.

    Anthropic's ``input_tokens`` counts only the uncached part of the prompt; the normalised
    ``input_tokens`` adds ``cache_read_input_tokens`` and ``cache_creation_input_tokens``, as
    OpenAI and Gemini count them. Both cache fields are also reported on their own.

    Args:
        raw: The ``usage`` object, or None.
    """
    if not isinstance(raw, dict):
        return Usage()
    uncached = token_count(raw, "input_tokens")
    read = token_count(raw, "cache_read_input_tokens")
    written = token_count(raw, "cache_creation_input_tokens")
    return Usage(
        input_tokens=uncached + read + written,
        output_tokens=token_count(raw, "output_tokens"),
        cached_input_tokens=read,
        cache_write_tokens=written,
    )


def _finish_reason(stop_reason: Any) -> str | None:
    if stop_reason is None:
        return None
    reason = as_text(stop_reason)
    return _STOP_REASONS.get(reason, reason)


def _join_text(blocks: Iterable[Any]) -> str:
    return "".join(
        str(b.get("text", "")) for b in blocks if isinstance(b, dict) and b.get("type") == "text"
    )


def _error_from_object(err: Any, status: int | None) -> ErrorInfo:
    if not isinstance(err, dict):
        return ErrorInfo(ErrorKind.SERVER_ERROR, "error without details", status, True)
    err_type = as_text(err.get("type"))
    message = as_text(err.get("message")) or err_type or "error"
    kind, retryable = _ERROR_TYPES.get(err_type, (ErrorKind.SERVER_ERROR, True))
    if kind is ErrorKind.BAD_REQUEST and any(p in message.lower() for p in _CONTEXT_PHRASES):
        kind = ErrorKind.CONTEXT_LENGTH
    return ErrorInfo(kind, message, status, retryable, provider_code=err_type or None)


# -- translation from corral's (OpenAI-shaped) messages ---------------------------------------


def _translate_messages(
    messages: Iterable[Message],
) -> tuple[str | list[dict[str, Any]] | None, list[dict[str, Any]]]:
    system_parts: list[str | list[dict[str, Any]]] = []
    out: list[dict[str, Any]] = []
    for m in messages:
        if m.role in ("system", "developer"):
            system_parts.append(m.content)
        elif m.role == "tool":
            out.append({"role": "user", "content": [_tool_result(m)]})
        elif m.role == "assistant":
            out.append({"role": "assistant", "content": _assistant_content(m)})
        else:
            out.append({"role": "user", "content": _content(m.content)})
    system: str | list[dict[str, Any]] | None = None
    if system_parts:
        if all(isinstance(p, str) for p in system_parts):
            system = "\n\n".join(p for p in system_parts if isinstance(p, str))
        else:
            # Keep blocks (and any cache_control on them) when the caller used parts.
            system = []
            for p in system_parts:
                system.extend(_content_blocks(p))
    return system, out


def _content(content: str | list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    return content if isinstance(content, str) else _content_blocks(content)


def _content_blocks(content: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    return [_block(part) for part in content]


def _block(part: dict[str, Any]) -> dict[str, Any]:
    if part.get("type") != "image_url":
        # Text parts have the same shape in both APIs; anything else is taken as native.
        return part
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str):
        raise InvalidRequestError("an image_url part has no url")
    data = split_data_url(url)
    if data is not None:
        return {
            "type": "image",
            "source": {"type": "base64", "media_type": data[0], "data": data[1]},
        }
    return {"type": "image", "source": {"type": "url", "url": url}}


def _assistant_content(m: Message) -> str | list[dict[str, Any]]:
    calls = m.extra.get("tool_calls")
    if not calls:
        return _content(m.content)
    blocks = _content_blocks(m.content)
    for call in calls:
        function = call.get("function") or {}
        arguments = function.get("arguments") or "{}"
        try:
            parsed = json.loads(arguments) if isinstance(arguments, str) else arguments
        except ValueError as exc:
            raise InvalidRequestError(
                f"tool call {call.get('id')!r} has arguments that are not JSON"
            ) from exc
        blocks.append(
            {
                "type": "tool_use",
                "id": call.get("id"),
                "name": function.get("name"),
                "input": parsed,
            }
        )
    return blocks


def _tool_result(m: Message) -> dict[str, Any]:
    call_id = m.extra.get("tool_call_id")
    if not call_id:
        raise InvalidRequestError("a 'tool' message needs a tool_call_id for Anthropic")
    return {"type": "tool_result", "tool_use_id": call_id, "content": _content(m.content)}


def _merge_extra(body: dict[str, Any], extra: dict[str, Any]) -> None:
    for key, value in extra.items():
        if key in _DROPPED:
            continue
        if key == "tools" and isinstance(value, list):
            body["tools"] = [_tool(t) for t in value]
        elif key == "tool_choice":
            body["tool_choice"] = _tool_choice(value, body.get("tool_choice"))
        elif key == "parallel_tool_calls":
            if value is False:
                choice = body.setdefault("tool_choice", {"type": "auto"})
                if isinstance(choice, dict) and choice.get("type") != "none":
                    choice["disable_parallel_tool_use"] = True
        elif key == "user" and isinstance(value, str):
            body.setdefault("metadata", {})["user_id"] = value
        else:
            body[key] = value


def _tool(tool: Any) -> Any:
    if not (
        isinstance(tool, dict)
        and tool.get("type") == "function"
        and isinstance(tool.get("function"), dict)
    ):
        return tool  # already an Anthropic tool
    function = tool["function"]
    out: dict[str, Any] = {
        "name": function.get("name"),
        "input_schema": function.get("parameters") or {"type": "object", "properties": {}},
    }
    if function.get("description"):
        out["description"] = function["description"]
    return out


def _tool_choice(value: Any, current: Any) -> Any:
    keep = {}
    if isinstance(current, dict) and current.get("disable_parallel_tool_use"):
        keep["disable_parallel_tool_use"] = True
    if value == "auto":
        return {"type": "auto", **keep}
    if value == "required":
        return {"type": "any", **keep}
    if value == "none":
        return {"type": "none"}
    if isinstance(value, dict) and value.get("type") == "function":
        name = (value.get("function") or {}).get("name")
        return {"type": "tool", "name": name, **keep}
    return value
