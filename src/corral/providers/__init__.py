"""Provider adapters: each turns corral's requests into one API's HTTP calls and back.

Adapters are pure (no I/O). See :class:`Provider` for the protocol a third-party adapter follows.
"""

from ._base import InvalidResponse, Provider
from ._openai import OpenAI

__all__ = ["InvalidResponse", "OpenAI", "Provider"]
