"""Provider adapters: each turns corral's requests into one API's HTTP calls and back.

Adapters are pure (no I/O). See :class:`Provider` for the protocol a third-party adapter follows,
and :class:`StreamingProvider`, :class:`EmbeddingProvider` and :class:`RateLimitReader` for the
optional capabilities. :func:`corral.testing.check_provider` checks an adapter against recorded
responses.
"""

from .._exports import publish
from ._anthropic import Anthropic
from ._base import (
    EmbeddingProvider,
    InvalidResponse,
    Provider,
    ProviderError,
    RateLimitReader,
    StreamingProvider,
    StreamParser,
)
from ._gemini import Gemini
from ._openai import OpenAI

__all__ = [
    "Anthropic",
    "EmbeddingProvider",
    "Gemini",
    "InvalidResponse",
    "OpenAI",
    "Provider",
    "ProviderError",
    "RateLimitReader",
    "StreamParser",
    "StreamingProvider",
]

publish(globals(), __name__)
