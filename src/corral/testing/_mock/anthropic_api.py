"""The Anthropic side of the mock: the Messages API, plain and streamed, and token counting."""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any, Final

import attrs

from .limits import LimitState, rfc3339
from .text import CACHE_MIN_TOKENS, Generation, count_mock_tokens, generate, split_chunks
from .wire import (
    Api,
    ApiError,
    Context,
    Reply,
    Work,
    dumps,
    json_reply,
    load_object,
    optional_int,
    retry_after_header,
    sse_reply,
)

__all__ = ["AnthropicApi"]

MODELS: Final = (
    ("claude-sonnet-5", "Claude Sonnet 5"),
    ("claude-haiku-5-5", "Claude Haiku 5.5"),
    ("claude-opus-5", "Claude Opus 5"),
)
_ERROR_TYPES: Final = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
_STOP: Final = {"stop": "end_turn", "length": "max_tokens"}
_LIMIT_NAMES: Final = {
    "requests": "requests",
    "tokens": "tokens",
    "input_tokens": "input-tokens",
    "output_tokens": "output-tokens",
}


@attrs.frozen
class _Messages:
    model: str
    generation: Generation
    stream: bool


def _text(content: object, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            block["text"]
            for block in content
            if isinstance(block, dict) and isinstance(block.get("text"), str)
        )
    raise ApiError(400, "invalid", f"{where}: Input should be a valid list", param=where)


def _event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + dumps(data) + b"\n\n"


