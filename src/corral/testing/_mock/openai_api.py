"""The OpenAI side of the mock: chat completions (plain and streamed), embeddings, models."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Final

import attrs

from .limits import openai_duration
from .text import (
    CACHE_MIN_TOKENS,
    Generation,
    count_mock_tokens,
    embedding_vector,
    encode_vector,
    generate,
    split_chunks,
)
from .wire import (
    Api,
    ApiError,
    Context,
    Reply,
    Work,
    context_check,
    dumps,
    json_reply,
    load_object,
    optional_int,
    retry_after_header,
    sse_reply,
)

__all__ = ["OpenAIApi"]

MODELS: Final = (
    "gpt-4o-mini",
    "gpt-4o",
    "gpt-4.1-mini",
    "o3-mini",
    "text-embedding-3-small",
    "text-embedding-3-large",
)
_ROLES: Final = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
_DONE: Final = b"data: [DONE]\n\n"

# Messages close to the real API's, so that clients which match on them behave as in production.
_MESSAGES: Final = {
    "auth_missing": "You didn't provide an API key. You need to provide your API key in an"
    " Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
    "auth_invalid": "Incorrect API key provided.",
    "quota": "You exceeded your current quota, please check your plan and billing details.",
    "outage": "The server is temporarily unable to service your request (mock outage window).",
}
_STATUS_TYPES: Final = {
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "unsupported_country_region_territory"),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
}
_STATUS_MESSAGES: Final = {
    400: "Invalid request (mock injected error).",
    408: "Request timed out.",
    409: "Conflict (mock injected error).",
    429: "Rate limit reached for requests (mock injected error).",
    500: "The server had an error while processing your request. Sorry about that!",
    502: "Bad gateway.",
    503: "The engine is currently overloaded, please try again later.",
    504: "Gateway timeout.",
}


@attrs.frozen
class _Chat:
    model: str
    generation: Generation
    stream: bool
    include_usage: bool


@attrs.frozen
class _Embeddings:
    model: str
    vectors: tuple[list[float], ...]
    base64: bool


def _text(content: object, where: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    raise ApiError(400, "invalid", f"Invalid type for '{where}'.", param=where)


def _cached(tokens: int) -> int:
    # OpenAI caches the first 1024 tokens, then grows the cached prefix in steps of 128.
    return tokens - (tokens - CACHE_MIN_TOKENS) % 128 if tokens >= CACHE_MIN_TOKENS else 0


class OpenAIApi(Api):
    """Emulate ``/v1/chat/completions``, ``/v1/embeddings`` and ``/v1/models``."""

    __slots__ = ()

    family = "openai"
    outage_status = 503

    def authenticate(self, headers: Mapping[str, str], query: Mapping[str, str]) -> None:
        scheme, _, key = headers.get("authorization", "").partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            raise ApiError(401, "auth_missing", _MESSAGES["auth_missing"])
        if self._config.api_key is not None and key != self._config.api_key:
            raise ApiError(401, "auth_invalid", _MESSAGES["auth_invalid"], code="invalid_api_key")

    def parse(
        self,
        op: str,
        model: str,
        body: bytes,
        headers: Mapping[str, str],
        query: Mapping[str, str],
    ) -> Work:
        if op == "models":
            return Work("models")
        if op == "model":
            return Work("model", model=model)
        data = load_object(body)
        name = data.get("model")
        if not isinstance(name, str) or not name:
            raise ApiError(400, "invalid", "You must provide a model parameter.", param="model")
        if op == "embed":
            return self._parse_embeddings(name, data)
        return self._parse_chat(name, data)

    def _parse_chat(self, model: str, data: dict[str, Any]) -> Work:
        messages = data.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ApiError(
                400, "invalid", "'messages' must be a non-empty array.", param="messages"
            )
        texts: list[str] = []
        prompt = ""
        for index, message in enumerate(messages):
            if not isinstance(message, dict) or message.get("role") not in _ROLES:
                where = f"messages[{index}].role"
                raise ApiError(400, "invalid", f"Invalid value for '{where}'.", param=where)
            text = _text(message.get("content"), f"messages[{index}].content")
            texts.append(text)
            if message["role"] == "user" or not prompt:
                prompt = text
        max_tokens = optional_int(data, "max_completion_tokens", minimum=1)
        if max_tokens is None:
            max_tokens = optional_int(data, "max_tokens", minimum=1)
        choices = optional_int(data, "n", minimum=1, maximum=128) or 1
        stream = data.get("stream") is True
        options = data.get("stream_options")
        if options is not None and not stream:
            raise ApiError(
                400,
                "invalid",
                "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                param="stream_options",
            )
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        input_tokens = sum(map(count_mock_tokens, texts))
        context_check(input_tokens, max_tokens, self._config.context_window)
        generation = generate(
            prompt, seed=self._config.seed, model=model, max_tokens=max_tokens, choices=choices
        )
        produced = generation.output_tokens + generation.reasoning_tokens
        return Work(
            "chat",
            model=model,
            input_tokens=input_tokens,
            output_reserve=max_tokens * choices if max_tokens is not None else produced,
            limited=True,
            cache_prefix=texts[0] if count_mock_tokens(texts[0]) >= CACHE_MIN_TOKENS else None,
            payload=_Chat(model, generation, stream, include_usage),
        )

    def _parse_embeddings(self, model: str, data: dict[str, Any]) -> Work:
        raw = data.get("input")
        items: list[object] = raw if isinstance(raw, list) and raw else [raw]
        if all(isinstance(item, int) and not isinstance(item, bool) for item in items):
            items = [items]  # a single list of token ids is one input
        keys: list[str] = []
        tokens = 0
        for item in items:
            if isinstance(item, str) and item:
                keys.append(item)
                tokens += count_mock_tokens(item)
            elif isinstance(item, list) and item and all(isinstance(t, int) for t in item):
                keys.append(",".join(map(str, item)))
                tokens += len(item)
            else:
                raise ApiError(400, "invalid", "'$.input' is invalid.", param="input")
        native = 3072 if "large" in model else 1536
        dimensions = optional_int(data, "dimensions", minimum=1, maximum=native) or native
        encoding = data.get("encoding_format", "float")
        if encoding not in ("float", "base64"):
            raise ApiError(
                400,
                "invalid",
                "encoding_format must be 'float' or 'base64'.",
                param="encoding_format",
            )
        seed = self._config.seed
        vectors = tuple(embedding_vector(key, seed, dimensions) for key in keys)
        return Work(
            "embed",
            model=model,
            input_tokens=tokens,
            limited=True,
            payload=_Embeddings(model, vectors, encoding == "base64"),
        )

    def render(self, work: Work, ctx: Context) -> Reply:
        if work.op == "models":
            data = [self._model(name, ctx) for name in MODELS]
            return json_reply(200, {"object": "list", "data": data})
        if work.op == "model":
            return json_reply(200, self._model(work.model, ctx))
        if work.op == "embed":
            return self._render_embeddings(work, ctx)
        chat: _Chat = work.payload
        usage = self._usage(work, chat.generation, ctx)
        if chat.stream:
            return self._render_stream(chat, usage, ctx)
        body = {
            "id": f"chatcmpl-{ctx.request_id}",
            "object": "chat.completion",
            "created": ctx.created,
            "model": chat.model,
            "choices": [
                {
                    "index": index,
                    "message": {
                        "role": "assistant",
                        "content": text,
                        "refusal": None,
                        "annotations": [],
                    },
                    "logprobs": None,
                    "finish_reason": finish,
                }
                for index, (text, finish) in enumerate(
                    zip(chat.generation.texts, chat.generation.finish, strict=True)
                )
            ],
            "usage": usage,
            "service_tier": "default",
            "system_fingerprint": "fp_corral_mock",
        }
        return json_reply(200, body, output_tokens=usage["completion_tokens"])

    @staticmethod
    def _model(name: str, ctx: Context) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": ctx.created, "owned_by": "corral-mock"}

    @staticmethod
    def _usage(work: Work, generation: Generation, ctx: Context) -> dict[str, Any]:
        output = generation.output_tokens + generation.reasoning_tokens
        return {
            "prompt_tokens": work.input_tokens,
            "completion_tokens": output,
            "total_tokens": work.input_tokens + output,
            "prompt_tokens_details": {"cached_tokens": _cached(ctx.cache_read), "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": generation.reasoning_tokens,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }

    def _render_stream(self, chat: _Chat, usage: dict[str, Any], ctx: Context) -> Reply:
        base = {
            "id": f"chatcmpl-{ctx.request_id}",
            "object": "chat.completion.chunk",
            "created": ctx.created,
            "model": chat.model,
            "service_tier": "default",
            "system_fingerprint": "fp_corral_mock",
        }
        if chat.include_usage:
            base["usage"] = None

        def event(choices: list[dict[str, Any]], **extra: Any) -> bytes:
            return b"data: " + dumps({**base, "choices": choices, **extra}) + b"\n\n"

        def delta(index: int, content: dict[str, Any], finish: str | None = None) -> bytes:
            choice = {"index": index, "delta": content, "logprobs": None, "finish_reason": finish}
            return event([choice])

        events: list[bytes] = []
        texts = chat.generation.texts
        for index, text in enumerate(texts):
            events.append(delta(index, {"role": "assistant", "content": "", "refusal": None}))
            events.extend(delta(index, {"content": piece}) for piece in split_chunks(text))
        tail = [delta(i, {}, finish) for i, finish in enumerate(chat.generation.finish)]
        if chat.include_usage:
            tail.append(event([], usage=usage))
        tail.append(_DONE)
        return sse_reply(events + tail, tail=len(tail), output_tokens=usage["completion_tokens"])

    def _render_embeddings(self, work: Work, ctx: Context) -> Reply:
        payload: _Embeddings = work.payload
        data = [
            {
                "object": "embedding",
                "index": index,
                "embedding": encode_vector(vector) if payload.base64 else vector,
            }
            for index, vector in enumerate(payload.vectors)
        ]
        usage = {"prompt_tokens": work.input_tokens, "total_tokens": work.input_tokens}
        return json_reply(
            200, {"object": "list", "data": data, "model": payload.model, "usage": usage}
        )

    def error(self, error: ApiError, ctx: Context) -> Reply:
        kind, code = _STATUS_TYPES.get(
            error.status,
            ("server_error" if error.status >= 500 else "invalid_request_error", None),
        )
        message = _MESSAGES.get(error.reason, error.message)
        if error.reason == "quota":
            kind = code = "insufficient_quota"
        elif error.reason == "rate_limit" and error.denial is not None:
            denial = error.denial
            kind = "requests" if denial.dimension == "requests" else "tokens"
            unit = "requests per min (RPM)" if kind == "requests" else "tokens per min (TPM)"
            if math.isinf(denial.wait_s):
                message = (
                    f"Request too large for {ctx.model or 'the model'} in organization"
                    f" org-corral-mock on {unit}: Limit {denial.limit}, Requested"
                    f" {denial.requested}. The input or output tokens must be reduced in order"
                    " to run successfully."
                )
            else:
                message = (
                    f"Rate limit reached for {ctx.model or 'the model'} in"
                    f" organization org-corral-mock on {unit}: Limit {denial.limit}, Used"
                    f" {denial.used}, Requested {denial.requested}. Please try again in"
                    f" {openai_duration(denial.wait_s)}."
                )
        elif error.reason == "injected":
            message = _STATUS_MESSAGES.get(error.status, f"Mock injected error {error.status}.")
        elif error.reason == "outage":
            kind, code = "server_error", None
        else:
            kind, code = "invalid_request_error", error.code
        body = {"error": {"message": message, "type": kind, "param": error.param, "code": code}}
        reply = json_reply(error.status, body)
        if error.retry_after is not None:
            reply.headers.append(retry_after_header(error.retry_after))
            millis = str(max(0, round(error.retry_after * 1000)))
            reply.headers.append((b"retry-after-ms", millis.encode()))
        return reply

    def add_headers(self, reply: Reply, ctx: Context, processing_s: float) -> None:
        headers = reply.headers
        headers.append((b"x-request-id", f"req_{ctx.request_id}".encode()))
        headers.append((b"openai-processing-ms", str(round(processing_s * 1000)).encode()))
        headers.append((b"openai-version", b"2020-10-01"))
        for dimension in ("requests", "tokens"):
            state = ctx.limits.get(dimension)
            if state is None:
                continue
            headers.append((f"x-ratelimit-limit-{dimension}".encode(), b"%d" % state.limit))
            headers.append((f"x-ratelimit-remaining-{dimension}".encode(), b"%d" % state.remaining))
            reset = openai_duration(state.reset_s).encode()
            headers.append((f"x-ratelimit-reset-{dimension}".encode(), reset))
