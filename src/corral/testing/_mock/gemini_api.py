"""The Gemini side of the mock: generateContent (plain and streamed), embeddings, countTokens."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import attrs

from .limits import google_duration
from .text import (
    CACHE_MIN_TOKENS,
    Generation,
    count_mock_tokens,
    embedding_vector,
    generate,
    split_chunks,
)
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
    sse_reply,
)

__all__ = ["GeminiApi"]

MODELS: Final = ("gemini-2.5-flash", "gemini-2.5-pro", "gemini-embedding-001", "text-embedding-004")
_STATUSES: Final = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_MESSAGES: Final = {
    403: "Method doesn't allow unregistered callers (callers without established identity)."
    " Please use API Key or other form of API consumer identity to call this API.",
    429: "Resource has been exhausted (e.g. check quota).",
    500: "An internal error has occurred. Please retry or report in"
    " https://developers.generativeai.google/guide/troubleshooting",
    503: "The model is overloaded. Please try again later.",
    504: "The request timed out. Please try again.",
}
_FINISH: Final = {"stop": "STOP", "length": "MAX_TOKENS"}
_QUOTA_IDS: Final = {
    "requests": "GenerateRequestsPerMinutePerProjectPerModel",
    "tokens": "GenerateContentInputTokensPerModelPerMinute",
    "input_tokens": "GenerateContentInputTokensPerModelPerMinute",
    "output_tokens": "GenerateContentOutputTokensPerModelPerMinute",
}
_TYPE: Final = "type.googleapis.com/google.rpc."


@attrs.frozen
class _Generate:
    model: str
    generation: Generation
    stream: bool
    sse: bool
    include_thoughts: bool


def _parts_text(value: object, where: str) -> str:
    parts = value.get("parts") if isinstance(value, dict) else None
    if not isinstance(parts, list):
        raise ApiError(400, "invalid", f"Invalid value at '{where}': parts are required.")
    return "".join(
        part["text"]
        for part in parts
        if isinstance(part, dict) and isinstance(part.get("text"), str)
    )


class GeminiApi(Api):
    """Emulate ``/v1beta/models/{model}:generateContent`` and its siblings."""

    __slots__ = ()

    family = "gemini"
    outage_status = 503

    def authenticate(self, headers: Mapping[str, str], query: Mapping[str, str]) -> None:
        if "key" in query:
            # The real API takes ?key=, but a key in a URL ends up in logs: refuse it loudly so
            # that a client which leaks keys this way fails its tests.
            raise ApiError(400, "invalid", "The mock server refuses API keys in the URL.")
        key = headers.get("x-goog-api-key", "").strip()
        if not key:
            raise ApiError(403, "auth_missing", _MESSAGES[403])
        if self._config.api_key is not None and key != self._config.api_key:
            raise ApiError(401, "auth_invalid", "API key not valid. Please pass a valid API key.")

    def parse(
        self,
        op: str,
        model: str,
        body: bytes,
        headers: Mapping[str, str],
        query: Mapping[str, str],
    ) -> Work:
        if op in ("models", "model"):
            return Work(op, model=model)
        data = load_object(body)
        if op == "embedContent":
            vectors = (self._embed(model, data, "content"),)
            return Work(
                "embed", model=model, input_tokens=vectors[0][1], limited=True, payload=vectors
            )
        if op == "batchEmbedContents":
            requests = data.get("requests")
            if not isinstance(requests, list) or not requests:
                raise ApiError(400, "invalid", "* BatchEmbedContentsRequest.requests: required")
            embedded = tuple(
                self._embed(model, request, "requests.content") for request in requests
            )
            tokens = sum(count for _, count in embedded)
            return Work(
                "batch_embed", model=model, input_tokens=tokens, limited=True, payload=embedded
            )
        return self._parse_generate(op, model, data, query)

    def _embed(self, model: str, data: object, where: str) -> tuple[list[float], int]:
        if not isinstance(data, dict):
            raise ApiError(400, "invalid", f"Invalid value at '{where}'.")
        named = data.get("model")
        if named is not None and (
            not isinstance(named, str) or named.removeprefix("models/") != model
        ):
            raise ApiError(400, "invalid", f"Model {named} does not match the URL's model {model}.")
        text = _parts_text(data.get("content"), where)
        native = 3072 if "gemini-embedding" in model else 768
        dims = optional_int(data, "outputDimensionality", minimum=1, maximum=native) or native
        return embedding_vector(text, self._config.seed, dims), count_mock_tokens(text)

    def _parse_generate(
        self, op: str, model: str, data: dict[str, Any], query: Mapping[str, str]
    ) -> Work:
        contents = data.get("contents")
        if not isinstance(contents, list) or not contents:
            raise ApiError(
                400, "invalid", "* GenerateContentRequest.contents: contents is not specified"
            )
        texts: list[str] = []
        prompt = ""
        for index, content in enumerate(contents):
            text = _parts_text(content, f"contents[{index}]")
            texts.append(text)
            if not isinstance(content, dict) or content.get("role", "user") == "user":
                prompt = text
        system = data.get("systemInstruction", data.get("system_instruction"))
        system_text = "" if system is None else _parts_text(system, "system_instruction")
        input_tokens = count_mock_tokens(system_text) + sum(map(count_mock_tokens, texts))
        if op == "countTokens":
            return Work("count_tokens", model=model, input_tokens=input_tokens)
        config = data.get("generationConfig", data.get("generation_config")) or {}
        if not isinstance(config, dict):
            raise ApiError(400, "invalid", "Invalid value at 'generation_config'.")
        max_tokens = optional_int(config, "maxOutputTokens", minimum=1)
        choices = optional_int(config, "candidateCount", minimum=1, maximum=8) or 1
        window = self._config.context_window
        if input_tokens > window:
            raise ApiError(
                400,
                "context_length",
                f"The input token count ({input_tokens}) exceeds the maximum number of tokens"
                f" allowed ({window}).",
            )
        thinking_config = config.get("thinkingConfig") or {}
        budget = thinking_config.get("thinkingBudget") if isinstance(thinking_config, dict) else 0
        include_thoughts = (
            isinstance(thinking_config, dict) and thinking_config.get("includeThoughts") is True
        )
        generation = generate(
            prompt,
            seed=self._config.seed,
            model=model,
            max_tokens=max_tokens,
            choices=choices,
            thinking=isinstance(budget, int) and budget > 0,
        )
        produced = generation.output_tokens + generation.reasoning_tokens
        prefix = system_text or texts[0]
        payload = _Generate(
            model,
            generation,
            stream=op == "streamGenerateContent",
            sse=op == "streamGenerateContent" and query.get("alt") == "sse",
            include_thoughts=include_thoughts,
        )
        return Work(
            "generate",
            model=model,
            input_tokens=input_tokens,
            output_reserve=max_tokens * choices if max_tokens is not None else produced,
            limited=True,
            cache_prefix=prefix if count_mock_tokens(prefix) >= CACHE_MIN_TOKENS else None,
            payload=payload,
        )

    def render(self, work: Work, ctx: Context) -> Reply:
        if work.op == "models":
            return json_reply(200, {"models": [self._model(name) for name in MODELS]})
        if work.op == "model":
            return json_reply(200, self._model(work.model))
        if work.op == "count_tokens":
            return json_reply(200, {"totalTokens": work.input_tokens})
        if work.op == "embed":
            vector, _ = work.payload[0]
            return json_reply(200, {"embedding": {"values": vector}})
        if work.op == "batch_embed":
            return json_reply(200, {"embeddings": [{"values": v} for v, _ in work.payload]})
        request: _Generate = work.payload
        generation = request.generation
        usage = self._usage(work, generation, ctx)
        output = generation.output_tokens + generation.reasoning_tokens
        if request.stream:
            return self._render_stream(request, usage, ctx, output)
        candidates = [
            self._candidate(index, text, finish, request, with_thoughts=True)
            for index, (text, finish) in enumerate(
                zip(generation.texts, generation.finish, strict=True)
            )
        ]
        body = {
            "candidates": candidates,
            "usageMetadata": usage,
            "modelVersion": request.model,
            "responseId": ctx.request_id,
        }
        return json_reply(200, body, output_tokens=output)

    @staticmethod
    def _model(name: str) -> dict[str, Any]:
        embedding = "embedding" in name
        methods = (
            ["embedContent", "batchEmbedContents"]
            if embedding
            else [
                "generateContent",
                "streamGenerateContent",
                "countTokens",
            ]
        )
        return {
            "name": f"models/{name}",
            "version": "001",
            "displayName": name,
            "inputTokenLimit": 2048 if embedding else 1_048_576,
            "outputTokenLimit": 1 if embedding else 65_536,
            "supportedGenerationMethods": methods,
        }

    @staticmethod
    def _candidate(
        index: int, text: str, finish: str | None, request: _Generate, *, with_thoughts: bool
    ) -> dict[str, Any]:
        parts: list[dict[str, Any]] = []
        if with_thoughts and request.include_thoughts and request.generation.thinking:
            parts.append({"text": request.generation.thinking, "thought": True})
        parts.append({"text": text})
        candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}}
        if finish is not None:
            candidate["finishReason"] = _FINISH[finish]
        candidate["index"] = index
        return candidate

    @staticmethod
    def _usage(work: Work, generation: Generation, ctx: Context) -> dict[str, Any]:
        # Like the real API, zero counts are left out (proto3 JSON omits default values).
        prompt = work.input_tokens
        total = prompt + generation.output_tokens + generation.reasoning_tokens
        usage: dict[str, Any] = {
            "promptTokenCount": prompt,
            "candidatesTokenCount": generation.output_tokens,
            "totalTokenCount": total,
        }
        if ctx.cache_read:
            usage["cachedContentTokenCount"] = ctx.cache_read
        if generation.reasoning_tokens:
            usage["thoughtsTokenCount"] = generation.reasoning_tokens
        usage["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": prompt}]
        if ctx.cache_read:
            usage["cacheTokensDetails"] = [{"modality": "TEXT", "tokenCount": ctx.cache_read}]
        return usage

    def _render_stream(
        self, request: _Generate, usage: dict[str, Any], ctx: Context, output: int
    ) -> Reply:
        generation = request.generation
        running = {
            "promptTokenCount": usage["promptTokenCount"],
            "totalTokenCount": usage["promptTokenCount"],
        }
        chunks: list[dict[str, Any]] = []
        for index, (text, finish) in enumerate(
            zip(generation.texts, generation.finish, strict=True)
        ):
            pieces = split_chunks(text) or [""]
            for number, piece in enumerate(pieces):
                last = number == len(pieces) - 1
                candidate = self._candidate(
                    index, piece, finish if last else None, request, with_thoughts=number == 0
                )
                chunks.append({"candidates": [candidate], "usageMetadata": running})
        chunks[-1]["usageMetadata"] = usage
        for chunk in chunks:
            chunk["modelVersion"] = request.model
            chunk["responseId"] = ctx.request_id
        if request.sse:
            events = [b"data: " + dumps(chunk) + b"\r\n\r\n" for chunk in chunks]
            return sse_reply(events, tail=1, output_tokens=output)
        # Without alt=sse the API streams one JSON array, element by element.
        events = [(b"[" if i == 0 else b",\r\n") + dumps(c) for i, c in enumerate(chunks)]
        events.append(b"]")
        return sse_reply(events, tail=2, output_tokens=output, sse=False)

    def error(self, error: ApiError, ctx: Context) -> Reply:
        status = _STATUSES.get(error.status, "UNKNOWN")
        message = error.message
        details: list[dict[str, Any]] = []
        if error.reason == "quota":
            message = (
                "You exceeded your current quota, please check your plan and billing details."
                f" Quota exceeded for metric: generate_content_requests, limit:"
                f" {self._config.daily_quota} per day."
            )
            details.append(
                self._quota_failure(
                    "GenerateRequestsPerDayPerProjectPerModel", ctx, self._config.daily_quota
                )
            )
        elif error.reason == "rate_limit" and error.denial is not None:
            message = _MESSAGES[429]
            quota_id = _QUOTA_IDS[error.denial.dimension]
            details.append(self._quota_failure(quota_id, ctx, error.denial.limit))
        elif error.reason in ("outage", "injected"):
            message = _MESSAGES.get(error.status, f"Mock injected error {error.status}.")
        elif error.reason == "auth_invalid":
            details.append(
                {
                    "@type": _TYPE + "ErrorInfo",
                    "reason": "API_KEY_INVALID",
                    "domain": "googleapis.com",
                    "metadata": {"service": "generativelanguage.googleapis.com"},
                }
            )
        if error.retry_after is not None:
            details.append(
                {"@type": _TYPE + "RetryInfo", "retryDelay": google_duration(error.retry_after)}
            )
        body = {"error": {"code": error.status, "message": message, "status": status}}
        if details:
            body["error"]["details"] = details
        return json_reply(error.status, body)

    @staticmethod
    def _quota_failure(quota_id: str, ctx: Context, value: int | None) -> dict[str, Any]:
        violation: dict[str, Any] = {
            "quotaMetric": "generativelanguage.googleapis.com/generate_content_requests",
            "quotaId": quota_id,
            "quotaDimensions": {"location": "global", "model": ctx.model or "unknown"},
        }
        if value is not None:
            violation["quotaValue"] = str(value)
        return {"@type": _TYPE + "QuotaFailure", "violations": [violation]}

    def add_headers(self, reply: Reply, ctx: Context, processing_s: float) -> None:
        # Gemini sends no rate-limit headers: its retry hint lives only in the error body.
        reply.headers.append(
            (b"server-timing", f"gfet4t7; dur={round(processing_s * 1000)}".encode())
        )
