"""The provider adapter protocol, and helpers that every adapter shares.

An adapter is pure: it turns a :class:`corral.ChatRequest` into an :class:`httpx2.Request` and an
:class:`httpx2.Response` into a :class:`corral.Completion` or an :class:`corral.ErrorInfo`. It does
no I/O; the client sends what it builds.

The core protocol is :class:`Provider`. Streaming, embeddings and rate-limit headers are optional
capabilities, each its own protocol (:class:`StreamingProvider`, :class:`EmbeddingProvider`,
:class:`RateLimitReader`), so that a third-party adapter implements only what its API has.
"""

from __future__ import annotations

import ipaddress
import json
import json.encoder
import os
import re
from collections.abc import Mapping
from functools import partial
from typing import Any, Final, Protocol, runtime_checkable

import attrs
import httpx2

from .._errors import ConfigurationError, ConfigurationTypeError, InvalidRequestError
from .._flow.budget import implausible_usage
from .._models import (
    ChatRequest,
    Completion,
    EmbeddingRequest,
    EmbeddingResult,
    ErrorInfo,
    RateLimitHeaders,
    Usage,
)
from .._secret import Secret, header_secrets, live_secrets, redact, scrub
from .._transport.httpx_internals import json_post
from ._headers import classify_status, parse_retry_after, should_retry_override

__all__ = [
    "EmbeddingProvider",
    "InvalidResponse",
    "Provider",
    "ProviderError",
    "RateLimitReader",
    "StreamParser",
    "StreamingProvider",
]


class InvalidResponse(Exception):
    """Raised by an adapter when a response cannot be understood.

    The client turns it into a failure of kind ``invalid_response``. A stream parser raises it
    when a stream ended before its final event. Server text in the message is cleaned with
    ``corral._secret.scrub`` where it is read; a whole key that slipped through (in the
    ``repr`` of a value a parser choked on) is masked here, before the exception exists.

    Args:
        message: What is wrong with the response.
    """

    def __init__(self, message: str) -> None:
        super().__init__(redact(message, live_secrets()))


class ProviderError(Exception):
    """Raised by an adapter when a successful (2xx) answer reports a failure.

    Examples: an ``error`` event in the middle of a stream, or a prompt that Gemini blocked
    (``promptFeedback.blockReason``) with a 200. The client treats it like an error response
    described by :meth:`Provider.classify_error`.

    The message is the server's: any fragment of a key in it is masked here (see
    ``scrubbed``), before the exception exists.

    Args:
        info: The failure, normalised.
    """

    def __init__(self, info: ErrorInfo) -> None:
        info = scrubbed(info)
        super().__init__(info.message)
        self.info = info

    def __repr__(self) -> str:
        return f"ProviderError({self.info!r})"


@runtime_checkable
class Provider(Protocol):
    """What the client needs from an API adapter.

    Adapters must be pure (no I/O) and cheap: ``build_request`` and ``parse_response`` run once
    per attempt on the hot path.
    """

    #: A short name: ``"openai"``, ``"anthropic"``, ``"gemini"``.
    name: str

    @property
    def endpoint(self) -> str:
        """The base URL that identifies this upstream for breakers and rate limits."""
        ...

    def build_request(self, request: ChatRequest) -> httpx2.Request:
        """Build the HTTP request for *request*, with credentials.

        Args:
            request: The provider-independent request.
        """
        ...

    def parse_response(self, request: ChatRequest, response: httpx2.Response) -> Completion:
        """Parse a successful (2xx), fully read response.

        Raises :class:`InvalidResponse` when the body is not what the API documents.

        Args:
            request: The request that was sent.
            response: The read response.
        """
        ...

    def classify_error(self, response: httpx2.Response) -> ErrorInfo:
        """Describe a non-2xx, fully read response as an error.

        Args:
            response: The read response.
        """
        ...


@runtime_checkable
class StreamParser(Protocol):
    """Turn one streamed response's server-sent events into text deltas and a completion.

    A parser is created per attempt by :meth:`StreamingProvider.stream_parser` and is fed every
    event in order. It is pure and keeps only the state the final :class:`corral.Completion`
    needs.
    """

    @property
    def done(self) -> bool:
        """Whether the stream's final event arrived (OpenAI ``[DONE]``, Anthropic
        ``message_stop``, a Gemini chunk with a ``finishReason``)."""
        ...

    def feed(self, event: httpx2.ServerSentEvent) -> str:
        """Take the next event; return its text delta, or ``""`` when it carries no text.

        Raises :class:`ProviderError` for an error event and :class:`InvalidResponse` for an
        event that cannot be parsed.

        Args:
            event: The event, as httpx2's SSE reader decoded it.
        """
        ...

    def result(self) -> Completion:
        """Return the completion the events add up to.

        Raises :class:`InvalidResponse` when the final event never came: a truncated stream is
        never a success.
        """
        ...


