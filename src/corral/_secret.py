"""A wrapper that keeps API keys out of reprs, logs, tracebacks and serialised configs."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final, NoReturn

from ._errors import ConfigurationError

# redact() and header_secrets() are the client's machinery, not public API.
__all__ = ["Secret"]

_MASK: Final = "********"

#: Headers that carry credentials, lower-cased: OpenAI and most compatible servers
#: (``authorization``), Anthropic (``x-api-key``), Gemini (``x-goog-api-key``), Azure (``api-key``).
CREDENTIAL_HEADERS: Final = frozenset(
    {"authorization", "proxy-authorization", "x-api-key", "x-goog-api-key", "api-key"}
)

# Shorter values would mask ordinary words in a message; no real key is this short.
_MIN_SECRET_LENGTH: Final = 8


class Secret:
    """Hold a secret string; every way of printing it shows a mask instead.

    The value is read only with :meth:`reveal`, at the moment a request's headers are built.
    A value that cannot go into an HTTP header as it is (a newline left from a file, a control
    or non-ASCII character) is refused with :class:`corral.ConfigurationError`, which never
    quotes it: sent, it would make the HTTP library raise an error that does.

    Args:
        value: The secret, for example an API key.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            # The type only: the value itself may be the key, in the wrong shape.
            raise TypeError(f"Secret value must be a string, got {type(value).__name__}")
        _check_header_safe(value)
        self._value = value

    def reveal(self) -> str:
        """Return the secret itself. Call only to put it into an outgoing request."""
        return self._value

    def redact(self, text: str) -> str:
        """Return *text* with every occurrence of the secret replaced by a mask.

        Args:
            text: Any text that may quote the secret, such as a server's error message.
        """
        return redact(text, (self._value,))

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


def _check_header_safe(value: str) -> None:
    """Refuse a value that cannot go into an HTTP header as it is, without quoting it.

    A key read from a file often ends with a newline. Sent as is, HTTP libraries refuse the
    header with an error that quotes it (h11: ``Illegal header value b'Bearer sk-...\\n'``), and
    a non-ASCII character fails when the request is built, with the whole header value in the
    exception's ``args``: either way the key would end up in a failure, a log or a traceback.
    """
    bad = [i for i, char in enumerate(value) if not (" " <= char <= "~" or char == "\t")]
    if value != value.strip():
        bad.append(0 if value[0].isspace() else len(value) - 1)
    if not bad:
        return
    index = min(bad)
    raise ConfigurationError(
        f"the API key (api_key, a Secret value) must be printable ASCII with no whitespace "
        f"around it; it has a space, control or non-ASCII character at position {index} of "
        f"{len(value)} (a newline left from a file?)"
    )


def header_secrets(headers: Iterable[tuple[str, str]]) -> tuple[str, ...]:
    """Return the credentials that request headers carry, to :func:`redact` them from text.

    For a value with an auth scheme (``Bearer <token>``, ``Basic <token>``) both the whole value
    and the token are returned.

    Args:
        headers: ``(name, value)`` pairs, for example ``httpx2.Request.headers.multi_items()``.
    """
    found: list[str] = []
    for name, value in headers:
        if name.lower() not in CREDENTIAL_HEADERS:
            continue
        value = value.strip()
        found.append(value)
        scheme, _, token = value.partition(" ")
        if token and scheme.isalpha():
            found.append(token.strip())
    return tuple(found)


def redact(text: str, secrets: Iterable[str | Secret]) -> str:
    """Return *text* with every occurrence of each secret replaced by a mask.

    A server that quotes the key it received back in an error message (some compatible servers
    and proxies do) must not put it into a failure, a log line or an errors file. Values shorter
    than eight characters are left alone: they would mask ordinary words, and no key is so short.

    Args:
        text: The text to clean.
        secrets: The secrets, as strings or :class:`Secret` objects.
    """
    values = {s.reveal() if isinstance(s, Secret) else s for s in secrets}
    # Longest first, so that a whole "Bearer <key>" is masked as one.
    for value in sorted(values, key=len, reverse=True):
        if len(value) >= _MIN_SECRET_LENGTH and value in text:
            text = text.replace(value, _MASK)
    return text
