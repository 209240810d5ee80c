"""A wrapper that keeps API keys out of reprs, logs, tracebacks and serialised configs."""

from __future__ import annotations

from typing import Final, NoReturn

_MASK: Final = "********"


class Secret:
    """Hold a secret string; every way of printing it shows a mask instead.

    The value is read only with :meth:`reveal`, at the moment a request's headers are built.

    Args:
        value: The secret, for example an API key.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """Return the secret itself. Call only to put it into an outgoing request."""
        return self._value

    def __repr__(self) -> str:
        return f"Secret({_MASK!r})"

    def __str__(self) -> str:
        return _MASK

    def __format__(self, spec: str) -> str:
        return _MASK

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Secret):
            return self._value == other._value
        return NotImplemented

    def __hash__(self) -> int:
        return hash(("corral.Secret", self._value))

    def __reduce__(self) -> NoReturn:
        # Pickling would write the key to disk or a queue in clear text.
        raise TypeError("corral.Secret cannot be pickled; pass the key again where it is needed")