class AnthropicApi(Api):
    """Emulate ``/v1/messages``, ``/v1/messages/count_tokens`` and ``/v1/models``."""

    __slots__ = ()

    family = "anthropic"
    outage_status = 529

    def authenticate(self, headers: Mapping[str, str], query: Mapping[str, str]) -> None:
        key = headers.get("x-api-key", "").strip()
        if not key:
            scheme, _, token = headers.get("authorization", "").partition(" ")
            key = token.strip() if scheme.lower() == "bearer" else ""
        if not key:
            raise ApiError(401, "auth_missing", "x-api-key header is required")
        if self._config.api_key is not None and key != self._config.api_key:
            raise ApiError(401, "auth_invalid", "invalid x-api-key")

    def parse(
        self,
        op: str,
        model: str,
        body: bytes,
        headers: Mapping[str, str],
        query: Mapping[str, str],
    ) -> Work:
        if not headers.get("anthropic-version"):
            raise ApiError(400, "invalid", "anthropic-version: header is required")
        if op in ("models", "model"):
            return Work(op, model=model)
        data = load_object(body)
        name = data.get("model")
        if not isinstance(name, str) or not name:
            raise ApiError(400, "invalid", "model: Field required", param="model")
        messages = data.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ApiError(400, "invalid", "messages: Field required", param="messages")
        texts: list[str] = []
        prompt = ""
        for index, message in enumerate(messages):
            if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
                where = f"messages.{index}.role"
                raise ApiError(
                    400, "invalid", f"{where}: Input should be 'user' or 'assistant'", param=where
                )
            text = _text(message.get("content"), f"messages.{index}.content")
            texts.append(text)
            if message["role"] == "user":
                prompt = text
        system = data.get("system")
        system_text = "" if system is None else _text(system, "system")
        input_tokens = count_mock_tokens(system_text) + sum(map(count_mock_tokens, texts))
        if op == "count_tokens":
            return Work("count_tokens", model=name, input_tokens=input_tokens)
        max_tokens = optional_int(data, "max_tokens", minimum=1)
        if max_tokens is None:
            raise ApiError(400, "invalid", "max_tokens: Field required", param="max_tokens")
        window = self._config.context_window
        if input_tokens + max_tokens > window:
            raise ApiError(
                400,
                "context_length",
                f"prompt is too long: {input_tokens + max_tokens} tokens > {window} maximum",
            )
        thinking = data.get("thinking")
        generation = generate(
            prompt,
            seed=self._config.seed,
            model=name,
            max_tokens=max_tokens,
            thinking=isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive"),
        )
        prefix = system_text or texts[0]
        return Work(
            "messages",
            model=name,
            input_tokens=input_tokens,
            output_reserve=max_tokens,
            limited=True,
            cache_prefix=prefix if count_mock_tokens(prefix) >= CACHE_MIN_TOKENS else None,
            payload=_Messages(name, generation, data.get("stream") is True),
        )

    def render(self, work: Work, ctx: Context) -> Reply:
        if work.op == "models":
            data = [self._model(name, display) for name, display in MODELS]
            return json_reply(
                200,
                {
                    "data": data,
                    "has_more": False,
                    "first_id": MODELS[0][0],
                    "last_id": MODELS[-1][0],
                },
            )
        if work.op == "model":
            return json_reply(200, self._model(work.model, work.model))
        if work.op == "count_tokens":
            return json_reply(200, {"input_tokens": work.input_tokens})
        messages: _Messages = work.payload
        generation = messages.generation
        usage = self._usage(work, generation, ctx)
        stop_reason = _STOP[generation.finish[0]]
        if messages.stream:
            return self._render_stream(messages, usage, stop_reason, ctx)
        content: list[dict[str, Any]] = []
        if generation.thinking:
            content.append(self._thinking_block(generation.thinking, ctx))
        content.append({"type": "text", "text": generation.texts[0]})
        body = {
            "id": f"msg_{ctx.request_id}",
            "type": "message",
            "role": "assistant",
            "model": messages.model,
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": usage,
        }
        return json_reply(200, body, output_tokens=usage["output_tokens"])

    @staticmethod
    def _model(name: str, display: str) -> dict[str, Any]:
        return {
            "type": "model",
            "id": name,
            "display_name": display,
            "created_at": "2025-01-01T00:00:00Z",
        }

    @staticmethod
    def _thinking_block(thinking: str, ctx: Context) -> dict[str, Any]:
        return {"type": "thinking", "thinking": thinking, "signature": f"mock-{ctx.request_id}"}

    @staticmethod
    def _usage(work: Work, generation: Generation, ctx: Context) -> dict[str, Any]:
        # Anthropic's input_tokens leaves out what was read from or written to the cache.
        usage: dict[str, Any] = {
            "input_tokens": work.input_tokens - ctx.cache_read - ctx.cache_write,
            "cache_creation_input_tokens": ctx.cache_write,
            "cache_read_input_tokens": ctx.cache_read,
            "cache_creation": {
                "ephemeral_5m_input_tokens": ctx.cache_write,
                "ephemeral_1h_input_tokens": 0,
            },
            "output_tokens": generation.output_tokens + generation.reasoning_tokens,
            "service_tier": "standard",
        }
        if generation.reasoning_tokens:
            usage["output_tokens_details"] = {"thinking_tokens": generation.reasoning_tokens}
        return usage

    def _render_stream(
        self, messages: _Messages, usage: dict[str, Any], stop_reason: str, ctx: Context
    ) -> Reply:
        generation = messages.generation
        start_usage = {**usage, "output_tokens": 1}
        start_usage.pop("output_tokens_details", None)
        message: dict[str, Any] = {
            "id": f"msg_{ctx.request_id}",
            "type": "message",
            "role": "assistant",
            "model": messages.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": start_usage,
        }
        events = [_event("message_start", {"type": "message_start", "message": message})]
        index = 0
        if generation.thinking:
            block = {"type": "thinking", "thinking": "", "signature": ""}
            events.append(self._block_start(index, block))
            events.extend(
                self._delta(index, {"type": "thinking_delta", "thinking": piece})
                for piece in split_chunks(generation.thinking)
            )
            signature = self._thinking_block("", ctx)["signature"]
            events.append(self._delta(index, {"type": "signature_delta", "signature": signature}))
            events.append(_event("content_block_stop", {"type": "content_block_stop", "index": 0}))
            index += 1
        events.append(self._block_start(index, {"type": "text", "text": ""}))
        events.append(_event("ping", {"type": "ping"}))
        events.extend(
            self._delta(index, {"type": "text_delta", "text": piece})
            for piece in split_chunks(generation.texts[0])
        )
        events.append(_event("content_block_stop", {"type": "content_block_stop", "index": index}))
        final_usage = {key: usage[key] for key in usage if key not in ("cache_creation",)}
        final_usage.pop("service_tier", None)
        tail = [
            _event(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                    "usage": final_usage,
                },
            ),
            _event("message_stop", {"type": "message_stop"}),
        ]
        return sse_reply(events + tail, tail=len(tail), output_tokens=usage["output_tokens"])

    @staticmethod
    def _block_start(index: int, block: dict[str, Any]) -> bytes:
        return _event(
            "content_block_start",
            {"type": "content_block_start", "index": index, "content_block": block},
        )

    @staticmethod
    def _delta(index: int, delta: dict[str, Any]) -> bytes:
        return _event(
            "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}
        )

    def error(self, error: ApiError, ctx: Context) -> Reply:
        kind = _ERROR_TYPES.get(error.status, "api_error")
        message = error.message
        if error.reason == "quota":
            message = (
                f"Your organization has exhausted its daily limit of {self._config.daily_quota}"
                " requests (mock daily quota). Try again tomorrow."
            )
        elif error.reason == "rate_limit" and error.denial is not None:
            denial = error.denial
            unit = _LIMIT_NAMES[denial.dimension].replace("-", " ")
            message = (
                "This request would exceed the rate limit for your organization"
                f" (org-corral-mock) of {denial.limit} {unit} per minute."
            )
        elif error.status == 529 or error.reason == "outage":
            message = "Overloaded"
        elif error.reason == "injected":
            message = f"Mock injected error {error.status}."
        body = {
            "type": "error",
            "error": {"type": kind, "message": message},
            "request_id": f"req_{ctx.request_id}",
        }
        reply = json_reply(error.status, body)
        if error.retry_after is not None:
            reply.headers.append(retry_after_header(error.retry_after))
        return reply

    def add_headers(self, reply: Reply, ctx: Context, processing_s: float) -> None:
        headers = reply.headers
        headers.append((b"request-id", f"req_{ctx.request_id}".encode()))
        limits = dict(ctx.limits)
        if "tokens" not in limits:
            # The tokens headers report the most restrictive token limit in effect.
            token_limits = [limits[k] for k in ("input_tokens", "output_tokens") if k in limits]
            if token_limits:
                limits["tokens"] = min(token_limits, key=lambda state: state.remaining)
        for dimension, state in limits.items():
            self._limit_headers(headers, _LIMIT_NAMES[dimension], state, ctx.now)

    @staticmethod
    def _limit_headers(
        headers: list[tuple[bytes, bytes]], name: str, state: LimitState, now: datetime.datetime
    ) -> None:
        prefix = f"anthropic-ratelimit-{name}-"
        reset = rfc3339(now + datetime.timedelta(seconds=state.reset_s))
        headers.append(((prefix + "limit").encode(), b"%d" % state.limit))
        headers.append(((prefix + "remaining").encode(), b"%d" % state.remaining))
        headers.append(((prefix + "reset").encode(), reset.encode()))
