"""The provider adapter protocol, and helpers that every adapter shares.

An adapter is pure: it turns a :class:`corral.ChatRequest` into an :class:`httpx2.Request` and an
:class:`httpx2.Response` into a :class:`corral.Completion` or an :class:`corral.ErrorInfo`. It does
no I/O; the client sends what it builds.
"""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import httpx2

from .._errors import ConfigurationError
from .._models import ChatRequest, Completion, ErrorInfo
from .._retry import classify_status, parse_retry_after, should_retry_override
from .._secret import Secret

__all__ = ["InvalidResponse", "Provider"]


class InvalidResponse(Exception):
    """Raised by an adapter when a response cannot be understood.

    The client turns it into a failure of kind ``invalid_response``.
    """


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


def resolve_key(api_key: str | Secret | None, env_var: str, base_url: str, provider: str) -> Secret:
    """Return the API key as a :class:`Secret`, from the argument or the environment.

    A missing key is an error except for loopback servers (local inference servers and the mock
    server need none).

    Args:
        api_key: The key passed by the user, if any.
        env_var: The environment variable to read when no key was passed.
        base_url: The API's base URL.
        provider: The provider's display name, for the error message.
    """
    if isinstance(api_key, Secret):
        return api_key
    if api_key is None:
        api_key = os.environ.get(env_var)
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


def encode_json(body: Mapping[str, Any]) -> bytes:
    """Encode a JSON body compactly, as bytes ready to send.

    Args:
        body: The JSON object.
    """
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def decode_json(response: httpx2.Response) -> Any:
    """Decode a response body as JSON, or raise :class:`InvalidResponse`.

    Args:
        response: A read response.
    """
    try:
        return json.loads(response.content)
    except (ValueError, UnicodeDecodeError) as exc:
        snippet = response.content[:120].decode("utf-8", "replace")
        raise InvalidResponse(
            f"HTTP {response.status_code} body is not JSON: {snippet!r}"
        ) from exc


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
    if 300 <= response.status_code < 400:
        where = response.headers.get("location", "?")
        message = f"redirect to {where} not followed (API calls never follow redirects)"
    return ErrorInfo(
        kind,
        message,
        status_code=response.status_code,
        retryable=retryable,
        retry_after_s=parse_retry_after(response.headers),
        provider_code=provider_code,
    )