@runtime_checkable
class StreamingProvider(Provider, Protocol):
    """A provider whose API streams completions as server-sent events."""

    def build_stream_request(self, request: ChatRequest) -> httpx2.Request:
        """Build the HTTP request that asks for *request* as a stream, with credentials.

        Args:
            request: The provider-independent request.
        """
        ...

    def stream_parser(self, request: ChatRequest) -> StreamParser:
        """Return a fresh parser for one streamed attempt of *request*.

        Args:
            request: The request that was sent.
        """
        ...


@runtime_checkable
class EmbeddingProvider(Provider, Protocol):
    """A provider whose API computes embeddings."""

    def build_embedding_request(self, request: EmbeddingRequest) -> httpx2.Request:
        """Build the HTTP request for *request*, with credentials.

        Args:
            request: The provider-independent embedding request.
        """
        ...

    def parse_embedding_response(
        self, request: EmbeddingRequest, response: httpx2.Response
    ) -> EmbeddingResult:
        """Parse a successful (2xx), fully read embedding response.

        Args:
            request: The request that was sent.
            response: The read response.
        """
        ...


@runtime_checkable
class RateLimitReader(Protocol):
    """A provider that reads its API's rate-limit headers."""

    def rate_limits(self, response: httpx2.Response) -> RateLimitHeaders:
        """Return the limits *response*'s headers report (empty when it reports none).

        Args:
            response: Any response, success or error.
        """
        ...


def check_base_url(url: str, provider: str) -> str:
    """Return *url* without its trailing slash, or raise when it is not an http(s) URL.

    The message never repeats the value: a key passed by mistake in its place must not leak.

    Args:
        url: The base URL given by the user.
        provider: The provider's display name, for the error message.
    """
    if not isinstance(url, str):
        raise ConfigurationTypeError(
            f"{provider} base_url must be a string, got {type(url).__name__}"
        )
    try:
        parsed = httpx2.URL(url)
    except httpx2.InvalidURL:
        # Not chained: httpx2's message may quote the value, which may be a misplaced key.
        raise ConfigurationError(
            f"{provider} base_url is not a valid URL (a control character, a space or a bad "
            f"port?); pass an absolute http:// or https:// URL, and the key as api_key=..."
        ) from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ConfigurationError(
            f"{provider} base_url must be an absolute http:// or https:// URL "
            f"(pass the key as api_key=...)"
        )
    port = parsed.port
    if port is not None and not 0 < port <= 65535:
        # httpx2 parses any number; the socket layer would fail on every request instead.
        raise ConfigurationError(
            f"{provider} base_url has port {port}, outside 1-65535; fix the port in the URL "
            f"(or leave it out for the scheme's default)"
        )
    if parsed.query or parsed.userinfo:
        # Credentials belong in headers; a key in a URL ends up in logs and proxies.
        raise ConfigurationError(
            f"{provider} base_url must not carry a query string or user info; "
            f"pass the key as api_key=..."
        )
    return url.rstrip("/")


def check_options(provider: str, **options: tuple[object, bool]) -> None:
    """Raise :class:`corral.ConfigurationError` for an adapter option that is not a string.

    Args:
        provider: The provider's display name, for the message.
        options: ``name=(value, optional)``: each value must be a non-empty string, or when
            optional a string or None.
    """
    for name, (value, optional) in options.items():
        if optional and value is None:
            continue
        if not isinstance(value, str):
            raise ConfigurationTypeError(
                f"{provider} {name} must be a string, got {type(value).__name__}"
            )
        if not (value or optional):
            raise ConfigurationError(f"{provider} {name} must be a non-empty string, got ''")
        # Options travel in headers or in the URL: refuse what cannot, here rather than at
        # every request.
        problem = header_value_problem(value)
        if problem is not None:
            raise ConfigurationError(f"{provider} {name} {problem}; got {value!r:.60}")


