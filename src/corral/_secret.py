"""A wrapper that keeps API keys out of reprs, logs, tracebacks and serialised configs."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable
from typing import Final, NoReturn

from ._errors import ConfigurationError

# redact(), scrub() and header_secrets() are the client's machinery, not public API.
__all__ = ["Secret"]

_MASK: Final = "********"

#: Headers that carry credentials, lower-cased: OpenAI and most compatible servers
#: (``authorization``), Anthropic (``x-api-key``), Gemini (``x-goog-api-key``), Azure (``api-key``).
CREDENTIAL_HEADERS: Final = frozenset(
    {"authorization", "proxy-authorization", "x-api-key", "x-goog-api-key", "api-key"}
)

# Shorter values would mask ordinary words in a message; no real key is this short. It is also
# the fragment rule's length: any run of this many characters of a secret is masked.
_MIN_SECRET_LENGTH: Final = 8

# Every Secret alive in the process, so that server text can be cleaned where it is read (in a
# parser, in an exception's constructor) without the key being passed down to every such place.
# Held weakly: a Secret no longer referenced is forgotten. Keyed by identity, not by value
# (a WeakSet would keep one of two equal Secrets, and forget the value when that one died).
# The lock guards it against a Secret made in another thread while text is being cleaned.
_LIVE: Final[weakref.WeakValueDictionary[int, Secret]] = weakref.WeakValueDictionary()
_LIVE_LOCK: Final = threading.Lock()


class Secret:
    """Hold a secret string; every way of printing it shows a mask instead.

    The value is read only with :meth:`reveal`, at the moment a request's headers are built.
    A value that cannot go into an HTTP header as it is (a newline left from a file, a control
    or non-ASCII character) is refused with :class:`corral.ConfigurationError`, which never
    quotes it: sent, it would make the HTTP library raise an error that does.

    Args:
        value: The secret, for example an API key.
    """

    __slots__ = ("__weakref__", "_grams", "_value")

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            # The type only: the value itself may be the key, in the wrong shape.
            raise TypeError(f"Secret value must be a string, got {type(value).__name__}")
        _check_header_safe(value)
        self._value = value
        self._grams = _grams(value)
        if self._grams:
            with _LIVE_LOCK:
                _LIVE[id(self)] = self

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


def _grams(value: str) -> frozenset[str]:
    """Return every run of ``_MIN_SECRET_LENGTH`` characters of *value* (none when shorter)."""
    n = _MIN_SECRET_LENGTH
    return frozenset(value[i : i + n] for i in range(len(value) - n + 1))


def _mask_grams(text: str, grams: frozenset[str]) -> str:
    """Replace each stretch of *text* covered by runs in *grams* with one mask.

    One pass over the text, a set lookup per position: O(len(text)) whatever the number and
    length of the secrets.
    """
    n = _MIN_SECRET_LENGTH
    if not grams or len(text) < n:
        return text
    parts: list[str] = []
    kept = 0  # text[:kept] is written to parts (or masked)
    covered_to = -1  # the end (exclusive) of the stretch being masked; -1 before the first
    for i in range(len(text) - n + 1):
        if text[i : i + n] in grams:
            if i > covered_to:
                # A new stretch: close the one before, keep the text between them.
                if covered_to >= 0:
                    parts.append(_MASK)
                parts.append(text[kept:i])
            covered_to = kept = i + n
    if covered_to < 0:
        return text
    parts.append(_MASK)
    parts.append(text[kept:])
    return "".join(parts)


def _grams_of(secrets: Iterable[str | Secret]) -> tuple[frozenset[str], int]:
    """Return the runs of every secret in *secrets*, and the longest secret's length."""
    grams: frozenset[str] = frozenset()
    longest = 0
    for secret in secrets:
        if isinstance(secret, Secret):
            grams |= secret._grams  # noqa: SLF001
            longest = max(longest, len(secret._value))  # noqa: SLF001
        elif len(secret) >= _MIN_SECRET_LENGTH:
            grams |= _grams(secret)
            longest = max(longest, len(secret))
    return grams, longest


def redact(text: str, secrets: Iterable[str | Secret]) -> str:
    """Return *text* with every whole occurrence of each secret replaced by a mask.

    For text that mixes corral's own words with server text already cleaned by :func:`scrub`
    (a failure's message, an attempt's exception): whole keys only, so that a word a key
    happens to contain (``sk-redirect-...``) is never masked in corral's own sentences. Values
    shorter than eight characters are left alone: they would mask ordinary words.

    Args:
        text: The text to clean.
        secrets: The secrets, as strings or :class:`Secret` objects.
    """
    values = {s._value if isinstance(s, Secret) else s for s in secrets}  # noqa: SLF001
    # Longest first, so that a whole "Bearer <key>" is masked as one.
    for value in sorted(values, key=len, reverse=True):
        if len(value) >= _MIN_SECRET_LENGTH and value in text:
            text = text.replace(value, _MASK)
    return text


def live_secrets() -> list[Secret]:
    """Return every :class:`Secret` alive in the process (those of 8 characters or more)."""
    with _LIVE_LOCK:
        return list(_LIVE.values())


def scrub(
    text: str | bytes, *, limit: int | None = None, secrets: Iterable[str | Secret] = ()
) -> str:
    """Return server text fit for an error message: secrets masked first, then cut to *limit*.

    The way text a server sent (an error body, a stream chunk, a field's value) enters an
    :class:`corral.ErrorInfo` or an exception, where corral reads it. The fragment rule: every
    stretch of the text covered by runs of eight consecutive characters of a secret (every live
    :class:`Secret`, and *secrets*) is replaced by one mask, so a whole key, and any prefix,
    suffix or middle part of eight characters or more, are all masked. Fewer than eight
    characters of a key are left: they tell little, and masking them would mask ordinary
    words. The text is masked *before* it is cut, so a cut never leaves part of a key behind;
    at most *limit* characters are kept. Bytes are decoded as UTF-8, bad sequences replaced.

    Args:
        text: The server's text, or its raw bytes.
        limit: The most characters to keep; None keeps them all.
        secrets: More secrets to mask, such as the credentials of the request's headers.
    """
    grams, longest = _grams_of((*live_secrets(), *secrets))
    if limit is not None:
        # Only a window can reach the kept part: a key that starts before `limit` ends within
        # the longest secret's length after it (and a character is at most 4 bytes of UTF-8).
        window = limit + longest
        text = text[: 4 * window] if isinstance(text, bytes) else text[:window]
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    text = _mask_grams(text, grams)
    return text if limit is None else text[:limit]
