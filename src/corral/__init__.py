"""Run LLM API calls at volume, one call or millions, on asyncio or trio.

General layout (everything public is re-exported here, flat, with ``__module__`` set to
``corral``). The folders follow a request's path, each layer importing only the ones below it
(``tests/test_layers.py`` keeps it so): values and errors < transport, flow control < providers <
client < jobs < CLI.

- ``_models`` / ``_serde`` / ``_errors`` / ``_secret``: request and result values, the one
  cattrs converter, the one exception tree (drawn in its docstring) and the masked key wrapper.
- ``_transport/``: :class:`FastTransport`, corral's own HTTP/1.1 transport over anyio streams.
- ``_flow/``: rate limit, circuit breaker, budget, pricing, adaptive concurrency, retry policy.
- ``providers/``: one pure adapter per API (public: ``corral.providers``), and ``_headers``,
  the one reader of rate-limit headers, retry hints and statuses.
- ``_client`` / ``_runner`` / ``_attempt`` / ``_exchange`` / ``_streaming``: a request's path, in
  its order: :class:`Client` (public API and lifecycle), its acquire-then-spawn admission loop,
  ``RequestPath`` (budget, then per attempt breaker and rate limiter, inside the retry loop),
  one HTTP exchange and its parsing, and streamed completions.
- ``jobs/``: durable, resumable JSONL jobs (public: ``corral.jobs``).
- ``_cli``: the ``corral`` command.
- ``testing/``: the mock server and test helpers (public: ``corral.testing``; never imported by
  the library).
"""

from ._client import Client, ClientStatistics, ResultStream
from ._errors import (
    AuthenticationError,
    BadRequestError,
    BudgetExhaustedError,
    CircuitOpenError,
    ConfigurationError,
    ConfigurationTypeError,
    ConnectionFailedError,
    ContentFilterError,
    ContextLengthError,
    CorralError,
    CorruptOutputError,
    InvalidInputError,
    InvalidRequestError,
    InvalidResponseError,
    JobError,
    JobLockedError,
    JobMismatchError,
    NotFoundError,
    OutputLostError,
    OutputWriteError,
    OverloadedError,
    PermissionDeniedError,
    RateLimitedError,
    RequestFailed,
    RequestTimeoutError,
    ServerError,
)
from ._exports import publish
from ._flow.adaptive import AdaptiveConcurrency, AdaptiveStatistics
from ._flow.breaker import BreakerState, BreakerStatistics, CircuitBreaker
from ._flow.budget import Budget, BudgetStatistics
from ._flow.pricing import CostBreakdown, LongContextPrice, ModelPrice, Pricing
from ._flow.ratelimit import RateLimit, RateLimiterStatistics
from ._flow.retry import RetryPolicy
from ._models import (
    AnyRequest,
    BatchResult,
    BatchStatistics,
    ChatRequest,
    Completion,
    EmbeddingRequest,
    EmbeddingResult,
    ErrorInfo,
    ErrorKind,
    Failure,
    LimitInfo,
    Message,
    RateLimitHeaders,
    Result,
    Usage,
)
from ._secret import Secret
from ._serde import converter, from_json, to_json
from ._streaming import CompletionStream, StreamStatistics
from ._transport.fast import FastTransport, OriginStatistics, TransportStatistics
from ._version import __version__
from .jobs._engine import JobProgress, JobSummary, JsonlJob, run_jsonl

__all__ = [
    "AdaptiveConcurrency",
    "AdaptiveStatistics",
    "AnyRequest",
    "AuthenticationError",
    "BadRequestError",
    "BatchResult",
    "BatchStatistics",
    "BreakerState",
    "BreakerStatistics",
    "Budget",
    "BudgetExhaustedError",
    "BudgetStatistics",
    "ChatRequest",
    "CircuitBreaker",
    "CircuitOpenError",
    "Client",
    "ClientStatistics",
    "Completion",
    "CompletionStream",
    "ConfigurationError",
    "ConfigurationTypeError",
    "ConnectionFailedError",
    "ContentFilterError",
    "ContextLengthError",
    "CorralError",
    "CorruptOutputError",
    "CostBreakdown",
    "EmbeddingRequest",
    "EmbeddingResult",
    "ErrorInfo",
    "ErrorKind",
    "Failure",
    "FastTransport",
    "InvalidInputError",
    "InvalidRequestError",
    "InvalidResponseError",
    "JobError",
    "JobLockedError",
    "JobMismatchError",
    "JobProgress",
    "JobSummary",
    "JsonlJob",
    "LimitInfo",
    "LongContextPrice",
    "Message",
    "ModelPrice",
    "NotFoundError",
    "OriginStatistics",
    "OutputLostError",
    "OutputWriteError",
    "OverloadedError",
    "PermissionDeniedError",
    "Pricing",
    "RateLimit",
    "RateLimitHeaders",
    "RateLimitedError",
    "RateLimiterStatistics",
    "RequestFailed",
    "RequestTimeoutError",
    "Result",
    "ResultStream",
    "RetryPolicy",
    "Secret",
    "ServerError",
    "StreamStatistics",
    "TransportStatistics",
    "Usage",
    "__version__",
    "converter",
    "from_json",
    "run_jsonl",
    "to_json",
]

publish(globals(), __name__)