def check_headers(headers: object, provider: str) -> None:
    """Raise :class:`corral.ConfigurationError` unless *headers* is None or maps str to str.

    The message never repeats a value: a key put here by mistake must not leak.

    Args:
        headers: The user's extra headers.
        provider: The provider's display name, for the message.
    """
    if headers is None:
        return
    if not isinstance(headers, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    ):
        raise ConfigurationTypeError(
            f"{provider} headers must be a dict of strings to strings"
            + ("" if isinstance(headers, Mapping) else f", got {type(headers).__name__}")
        )
    for name, value in headers.items():
        if not _TOKEN.fullmatch(name):
            raise ConfigurationError(
                f"{provider} headers: {name!r:.60} is not a valid header name (letters, digits "
                f"and !#$%&'*+-.^_`|~ only, no spaces or colons); fix the name"
            )
        problem = header_value_problem(value)
        if problem is not None:
            raise ConfigurationError(
                f"{provider} headers: the value of {name!r} {problem} (value not shown: it may "
                f"be a secret)"
            )


# RFC 9110 token characters: what a header name may hold.
_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# What a header value may not hold: anything but tab and printable ASCII.
_NOT_IN_VALUE: Final = re.compile(r"[^\t\x20-\x7e]")


def header_value_problem(value: str) -> str | None:
    """Return what makes *value* unfit for an HTTP header (never quoting it), or None.

    A CR or LF would end the header early (header injection; the transports refuse it), a
    non-ASCII character cannot be encoded, and other control characters are refused by servers.

    Args:
        value: A header value.
    """
    bad = _NOT_IN_VALUE.search(value)
    if bad is None:
        return None
    char = bad.group()
    where = f"at position {bad.start()} of {len(value)}"
    if char in "\r\n":
        return (
            f"has a line break (CR or LF) {where}, which would split the HTTP header; "
            f"remove it (a newline left from a file?)"
        )
    if char.isascii():
        return f"has a control character {where}; remove it"
    return (
        f"has a non-ASCII character {where}; HTTP header values must be ASCII: remove it or "
        f"encode the value (for example percent-encoding)"
    )


def check_api_key(api_key: object, provider: str) -> None:
    """Raise :class:`corral.ConfigurationError` unless *api_key* is a str, a Secret or None.

    Args:
        api_key: The key given.
        provider: The provider's display name, for the message.
    """
    if api_key is not None and not isinstance(api_key, str | Secret):
        raise ConfigurationTypeError(
            f"{provider} api_key must be a string or a corral.Secret, got {type(api_key).__name__}"
        )


def base_headers(user_agent: str, extra: Mapping[str, str] | None) -> dict[str, str]:
    """Return the headers every request of an adapter carries, lower-cased.

    Args:
        user_agent: The ``user-agent`` value.
        extra: The user's extra headers, which win.
    """
    headers = {
        "content-type": "application/json",
        "accept": "application/json",
        "user-agent": user_agent,
    }
    headers.update({k.lower(): v for k, v in (extra or {}).items()})
    return headers


def add_request_id(headers: dict[str, str], request_id: str) -> None:
    """Send the request's id as ``x-client-request-id`` when it is a short ASCII string.

    OpenAI echoes it in its logs; the mock server counts hits per id with it.

    Args:
        headers: The outgoing headers, changed in place.
        request_id: The corral request id.
    """
    if request_id.isascii() and request_id.isprintable() and len(request_id) <= 512:
        headers["x-client-request-id"] = request_id


_DATA_URL: Final = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+);base64,(?P<data>.*)$", re.DOTALL)


def split_data_url(url: str) -> tuple[str, str] | None:
    """Return ``(mime_type, base64_data)`` for a base64 ``data:`` URL, else None.

    Args:
        url: An image URL from an OpenAI ``image_url`` content part.
    """
    match = _DATA_URL.match(url)
    if match is None:
        return None
    return match.group("mime"), match.group("data")


