"""Request and result values, and the batch statistics computed from results."""

from __future__ import annotations

import itertools
import math
import os
from array import array
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal, TypeAlias

import attrs

from ._errors import ConfigurationError, ConfigurationTypeError, ErrorKind

__all__ = [
    "AnyRequest",
    "BatchResult",
    "BatchStatistics",
    "ChatRequest",
    "Completion",
    "EmbeddingRequest",
    "EmbeddingResult",
    "ErrorInfo",
    "ErrorKind",
    "Failure",
    "LimitInfo",
    "Message",
    "RateLimitHeaders",
    "Result",
    "Usage",
]

ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})

# Ids only need to be unique within a process run; a random prefix keeps two runs apart and a
# counter keeps generation cheap on the hot path.
_ID_PREFIX = "req-" + os.urandom(4).hex() + "-"
_ID_COUNTER = itertools.count()


def _new_id() -> str:
    return f"{_ID_PREFIX}{next(_ID_COUNTER)}"


def _token_count(inst: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if type(value) is int and value >= 0:  # the common case, checked first: every answer has five
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigurationTypeError(
            f"Usage.{attribute.name} must be an integer >= 0, got {type(value).__name__}"
        )
    if value < 0:
        raise ConfigurationError(f"Usage.{attribute.name} must be an integer >= 0, got {value!r}")


def _string_keyed(owner: str, name: str, value: Any) -> None:
    if type(value) is dict and not value:  # the common case, checked first: nothing extra
        return
    if not isinstance(value, dict):
        raise ConfigurationTypeError(
            f"{owner}.{name} must be a dict with string keys, got {type(value).__name__}"
        )
    if not all(isinstance(k, str) for k in value):
        raise ConfigurationTypeError(
            f"{owner}.{name} must be a dict with string keys, got {value!r:.100}"
        )


def _check_extra(inst: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    _string_keyed(type(inst).__name__, attribute.name, value)


@attrs.frozen
class Message:
    """One chat message.

    Args:
        role: ``"system"``, ``"developer"``, ``"user"``, ``"assistant"`` or ``"tool"``.
        content: The text, or a list of content parts in the OpenAI shape
            (``[{"type": "text", "text": ...}, ...]``).
        name: An optional participant name.
        extra: Other message fields (``tool_calls``, ``tool_call_id``, ...), passed through
            untouched to providers that understand them.
    """

    role: str = attrs.field()
    content: str | list[dict[str, Any]] = attrs.field()
    name: str | None = attrs.field(default=None)
    extra: dict[str, Any] = attrs.field(factory=dict)

    @role.validator
    def _check_role(self, attribute: attrs.Attribute[str], value: str) -> None:
        if not isinstance(value, str):
            raise ConfigurationTypeError(
                f"Message.role must be one of {sorted(ROLES)}, got {type(value).__name__}"
            )
        if value not in ROLES:
            raise ConfigurationError(
                f"Message.role must be one of {sorted(ROLES)}, got {value!r:.100}"
            )

    @content.validator
    def _check_content(self, attribute: attrs.Attribute[Any], value: Any) -> None:
        if isinstance(value, str):
            return
        if not isinstance(value, list):
            raise ConfigurationTypeError(
                f"Message.content must be a string or a list of content parts, "
                f"got {type(value).__name__}"
            )
        for part in value:
            # Adapters read parts with .get(): anything but a string-keyed object is an error.
            if not isinstance(part, dict) or not all(isinstance(k, str) for k in part):
                raise ConfigurationTypeError(
                    f"Message.content parts must be objects such as "
                    f'{{"type": "text", "text": ...}}, got {part!r:.100}'
                )

    @name.validator
    def _check_name(self, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is not None and not isinstance(value, str):
            raise ConfigurationTypeError(
                f"Message.name must be a string or None, got {type(value).__name__}"
            )

    @extra.validator
    def _check_extra(self, attribute: attrs.Attribute[Any], value: Any) -> None:
        _string_keyed("Message", "extra", value)

    @property
    def text(self) -> str:
        """Return the message's text, joining the text parts of a multi-part content."""
        if isinstance(self.content, str):
            return self.content
        return "".join(str(p.get("text", "")) for p in self.content if isinstance(p, Mapping))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Message:
        """Build a message from an OpenAI-shaped ``{"role": ..., "content": ...}`` mapping.

        Args:
            data: The mapping; keys other than role, content and name go to ``extra``.
        """
        # type() first: the ABC check costs more than the rest of a plain dict's conversion.
        if type(data) is not dict and not isinstance(data, Mapping):
            raise ConfigurationTypeError(
                f"a message must be a Message or a mapping, got {type(data).__name__}"
            )
        if "role" not in data:
            raise ConfigurationError("a message mapping needs a 'role' key")
        content = data.get("content")
        if content is None:
            content = ""
        if len(data) == 2 and content:
            extra = {}  # {"role", "content"}: nothing else to keep
        else:
            extra = {k: v for k, v in data.items() if k not in ("role", "content", "name")}
        return cls(role=data["role"], content=content, name=data.get("name"), extra=extra)


def _to_messages(value: Iterable[Message | Mapping[str, Any]]) -> tuple[Message, ...]:
    # type() first: a list or a tuple needs none of the ABC checks below.
    kind = type(value)
    if (kind is not list and kind is not tuple) and (
        isinstance(value, str | bytes | Mapping) or not isinstance(value, Iterable)
    ):
        raise ConfigurationTypeError(
            f"ChatRequest.messages must be a sequence of Message objects or mappings, "
            f"got {type(value).__name__}"
        )
    try:
        return tuple(m if isinstance(m, Message) else Message.from_dict(m) for m in value)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"messages: {exc}") from exc


def _check_max_tokens(inst: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigurationTypeError(
            f"ChatRequest.max_tokens must be a positive integer or None, got {type(value).__name__}"
        )
    if value < 1:
        raise ConfigurationError(
            f"ChatRequest.max_tokens must be a positive integer, got {value!r}"
        )


def _check_id(inst: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, str):
        raise ConfigurationTypeError(
            f"{type(inst).__name__}.id must be a non-empty string, got {type(value).__name__}"
        )
    if not value:
        raise ConfigurationError(f"{type(inst).__name__}.id must be a non-empty string, got ''")


def _sampling(low: float, high: float) -> Any:
    def check(inst: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is None:
            return
        accepted = f"ChatRequest.{attribute.name} must be a number from {low:g} to {high:g}"
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigurationTypeError(f"{accepted} or None, got {type(value).__name__}")
        # NaN compares false both ways; json.dumps would send it as the invalid token NaN.
        if not low <= value <= high:
            raise ConfigurationError(f"{accepted}, got {value!r:.100}")

    return check


def _to_stop(value: str | Iterable[str] | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return (value,)
    if isinstance(value, bytes | Mapping) or not isinstance(value, Iterable):
        raise ConfigurationTypeError(
            f"ChatRequest.stop must be a string or a list of strings, got {type(value).__name__}"
        )
    stop = tuple(value)
    for item in stop:
        if not isinstance(item, str):
            raise ConfigurationTypeError(
                f"ChatRequest.stop sequences must be strings, got {type(item).__name__}"
            )
    return stop


# Body fields that ChatRequest models itself; every other OpenAI field goes to ``extra``.
_OPENAI_MODELLED = (
    "model",
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "stop",
    "stream",
)


@attrs.frozen
class ChatRequest:
    """A chat completion request, independent of the provider it is sent to.

    Args:
        model: The provider's model name.
        messages: The conversation, as :class:`Message` objects or ``{"role", "content"}``
            mappings.
        max_tokens: The most output tokens to generate. Required by some providers (Anthropic).
        temperature: Sampling temperature.
        top_p: Nucleus sampling mass.
        stop: Stop sequences.
        id: Your identifier for the request; every result carries it. Generated when not given.
        extra: Provider-specific body fields, passed through untouched.
    """

    model: str = attrs.field()
    messages: tuple[Message, ...] = attrs.field(converter=_to_messages)
    max_tokens: int | None = attrs.field(default=None, validator=_check_max_tokens, kw_only=True)
    temperature: float | None = attrs.field(default=None, validator=_sampling(0, 2), kw_only=True)
    top_p: float | None = attrs.field(default=None, validator=_sampling(0, 1), kw_only=True)
    stop: tuple[str, ...] | None = attrs.field(default=None, converter=_to_stop, kw_only=True)
    id: str = attrs.field(factory=_new_id, validator=_check_id, kw_only=True)
    extra: dict[str, Any] = attrs.field(factory=dict, validator=_check_extra, kw_only=True)

    @model.validator
    def _check_model(self, attribute: attrs.Attribute[str], value: str) -> None:
        if not isinstance(value, str):
            raise ConfigurationTypeError(
                f"{type(self).__name__}.model must be a non-empty string, "
                f"got {type(value).__name__}"
            )
        if not value:
            raise ConfigurationError(
                f"{type(self).__name__}.model must be a non-empty string, got ''"
            )

    @messages.validator
    def _check_messages(self, attribute: attrs.Attribute[Any], value: tuple[Message, ...]) -> None:
        if not value:
            raise ConfigurationError("ChatRequest.messages must not be empty")

    @classmethod
    def from_openai(cls, body: Mapping[str, Any], *, id: str | None = None) -> ChatRequest:
        """Build a request from an OpenAI ``/chat/completions`` body.

        Fields that corral does not model (``tools``, ``response_format``, ``seed``, ...) are kept
        in ``extra`` and sent unchanged to providers that accept them.

        Args:
            body: The JSON body, as a mapping.
            id: The request's id; generated when not given.
        """
        if not isinstance(body, Mapping):
            raise ConfigurationTypeError(f"body must be a JSON object, got {type(body).__name__}")
        if "model" not in body:
            raise ConfigurationError("body has no 'model'")
        if "messages" not in body:
            raise ConfigurationError("body has no 'messages'")
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        extra = {k: v for k, v in body.items() if k not in _OPENAI_MODELLED}
        kwargs: dict[str, Any] = {}
        if id is not None:
            kwargs["id"] = id
        return cls(
            body["model"],
            body["messages"],
            max_tokens=max_tokens,
            temperature=body.get("temperature"),
            top_p=body.get("top_p"),
            stop=body.get("stop"),
            extra=extra,
            **kwargs,
        )

    @property
    def prompt_text(self) -> str:
        """Return the text of every message, joined; used for token estimates."""
        return "\n".join(m.text for m in self.messages)


def _to_input(value: str | Iterable[str]) -> str | tuple[str, ...]:
    if isinstance(value, str):
        return value
    if isinstance(value, bytes | Mapping) or not isinstance(value, Iterable):
        raise ConfigurationTypeError(
            f"EmbeddingRequest.input must be a string or a sequence of strings, "
            f"got {type(value).__name__}"
        )
    return tuple(value)


def _check_dimensions(inst: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigurationTypeError(
            f"EmbeddingRequest.dimensions must be a positive integer or None, "
            f"got {type(value).__name__}"
        )
    if value < 1:
        raise ConfigurationError(
            f"EmbeddingRequest.dimensions must be a positive integer, got {value!r}"
        )


@attrs.frozen
class EmbeddingRequest:
    """A request for embedding vectors, independent of the provider it is sent to.

    Args:
        model: The provider's embedding model name.
        input: One text, or a sequence of texts; the result has one vector per text.
        dimensions: The vector size to ask for, for models that can shorten their vectors.
        id: Your identifier for the request; every result carries it. Generated when not given.
        extra: Provider-specific body fields, passed through untouched (Gemini: merged into each
            ``embedContent`` request, for example ``taskType``).
    """

    model: str = attrs.field()
    input: str | tuple[str, ...] = attrs.field(converter=_to_input)
    dimensions: int | None = attrs.field(default=None, validator=_check_dimensions, kw_only=True)
    id: str = attrs.field(factory=_new_id, validator=_check_id, kw_only=True)
    extra: dict[str, Any] = attrs.field(factory=dict, validator=_check_extra, kw_only=True)

    @model.validator
    def _check_model(self, attribute: attrs.Attribute[str], value: str) -> None:
        if not isinstance(value, str):
            raise ConfigurationTypeError(
                f"{type(self).__name__}.model must be a non-empty string, "
                f"got {type(value).__name__}"
            )
        if not value:
            raise ConfigurationError(
                f"{type(self).__name__}.model must be a non-empty string, got ''"
            )

    @input.validator
    def _check_input(self, attribute: attrs.Attribute[Any], value: Any) -> None:
        if isinstance(value, str):
            return
        if not value:
            raise ConfigurationError("EmbeddingRequest.input must not be an empty sequence")
        for text in value:
            if not isinstance(text, str):
                raise ConfigurationTypeError(
                    f"EmbeddingRequest.input: every text must be a string, "
                    f"got {type(text).__name__}"
                )

    @property
    def texts(self) -> list[str]:
        """Return the input as a list of texts, one per expected vector."""
        return [self.input] if isinstance(self.input, str) else list(self.input)

    @classmethod
    def from_openai(cls, body: Mapping[str, Any], *, id: str | None = None) -> EmbeddingRequest:
        """Build a request from an OpenAI ``/embeddings`` body.

        Fields other than ``model``, ``input`` and ``dimensions`` are kept in ``extra``.

        Args:
            body: The JSON body, as a mapping.
            id: The request's id; generated when not given.
        """
        if not isinstance(body, Mapping):
            raise ConfigurationTypeError(f"body must be a JSON object, got {type(body).__name__}")
        if "model" not in body:
            raise ConfigurationError("body has no 'model'")
        if "input" not in body:
            raise ConfigurationError("body has no 'input'")
        extra = {k: v for k, v in body.items() if k not in ("model", "input", "dimensions")}
        kwargs: dict[str, Any] = {}
        if id is not None:
            kwargs["id"] = id
        return cls(
            body["model"],
            body["input"],
            dimensions=body.get("dimensions"),
            extra=extra,
            **kwargs,
        )


AnyRequest: TypeAlias = ChatRequest | EmbeddingRequest


@attrs.frozen
class Usage:
    """Token counts, normalised across providers.

    ``input_tokens`` always includes cached input and cache writes, for every provider, so that
    ``input_tokens + output_tokens`` is what was processed.

    Args:
        input_tokens: Prompt tokens, cached ones included.
        output_tokens: Generated tokens, reasoning included.
        cached_input_tokens: Prompt tokens read from the provider's cache.
        cache_write_tokens: Prompt tokens written to the provider's cache.
        reasoning_tokens: Output tokens spent on hidden reasoning.
    """

    input_tokens: int = attrs.field(default=0, validator=_token_count)
    output_tokens: int = attrs.field(default=0, validator=_token_count)
    cached_input_tokens: int = attrs.field(default=0, validator=_token_count)
    cache_write_tokens: int = attrs.field(default=0, validator=_token_count)
    reasoning_tokens: int = attrs.field(default=0, validator=_token_count)

    @property
    def total_tokens(self) -> int:
        """Input plus output tokens."""
        return self.input_tokens + self.output_tokens

    def __add__(self, other: Usage) -> Usage:
        if not isinstance(other, Usage):
            return NotImplemented
        return Usage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cached_input_tokens + other.cached_input_tokens,
            self.cache_write_tokens + other.cache_write_tokens,
            self.reasoning_tokens + other.reasoning_tokens,
        )


def _check_status(inst: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is None:
        return
    # Up to 999: any three-digit status a server can put on the wire, however odd.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigurationTypeError(
            f"ErrorInfo.status_code must be an HTTP status or None, got {type(value).__name__}"
        )
    if not 100 <= value <= 999:
        raise ConfigurationError(f"ErrorInfo.status_code must be an HTTP status, got {value!r}")


def _check_retry_after(inst: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigurationTypeError(
            f"ErrorInfo.retry_after_s must be a finite number >= 0 or None, "
            f"got {type(value).__name__}"
        )
    try:
        ok = math.isfinite(value) and value >= 0
    except OverflowError:
        ok = False
    if not ok:
        raise ConfigurationError(
            f"ErrorInfo.retry_after_s must be a finite number >= 0 or None, got {value!r:.100}"
        )


@attrs.frozen
class LimitInfo:
    """What a server said about one limit in one response.

    Args:
        limit: The limit per minute, if the server said.
        remaining: What is left of it now, if the server said.
        reset: Seconds until the limit is fully replenished, if the server said.
    """

    limit: float | None = None
    remaining: float | None = None
    reset: float | None = None


@attrs.frozen
class RateLimitHeaders:
    """The rate-limit information found in one response's headers, by limit name.

    Args:
        limits: `LimitInfo` by name (``requests``, ``tokens``, ``input_tokens``,
            ``output_tokens``); only names the server mentioned appear.
    """

    limits: Mapping[str, LimitInfo] = attrs.field(factory=dict)

    def __bool__(self) -> bool:
        return bool(self.limits)


@attrs.frozen
class ErrorInfo:
    """What went wrong with one request.

    Args:
        kind: The normalised kind.
        message: A human-readable explanation (the provider's, where it gave one).
        status_code: The HTTP status, when a response arrived.
        retryable: Whether the failure was of a kind corral retries.
        retry_after_s: The server's retry hint in seconds, when it gave one.
        provider_code: The provider's own error code or type (``context_length_exceeded``, ...).
    """

    kind: ErrorKind = attrs.field(converter=ErrorKind)
    message: str = attrs.field(validator=attrs.validators.instance_of(str))
    status_code: int | None = attrs.field(default=None, validator=_check_status)
    retryable: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))
    retry_after_s: float | None = attrs.field(default=None, validator=_check_retry_after)
    provider_code: str | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.instance_of(str))
    )


def _to_floats(value: Iterable[float]) -> tuple[float, ...]:
    return tuple(value)


@attrs.frozen
class Completion:
    """A successful chat completion.

    Args:
        id: The request's id.
        model: The model that answered, as the provider names it.
        content: The generated text.
        finish_reason: Why generation stopped (``stop``, ``length``, ``content_filter``, ...),
            normalised to OpenAI's vocabulary.
        usage: Normalised token counts.
        cost_usd: The cost in US dollars, or None when the model's price is unknown.
        latency_s: Seconds from the first attempt's start to the final answer.
        attempts: HTTP attempts made, retries included.
        raw: The provider's JSON response. For a streamed request, the response that the
            stream's events add up to, in the shape of the provider's non-streamed answer.
        ttft_s: Seconds from the request's start (the same origin as ``latency_s``) to the
            first text delta, for streamed requests; None otherwise or when no text came.
        inter_token_gaps_s: Seconds between consecutive text deltas, for streamed requests.
    """

    id: str
    model: str
    content: str
    finish_reason: str | None
    usage: Usage
    cost_usd: float | None = None
    latency_s: float = 0.0
    attempts: int = 1
    raw: dict[str, Any] = attrs.field(factory=dict, repr=False)
    ttft_s: float | None = None
    inter_token_gaps_s: tuple[float, ...] = attrs.field(
        default=(), converter=_to_floats, repr=lambda g: f"<{len(g)} gaps>"
    )

    @property
    def ok(self) -> Literal[True]:
        """Always True, since this result is a success."""
        return True

    @property
    def time_per_output_token_s(self) -> float | None:
        """Seconds per output token after the first, as vLLM's serving benchmark counts it.

        ``(latency_s - ttft_s) / (output_tokens - 1)``; None for requests that were not
        streamed or produced fewer than two tokens.
        """
        if self.ttft_s is None or self.usage.output_tokens < 2:
            return None
        return max(self.latency_s - self.ttft_s, 0.0) / (self.usage.output_tokens - 1)


def _vectors_repr(vectors: list[list[float]]) -> str:
    width = len(vectors[0]) if vectors else 0
    return f"<{len(vectors)} x {width}>"


@attrs.frozen
class EmbeddingResult:
    """The vectors of a successful embedding request.

    Args:
        id: The request's id.
        model: The model that answered, as the provider names it.
        vectors: One vector per input text, in input order.
        usage: Normalised token counts (``input_tokens`` only; 0 when the API reports none).
        cost_usd: The cost in US dollars, or None when the model's price is unknown.
        latency_s: Seconds from the first attempt's start to the final answer.
        attempts: HTTP attempts made, retries included.
        raw: The provider's JSON response.
    """

    id: str
    model: str
    vectors: list[list[float]] = attrs.field(repr=_vectors_repr)
    usage: Usage = attrs.field(factory=Usage)
    cost_usd: float | None = None
    latency_s: float = 0.0
    attempts: int = 1
    raw: dict[str, Any] = attrs.field(factory=dict, repr=False)

    @property
    def ok(self) -> Literal[True]:
        """Always True, since this result is a success."""
        return True


@attrs.frozen
class Failure:
    """A request that failed; returned as a value by ``run`` and ``stream``.

    Args:
        id: The request's id.
        error: What went wrong.
        attempts: HTTP attempts made (0 when corral refused to send it).
        latency_s: Seconds spent on the request.
    """

    id: str
    error: ErrorInfo
    attempts: int = 0
    latency_s: float = 0.0

    @property
    def ok(self) -> Literal[False]:
        """Always False, since this result is a failure."""
        return False


Result: TypeAlias = Completion | EmbeddingResult | Failure


@attrs.frozen
class BatchStatistics:
    """A summary of many results.

    Args:
        total: Results counted.
        succeeded: Successes (completions and embedding results).
        failed: Failures.
        failures_by_kind: Failure counts keyed by :class:`ErrorKind` value.
        attempts: HTTP attempts in all.
        retries: Attempts beyond the first of each request.
        usage: Summed token usage of the successes.
        cost_usd: Summed known cost.
        unpriced: Successes whose cost is unknown (not counted in ``cost_usd``).
        latency_p50_s: Median latency of successes.
        latency_p90_s: 90th percentile latency.
        latency_p99_s: 99th percentile latency.
        ttft_p50_s: Median time to first token of streamed completions.
        ttft_p90_s: 90th percentile time to first token.
        ttft_p99_s: 99th percentile time to first token.
        tpot_p50_s: Median time per output token after the first, of streamed completions
            (see :attr:`Completion.time_per_output_token_s`).
        tpot_p90_s: 90th percentile time per output token.
        tpot_p99_s: 99th percentile time per output token.
        wall_time_s: Seconds from the first admission to the last result.
        throughput_rps: Results per second of wall time.
    """

    total: int = 0
    succeeded: int = 0
    failed: int = 0
    failures_by_kind: dict[str, int] = attrs.field(factory=dict)
    attempts: int = 0
    retries: int = 0
    usage: Usage = attrs.field(factory=Usage)
    cost_usd: float = 0.0
    unpriced: int = 0
    latency_p50_s: float | None = None
    latency_p90_s: float | None = None
    latency_p99_s: float | None = None
    ttft_p50_s: float | None = None
    ttft_p90_s: float | None = None
    ttft_p99_s: float | None = None
    tpot_p50_s: float | None = None
    tpot_p90_s: float | None = None
    tpot_p99_s: float | None = None
    wall_time_s: float = 0.0
    throughput_rps: float = 0.0

    @property
    def total_tokens(self) -> int:
        """Input plus output tokens of every completion."""
        return self.usage.total_tokens


@attrs.frozen
class BatchResult:
    """The results of :meth:`corral.Client.run`, in input order, and their statistics.

    Args:
        results: One result per input, in input order.
        statistics: The batch's summary.
    """

    results: tuple[Result, ...] = attrs.field(repr=lambda r: f"<{len(r)} results>")
    statistics: BatchStatistics

    @property
    def completions(self) -> list[Completion]:
        """Return the successes, in input order."""
        return [r for r in self.results if isinstance(r, Completion)]

    @property
    def embeddings(self) -> list[EmbeddingResult]:
        """Return the embedding results, in input order."""
        return [r for r in self.results if isinstance(r, EmbeddingResult)]

    @property
    def failures(self) -> list[Failure]:
        """Return the failures, in input order."""
        return [r for r in self.results if isinstance(r, Failure)]

    @property
    def ok(self) -> bool:
        """Whether every request succeeded."""
        return self.statistics.failed == 0

    def __len__(self) -> int:
        return len(self.results)

    def __iter__(self) -> Any:
        return iter(self.results)

    def __getitem__(self, index: int) -> Result:
        return self.results[index]


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """Return the *q*-th percentile (0-100) of already sorted values, by linear interpolation.

    Args:
        sorted_values: The values, ascending.
        q: The percentile.
    """
    n = len(sorted_values)
    if n == 0:
        return None
    pos = (n - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, n - 1)
    frac = pos - lo
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * frac


class StatisticsCollector:
    """Accumulate results into :class:`BatchStatistics` in O(1) memory per result.

    Latencies are kept as 8-byte doubles so that exact percentiles stay cheap at a million
    results.
    """

    __slots__ = (
        "_attempts",
        "_by_kind",
        "_cache_write",
        "_cached",
        "_cost",
        "_failed",
        "_input",
        "_latencies",
        "_output",
        "_reasoning",
        "_retries",
        "_started",
        "_succeeded",
        "_tpots",
        "_ttfts",
        "_unpriced",
    )

    def __init__(self, started: float) -> None:
        self._started = started
        self._succeeded = 0
        self._failed = 0
        self._attempts = 0
        self._retries = 0
        self._by_kind: dict[str, int] = {}
        self._input = self._output = self._cached = self._cache_write = self._reasoning = 0
        self._cost = 0.0
        self._unpriced = 0
        self._latencies = array("d")
        self._ttfts = array("d")
        self._tpots = array("d")

    def __repr__(self) -> str:
        return (
            f"<StatisticsCollector succeeded={self._succeeded} failed={self._failed} "
            f"attempts={self._attempts}>"
        )

    def add(self, result: Result) -> None:
        """Count one result.

        Args:
            result: A completion, an embedding result or a failure.
        """
        self._attempts += result.attempts
        if result.attempts > 1:
            self._retries += result.attempts - 1
        if not isinstance(result, Failure):
            self._succeeded += 1
            u = result.usage
            self._input += u.input_tokens
            self._output += u.output_tokens
            self._cached += u.cached_input_tokens
            self._cache_write += u.cache_write_tokens
            self._reasoning += u.reasoning_tokens
            if result.cost_usd is None:
                self._unpriced += 1
            else:
                self._cost += result.cost_usd
            self._latencies.append(result.latency_s)
            if isinstance(result, Completion) and result.ttft_s is not None:
                self._ttfts.append(result.ttft_s)
                tpot = result.time_per_output_token_s
                if tpot is not None:
                    self._tpots.append(tpot)
        else:
            self._failed += 1
            kind = result.error.kind.value
            self._by_kind[kind] = self._by_kind.get(kind, 0) + 1

    def snapshot(self, now: float) -> BatchStatistics:
        """Return the statistics so far.

        Args:
            now: The current time, from the same clock as ``started``.
        """
        lat = sorted(self._latencies)
        ttft = sorted(self._ttfts)
        tpot = sorted(self._tpots)
        total = self._succeeded + self._failed
        wall = max(now - self._started, 0.0)
        return BatchStatistics(
            total=total,
            succeeded=self._succeeded,
            failed=self._failed,
            failures_by_kind=dict(sorted(self._by_kind.items())),
            attempts=self._attempts,
            retries=self._retries,
            usage=Usage(
                self._input, self._output, self._cached, self._cache_write, self._reasoning
            ),
            cost_usd=self._cost,
            unpriced=self._unpriced,
            latency_p50_s=percentile(lat, 50),
            latency_p90_s=percentile(lat, 90),
            latency_p99_s=percentile(lat, 99),
            ttft_p50_s=percentile(ttft, 50),
            ttft_p90_s=percentile(ttft, 90),
            ttft_p99_s=percentile(ttft, 99),
            tpot_p50_s=percentile(tpot, 50),
            tpot_p90_s=percentile(tpot, 90),
            tpot_p99_s=percentile(tpot, 99),
            wall_time_s=wall,
            throughput_rps=total / wall if wall > 0 else 0.0,
        )
