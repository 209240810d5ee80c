"""Run LLM API calls at volume, one call or millions, on asyncio or trio.

General layout (everything public is re-exported here, flat). A request takes a concurrency
slot, then its budget reservation; each attempt then passes the breaker, the rate limiter, the
retry policy and the transport.

- ``_client``: :class:`Client` (complete / complete_stream / run / stream) and its statistics.
- ``_runner``: the acquire-then-spawn admission loop.
- ``_models`` / ``_serde``: request and result values, and the one cattrs converter.
- ``_errors``: the exception tree (drawn in its docstring).
- ``_retry``: :class:`RetryPolicy`, error classification, retry hints.
- ``_ratelimit``: :class:`RateLimit`, the GCRA core, header learning, the shared cooldown.
- ``_breaker``: :class:`CircuitBreaker`, per endpoint.
- ``_budget``: :class:`Budget` (reserve the worst case, then settle).
- ``_pricing``: :class:`Pricing` and the bundled ``prices.json``.
- ``_adaptive``: AIMD concurrency for ``max_concurrency="auto"``.
- ``_streaming``: SSE reading, time to first token, :class:`CompletionStream`.
- ``_transport`` / ``_transport_pool`` / ``_transport_socket`` / ``_http11``:
  :class:`FastTransport`, corral's own HTTP/1.1 transport over anyio streams (httptools or h11
  parsing, keep-alive pool); ``_httpx_shortcuts`` builds its httpx2 objects cheaply.
- ``_jobs*``: :func:`run_jsonl`, the durable, resumable OpenAI Batch JSONL engine behind
  ``corral run`` (input scan, id table, fsynced writer, manifest).
- ``_cli``: the ``corral`` command.
- ``_secret``: the masked wrapper API keys live in.
- ``providers``: one pure adapter per API.
- ``testing``: the mock server and test helpers (not imported here).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("corral")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

from ._adaptive import AdaptiveConcurrency, AdaptiveStatistics
from ._breaker import BreakerState, BreakerStatistics, CircuitBreaker
from ._budget import Budget, BudgetStatistics
from ._client import Client, ClientStatistics, ResultStream
from ._errors import (
    AuthenticationError,
    BadRequestError,
    BudgetExhaustedError,
    CircuitOpenError,
    ConfigurationError,
    ConnectionFailedError,
    ContentFilterError,
    ContextLengthError,
    CorralError,
    InvalidInputError,
    InvalidRequestError,
    InvalidResponseError,
    NotFoundError,
    OverloadedError,
    PermissionDeniedError,
    RateLimitedError,
    RequestFailed,
    RequestTimeoutError,
    ServerError,
)
from ._jobs import JobProgress, JobSummary, JsonlJob, run_jsonl
from ._jobs_errors import (
    CorruptOutputError,
    JobError,
    JobLockedError,
    JobMismatchError,
    OutputWriteError,
)
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
    Message,
    Result,
    Usage,
)
from ._pricing import CostBreakdown, LongContextPrice, ModelPrice, Pricing
from ._ratelimit import LimitInfo, RateLimit, RateLimiterStatistics, RateLimitHeaders
from ._retry import RetryPolicy
from ._secret import Secret
from ._serde import converter, from_json, to_json
from ._streaming import CompletionStream, StreamStatistics
from ._transport import FastTransport, OriginStatistics, TransportStatistics

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