def resolve_key(
    api_key: str | Secret | None,
    env_var: str,
    base_url: str,
    provider: str,
    *,
    fallback_env: tuple[str, ...] = (),
) -> Secret:
    """Return the API key as a :class:`Secret`, from the argument or the environment.

    A missing key is an error except for loopback servers (local inference servers and the mock
    server need none).

    Args:
        api_key: The key passed by the user, if any.
        env_var: The environment variable to read when no key was passed.
        base_url: The API's base URL.
        provider: The provider's display name, for the error message.
        fallback_env: More variables to try, in order, after *env_var*.
    """
    if isinstance(api_key, Secret):
        return api_key
    if api_key is None:
        for name in (env_var, *fallback_env):
            api_key = os.environ.get(name)
            if api_key:
                break
    if api_key:
        return Secret(api_key)
    if is_loopback(base_url):
        return Secret("")
    raise ConfigurationError(
        f"no API key for {provider}: pass api_key=... or set the {env_var} environment variable"
    )


def is_loopback(url: str) -> bool:
    """Return whether *url* points at this machine.

    Args:
        url: An absolute URL.
    """
    host = httpx2.URL(url).host
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# One compact encoder for every body: json.dumps with options builds a new one per call.
_ENCODER: Final = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
# And JSONEncoder.encode builds json's C encoder afresh per call (with a dict to catch cycles):
# build it once. Without that dict a cycle ends in RecursionError, which encode_json reports
# like any other value that is not JSON. None where json has no C accelerator.
# (typeshed does not declare json.encoder.c_make_encoder, hence getattr.)
_MAKE_C_ENCODER: Final[Any] = getattr(json.encoder, "c_make_encoder", None)
_C_ENCODE: Final[Any] = (
    None
    if _MAKE_C_ENCODER is None
    else _MAKE_C_ENCODER(
        None, _ENCODER.default, json.encoder.encode_basestring, None, ":", ",", False, False, True
    )
)


def encode_json(body: Mapping[str, Any]) -> bytes:
    """Encode a JSON body compactly, as bytes ready to send.

    Args:
        body: The JSON object.

    Raises:
        InvalidRequestError: The body holds a value that is not JSON (a set, bytes, an object
            of your own, a cycle), typically in a request's ``extra`` fields.
    """
    try:
        if _C_ENCODE is not None:
            return "".join(_C_ENCODE(body, 0)).encode()
        return _ENCODER.encode(body).encode()
    except (TypeError, ValueError, RecursionError) as exc:
        why = (
            "nested too deeply, or it contains itself"
            if isinstance(exc, RecursionError)
            else str(exc)
        )
        raise InvalidRequestError(
            f"the request body is not JSON ({why}); every value in extra, in a message's "
            f"extra and in its content parts must be a JSON value: a dict with string keys, "
            f"a list, a string, a number, a bool or None"
        ) from exc


def post_json(
    url: httpx2.URL | str, headers: Mapping[str, str], body: Mapping[str, Any]
) -> httpx2.Request:
    """Build a POST of a JSON body, complete with its ``Host`` and ``Content-Length``.

    The same request as ``httpx2.Request("POST", url, headers=..., content=...)``, built
    from bytes encoded here once (see :mod:`corral._transport.httpx_internals`) instead of
    normalised again by httpx2.

    Args:
        url: The endpoint.
        headers: The request's other headers.
        body: The JSON object to send.

    Raises:
        InvalidRequestError: The body holds a value that is not JSON (see `encode_json`), or a
            header cannot be sent (not ASCII, or a line break that would split it): that request
            fails as ``bad_request``, the others go on.
    """
    url = url if isinstance(url, httpx2.URL) else httpx2.URL(url)
    content = encode_json(body)
    # What httpx2 would hold: names and values encoded as ASCII.
    raw = [(b"Host", url.netloc), (b"Content-Length", b"%d" % len(content))]
    try:
        raw += [(name.encode("ascii"), value.encode("ascii")) for name, value in headers.items()]
    except UnicodeEncodeError:
        raise _bad_header(headers) from None
    for name_bytes, value_bytes in raw:
        # Constructors refuse these; a header added per request could still carry one, and
        # sent it would be header injection (or a retried "connection" error).
        if _UNSENDABLE.search(value_bytes) or _UNSENDABLE.search(name_bytes):
            raise _bad_header(headers)
    return json_post(url, raw, content)


_UNSENDABLE: Final = re.compile(rb"[\r\n\0]")


def _bad_header(headers: Mapping[str, str]) -> InvalidRequestError:
    for name, value in headers.items():
        problem = header_value_problem(value) or header_value_problem(name)
        if problem is not None:
            return InvalidRequestError(
                f"header {name!r:.60} cannot be sent: its name or value {problem} (value not "
                f"shown: it may be a secret)"
            )
    return InvalidRequestError("a header cannot be sent: it is not ASCII")  # pragma: no cover


