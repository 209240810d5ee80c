"""Run LLM API calls at volume, one call or millions, on asyncio or trio.

General layout (everything public is re-exported here, flat):

- ``_client``: :class:`Client` (complete / run / stream) and its statistics.
- ``_runner``: the acquire-then-spawn admission loop.
- ``_models`` / ``_serde``: request and result values, and the one cattrs converter.
- ``_errors``: the exception tree (drawn in its docstring).
- ``_retry``: :class:`RetryPolicy`, error classification, retry hints.
- ``_secret``: the masked wrapper API keys live in.
- ``providers``: one pure adapter per API.
- ``testing``: the mock server and test helpers (not imported here).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("corral")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

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
from ._models import (
    BatchResult,
    BatchStatistics,
    ChatRequest,
    Completion,
    ErrorInfo,
    ErrorKind,
    Failure,
    Message,
    Result,
    Usage,
)
from ._retry import RetryPolicy
from ._secret import Secret
from ._serde import converter, from_json, to_json

__all__ = [
    "AuthenticationError",
    "BadRequestError",
    "BatchResult",
    "BatchStatistics",
    "BudgetExhaustedError",
    "ChatRequest",
    "CircuitOpenError",
    "Client",
    "ClientStatistics",
    "Completion",
    "ConfigurationError",
    "ConnectionFailedError",
    "ContentFilterError",
    "ContextLengthError",
    "CorralError",
    "ErrorInfo",
    "ErrorKind",
    "Failure",
    "InvalidInputError",
    "InvalidRequestError",
    "InvalidResponseError",
    "Message",
    "NotFoundError",
    "OverloadedError",
    "PermissionDeniedError",
    "RateLimitedError",
    "RequestFailed",
    "RequestTimeoutError",
    "Result",
    "ResultStream",
    "RetryPolicy",
    "Secret",
    "ServerError",
    "Usage",
    "__version__",
    "converter",
    "from_json",
    "to_json",
]