#: What reading a hostile JSON value can raise, besides the adapter's own errors: a parser
#: catches these around its field access and raises :class:`InvalidResponse` instead.
#: OverflowError comes from ``int(1e400)`` and friends, RecursionError from values nested
#: deeper than the interpreter's recursion limit.
PARSE_ERRORS: Final = (
    KeyError,
    IndexError,
    TypeError,
    AttributeError,
    ValueError,
    OverflowError,
    RecursionError,
)


def loads(text: str | bytes, what: str) -> Any:
    """Decode JSON from a server, or raise :class:`InvalidResponse` naming *what* it was.

    Args:
        text: The JSON text.
        what: What the text is, for the message (``"HTTP 200 body"``, ``"stream chunk"``).
    """
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        # UnicodeDecodeError is a ValueError; RecursionError is a hostile nesting depth.
        # Masked before it is cut: a cut key would no longer match the key.
        raise InvalidResponse(f"{what} is not JSON: {scrub(text, limit=120)!r}") from exc


# json's scanner (its C one where there is one): reads one value from a position in a text.
# (An attribute every JSONDecoder sets in its constructor; typeshed does not declare it.)
_SCAN_ONCE: Final[Any] = getattr(json.JSONDecoder(), "scan_once")  # noqa: B009


def decode_json(response: httpx2.Response) -> Any:
    """Decode a response body as JSON, or raise :class:`InvalidResponse`.

    Args:
        response: A read response.
    """
    content = response.content
    try:
        if content[:1] == b"{" and content[1:2] != b"\x00":
            # What json.loads would find by sniffing the bytes: UTF-8 (no BOM, no UTF-16/32).
            text = content.decode("utf-8", "surrogatepass")
            # json.loads without its three Python layers: scan the one value, which must end
            # the text. Anything else (trailing space, an error) takes json.loads' own path.
            try:
                value, end = _SCAN_ONCE(text, 0)
            except StopIteration:
                pass
            else:
                if end == len(text):
                    return value
            return json.loads(text)
        return json.loads(content)
    except (ValueError, RecursionError):
        pass
    # Not JSON: decode again for the error that names the body (the rare path).
    return loads(content, f"HTTP {response.status_code} body")


def try_json(response: httpx2.Response) -> Any:
    """Decode an error response's body as JSON; return None when it is not JSON.

    Args:
        response: A read response.
    """
    try:
        return json.loads(response.content)
    except (ValueError, RecursionError):
        return None


def token_count(usage: Mapping[str, Any], key: str) -> int:
    """Return the token count *usage* reports under *key*; 0 when it is absent or null.

    Raises :class:`InvalidResponse` for anything that is not a whole number >= 0 (negative,
    NaN, infinite, a string of letters, a list...): a usage the server got wrong must not be
    priced or budgeted as if it were right.

    Args:
        usage: The provider's usage object.
        key: The field to read.
    """
    value = usage.get(key)
    if value is None:
        return 0
    try:
        count = int(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidResponse(
            f"usage field {key!r} is not a token count: {scrub(repr(value), limit=80)}"
        ) from exc
    if count < 0:
        raise InvalidResponse(f"usage field {key!r} is negative: {count}")
    if count > MAX_TOKEN_COUNT:
        raise InvalidResponse(f"usage field {key!r} is beyond any real count: {count:.3g}")
    return count


def as_text(value: Any) -> str:
    """Return a server's string field as it is; anything else as (the start of) its JSON.

    Args:
        value: A field of a response, as decoded; None gives ``""``.
    """
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    try:
        return scrub(json.dumps(value), limit=200)
    except (ValueError, RecursionError):
        return f"<{type(value).__name__}>"


def text_or_none(value: Any) -> str | None:
    """Return :func:`as_text` of *value*, or None when it is None.

    Args:
        value: A field of a response, as decoded.
    """
    return None if value is None else as_text(value)


def details(value: Any) -> Mapping[str, Any]:
    """Return *value* when it is a JSON object, else an empty one (for optional sub-objects).

    Args:
        value: A sub-object of a response, as decoded.
    """
    if type(value) is dict:  # what json.loads gives: no ABC check on the hot path
        return value
    return value if value is not None and isinstance(value, Mapping) else {}


def error_info(
    response: httpx2.Response,
    message: str,
    *,
    provider_code: str | None = None,
    kind_override: Any = None,
) -> ErrorInfo:
    """Build an :class:`ErrorInfo` from a status, the server's hints and a parsed message.

    Args:
        response: The read error response.
        message: The provider's error message.
        provider_code: The provider's own error code or type.
        kind_override: An :class:`corral.ErrorKind` that replaces the status-based kind (for
            example ``context_length`` for a 400 the body explains).
    """
    kind, retryable = classify_status(response.status_code)
    if kind_override is not None:
        kind = kind_override
    verdict = should_retry_override(response.headers)
    if verdict is not None and response.status_code >= 400:
        retryable = verdict
    credentials = request_secrets(response)
    # Only the server's words are masked: a word a key contains stays in corral's own.
    message = scrub(message, secrets=credentials)
    if 300 <= response.status_code < 400:
        where = scrub(response.headers.get("location", "?"), secrets=credentials)
        message = f"redirect to {where} not followed (API calls never follow redirects)"
    return ErrorInfo(
        kind,
        message,
        status_code=response.status_code,
        retryable=retryable,
        retry_after_s=parse_retry_after(response.headers),
        provider_code=None if provider_code is None else scrub(provider_code, secrets=credentials),
    )


# -- the most tokens a request can be billed for (budget reservations) --------------------------

#: The most tokens any usage field may report: far beyond any context window, well within a
#: float's exact integers. A larger count is a server's error, never a real bill.
MAX_TOKEN_COUNT: Final = 1 << 40

#: Part types whose payload (a data URL's base64) is billed by the image's size, not its bytes.
_IMAGE_PARTS: Final = frozenset({"image_url", "image", "input_image"})


def _image_payload(part: Mapping[str, Any]) -> str | None:
    """Return the base64 payload of an image part's data URL, or None."""
    image = part.get("image_url", part.get("image"))
    url = image.get("url") if isinstance(image, Mapping) else image
    if isinstance(url, str) and url.startswith("data:"):
        comma = url.find(",")
        if comma >= 0:
            return url[comma + 1 :]
    return None


def input_token_bound(
    request: ChatRequest | EmbeddingRequest,
    http_request: httpx2.Request,
    *,
    per_message: int,
    per_request: int,
    per_image: int,
) -> int:
    """Return the most input tokens a provider can bill for *http_request*.

    Text never takes more tokens than its UTF-8 bytes (byte-level BPE and byte-fallback
    tokenizers: every token stands for at least one byte), and the body holds every byte of
    text sent (messages, system prompt, tools and schemas in ``extra``) plus JSON syntax, so
    the body's length bounds the text. A chat template adds a few tokens per message and per
    request, which the body does not hold. An image is billed by its size, not its bytes: its
    base64 payload, when the body carries it verbatim, is replaced by the provider's most
    tokens per image.

    Args:
        request: The request the body was built from.
        http_request: The HTTP request the adapter built (its body is read, not sent).
        per_message: The most template tokens per message (or per embedded text).
        per_request: The most template tokens per request.
        per_image: The most tokens one image can be billed for.
    """
    body = http_request.content
    tokens = len(body) + per_request
    if isinstance(request, EmbeddingRequest):
        texts = 1 if isinstance(request.input, str) else len(request.input)
        return tokens + per_message * texts
    tokens += per_message * len(request.messages)
    for message in request.messages:
        if isinstance(message.content, str):
            continue
        for part in message.content:
            if part.get("type", "text") == "text":
                continue
            tokens += per_image
            if part.get("type") in _IMAGE_PARTS:
                payload = _image_payload(part)
                # Only a payload the body holds as it is was counted in its length.
                if payload and payload.encode("ascii", "replace") in body:
                    tokens -= len(payload)
    return max(tokens, 0)


def output_token_bound(request: ChatRequest | EmbeddingRequest) -> int | None:
    """Return the most output tokens *request* can be billed for; None when unbounded.

    ``max_tokens`` bounds each choice; OpenAI's ``n`` (Gemini's ``candidateCount``) asks for
    several, each billed.

    Args:
        request: The request.
    """
    if isinstance(request, EmbeddingRequest):
        return 0
    if request.max_tokens is None:
        return None
    choices = 1
    extra = request.extra
    if extra:
        config = extra.get("generationConfig")
        candidates = config.get("candidateCount") if isinstance(config, Mapping) else None
        for n in (extra.get("n"), candidates):
            if isinstance(n, int) and not isinstance(n, bool) and n > choices:
                choices = n
    return request.max_tokens * choices


#: Bounds for an adapter that does not say its own (`max_input_tokens`): the largest of the
#: built-in adapters' overheads, and their dearest image.
_FALLBACK_PER_MESSAGE: Final = 16
_FALLBACK_PER_REQUEST: Final = 4096
_FALLBACK_PER_IMAGE: Final = 48_169


def max_input_tokens(
    provider: object, request: ChatRequest | EmbeddingRequest, http_request: httpx2.Request
) -> int:
    """Return the most input tokens *provider* can bill for *http_request*.

    An adapter states its own bound with a ``max_input_tokens(request, http_request)`` method
    (its template overheads and image formula); any other is bounded by its body's bytes with
    the built-in adapters' largest overheads.

    Args:
        provider: The adapter that built the request.
        request: The request.
        http_request: The HTTP request the adapter built.
    """
    own = getattr(provider, "max_input_tokens", None)
    if own is not None:
        return int(own(request, http_request))
    return input_token_bound(
        request,
        http_request,
        per_message=_FALLBACK_PER_MESSAGE,
        per_request=_FALLBACK_PER_REQUEST,
        per_image=_FALLBACK_PER_IMAGE,
    )


def token_bounds(
    provider: object, request: ChatRequest | EmbeddingRequest, http_request: httpx2.Request
) -> tuple[int, int | None]:
    """Return the most input and output tokens one attempt of *request* can be billed for.

    Args:
        provider: The adapter that built the request.
        request: The request.
        http_request: The HTTP request the adapter built.
    """
    return max_input_tokens(provider, request, http_request), output_token_bound(request)


def usage_problem(
    provider: object,
    request: ChatRequest | EmbeddingRequest,
    http_request: httpx2.Request,
    usage: Usage,
) -> str | None:
    """Say why *usage* cannot be what the provider billed for *request*; None if it can be.

    Cheap for a plausible answer: the input bound is computed only for a usage that reports
    more input tokens than the body has bytes.

    Args:
        provider: The adapter that built the request.
        request: The request.
        http_request: The HTTP request the adapter built.
        usage: The usage the server reported.
    """
    max_input = None
    if usage.input_tokens > len(http_request.content):
        max_input = max_input_tokens(provider, request, http_request)
    return implausible_usage(usage, max_input, output_token_bound(request))


def may_be_billed(info: ErrorInfo, cause: BaseException | None) -> bool:
    """Say whether a failed attempt may have been billed all the same.

    An error status was not billed, nor was a connection that never opened. A 2xx whose
    answer was unusable, a timeout or a connection lost after sending may have been.

    Args:
        info: The attempt's normalised error.
        cause: The exception behind it, if any.
    """
    status = info.status_code
    if status is not None:
        return 200 <= status < 300
    return not isinstance(cause, httpx2.ConnectError | httpx2.ConnectTimeout)


def request_secrets(response: httpx2.Response) -> tuple[str, ...]:
    """Return the credentials the request behind *response* carried (none when it is unknown).

    Args:
        response: A response; its ``request`` is set by whoever sent it.
    """
    try:
        request = response.request
    except RuntimeError:  # a response built by hand, never sent
        return ()
    return header_secrets(request.headers.multi_items())


def body_excerpt(response: httpx2.Response, limit: int = 200) -> str:
    """Return the start of a body that is not a JSON error, keys masked before it is cut.

    Args:
        response: The read error response.
        limit: The most characters to keep.
    """
    return scrub(response.content, limit=limit, secrets=request_secrets(response)).strip()


def scrubbed(info: ErrorInfo, *, whole: bool = False) -> ErrorInfo:
    """Return *info* with any fragment of a live key masked in its message and provider code.

    Args:
        info: A failure whose text may come from a server.
        whole: Mask whole keys only, for a message in corral's own words around server text
            that was cleaned where it was read.
    """
    clean: Any = partial(redact, secrets=live_secrets()) if whole else scrub
    message = clean(info.message)
    code = info.provider_code
    code = None if code is None else clean(code)
    if message == info.message and code == info.provider_code:
        return info
    return attrs.evolve(info, message=message, provider_code=code)
