"""One HTTP exchange and its parsing: send a prepared request, read the answer, parse it.

The innermost step of a request's path (see :class:`corral.Client`): everything here runs once
per attempt, after the circuit breaker and the rate limiter admitted it. An expected failure
(a transport error, an error status, a body that is not what the provider promised) is raised
as :class:`AttemptFailed`, carrying the normalised :class:`~corral.ErrorInfo` to the retry loop
in :mod:`corral._attempt`.
"""

from __future__ import annotations

from typing import Final

import anyio
import attrs
import httpx2

from ._flow.ratelimit import RateLimiter
from ._flow.retry import classify_exception
from ._models import (
    AnyRequest,
    ChatRequest,
    Completion,
    EmbeddingRequest,
    EmbeddingResult,
    ErrorInfo,
    ErrorKind,
)
from ._secret import header_secrets, redact
from ._streaming import EventReader, stream_failure
from .providers._base import (
    EmbeddingProvider,
    InvalidResponse,
    Provider,
    ProviderError,
    StreamingProvider,
    scrubbed,
)
from .providers._headers import read_rate_limits

__all__: list[str] = []

#: What a prepared request's attempt does (:attr:`Prepared.mode`).
CHAT: Final = 0  # send, read the whole answer, parse a completion
EMBED: Final = 1  # send, read the whole answer, parse embeddings
STREAM: Final = 2  # open a stream, read it to its end (Client.run(stream=True))
OPEN_STREAM: Final = 3  # open a stream up to its first delta, for the caller to read

#: The timeout extension of an attempt that the transport bounds by its "deadline" extension.
_NO_TIMEOUTS: Final[dict[str, float | None]] = {}


class AttemptFailed(Exception):
    """One HTTP attempt failed; carries the normalised error to the retry hook.

    ``final`` marks a failure that must not be retried (after a stream's first delta, or an
    open circuit); ``gave_up`` says why a retryable one was not retried.
    """

    __slots__ = ("final", "gave_up", "info")

    def __init__(self, info: ErrorInfo, *, final: bool = False) -> None:
        # Masked before stamina's hooks and loggers see it: they print its repr.
        info = scrubbed(info, whole=True)
        super().__init__(info.message)
        self.info = info
        self.final = final
        self.gave_up: str | None = None


class LimitReached(Exception):
    """The transport gave up at the attempt's limit (its "deadline" extension)."""


class Capabilities:
    """What a provider can do beyond chat, resolved once when the client is built.

    One isinstance() against a runtime-checkable protocol makes 15 Python calls (Python 3.11),
    and a provider's methods do not change while a client uses it.

    Args:
        provider: The provider adapter.
    """

    __slots__ = ("embeddings", "provider", "streaming")

    def __init__(self, provider: Provider) -> None:
        self.provider = provider
        self.streaming = provider if isinstance(provider, StreamingProvider) else None
        self.embeddings = provider if isinstance(provider, EmbeddingProvider) else None

    def __repr__(self) -> str:
        return (
            f"<Capabilities {self.provider.name} streaming={self.streaming is not None} "
            f"embeddings={self.embeddings is not None}>"
        )


class Prepared:
    """A request with its HTTP request built once, for every attempt, and its size estimate.

    Args:
        request: The request.
        http: Its HTTP request.
        mode: What an attempt does: :data:`CHAT`, :data:`EMBED`, :data:`STREAM` or
            :data:`OPEN_STREAM`.
    """

    __slots__ = ("http", "input_estimate", "max_output", "mode", "request")

    def __init__(self, request: AnyRequest, http: httpx2.Request, mode: int) -> None:
        self.request = request
        self.http = http
        self.mode = mode
        self.input_estimate = 0
        self.max_output = 0

    def __repr__(self) -> str:
        return f"<Prepared {self.request.id!r} mode={self.mode}>"

    def redacted(self, info: ErrorInfo) -> ErrorInfo:
        """Mask any credential of the HTTP request that the server quoted back in *info*."""
        message = redact(info.message, header_secrets(self.http.headers.multi_items()))
        return info if message == info.message else attrs.evolve(info, message=message)


class Exchange:
    """Send one attempt of a prepared request and parse its answer.

    With corral's own stack (*direct*) the request goes straight to the transport: redirects are
    never followed for API calls, and cookies, auth flows and URL merging have nothing to do for
    a request that the adapter built complete. With the user's client it goes through
    ``send()``, so the client's hooks, auth and mounts apply.

    Args:
        capabilities: The provider and what it can do.
        http: The HTTP client.
        direct: corral's own transport, when corral owns the HTTP stack; else None.
        rate: The rate limiter, which learns from every response's headers.
        request_timeout: Seconds one attempt may take (a stream: until its first delta).
    """

    __slots__ = (
        "_caps",
        "_http",
        "_rate",
        "_request_timeout",
        "_stream_timeouts",
        "_timeouts",
        "direct",
    )

    def __init__(
        self,
        capabilities: Capabilities,
        http: httpx2.AsyncClient,
        direct: httpx2.AsyncBaseTransport | None,
        rate: RateLimiter,
        request_timeout: float,
    ) -> None:
        self._caps = capabilities
        self._http = http
        self.direct = direct
        self._rate = rate
        self._request_timeout = request_timeout
        # The whole attempt is bounded already (a cancel scope around it, or the "deadline"
        # extension that corral's transport honours): per-read and per-write timeouts would
        # only open more cancel scopes inside it.
        self._timeouts: dict[str, float | None] = {
            "connect": request_timeout,
            "read": None,
            "write": None,
            "pool": request_timeout,
        }
        # A stream bounds only its wait for the first delta as a whole; after it, each read
        # may take request_timeout.
        self._stream_timeouts: dict[str, float | None] = dict.fromkeys(
            ("connect", "read", "write", "pool"), request_timeout
        )

    def __repr__(self) -> str:
        stack = "direct" if self.direct is not None else "http_client"
        return f"<Exchange {self._caps.provider.name} {stack}>"

    async def send(self, http_request: httpx2.Request, *, stream: bool) -> httpx2.Response:
        """Send *http_request*; with ``stream=False``, read its body too.

        Args:
            http_request: The request.
            stream: Return once the headers arrived, with the body left to read.
        """
        direct = self.direct
        if direct is None:
            # Even when the user's client follows redirects: credential headers other than
            # Authorization (x-api-key, x-goog-api-key) would travel to the new origin.
            return await self._http.send(http_request, stream=stream, follow_redirects=False)
        response = await direct.handle_async_request(http_request)
        response.request = http_request
        if not stream:
            try:
                await response.aread()
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await response.aclose()
                raise
        return response

    async def exchange(
        self, prepared: Prepared, start: float
    ) -> Completion | EmbeddingResult | EventReader:
        """Make one attempt's exchange; raise :class:`AttemptFailed` on an expected failure.

        By the request's mode: a whole answer, sent, read and parsed here (the transport raises
        :class:`LimitReached` when it ended the attempt at its "deadline" extension; the caller
        knows which limit that was); a stream read to its end (:meth:`read_stream`); or a
        stream opened up to its first delta (:meth:`open_stream`).

        Args:
            prepared: The request.
            start: The request's start, for a stream's time to first token.
        """
        mode = prepared.mode
        if mode == STREAM:
            return await self.read_stream(prepared, start)
        if mode == OPEN_STREAM:
            return await self.open_stream(prepared, start)
        http_request = prepared.http
        extensions = http_request.extensions
        bounded_here = "deadline" in extensions
        extensions["timeout"] = _NO_TIMEOUTS if bounded_here else self._timeouts
        try:
            response = await self.send(http_request, stream=False)
        except httpx2.TimeoutException as exc:
            if bounded_here:
                raise LimitReached from exc
            raise AttemptFailed(classify_exception(exc)) from exc
        except (httpx2.HTTPError, OSError) as exc:
            raise AttemptFailed(classify_exception(exc)) from exc
        return self.parse(prepared, response)

    def parse(self, prepared: Prepared, response: httpx2.Response) -> Completion | EmbeddingResult:
        """Parse a read response: its result, or :class:`AttemptFailed` for an error answer.

        Args:
            prepared: The request, in mode :data:`CHAT` or :data:`EMBED`.
            response: Its read response.
        """
        status = response.status_code
        self._rate.observe(read_rate_limits(response.headers), status)
        if not 200 <= status < 300:
            raise AttemptFailed(self._caps.provider.classify_error(response))
        request = prepared.request
        try:
            if prepared.mode == EMBED:
                assert self._caps.embeddings is not None
                assert isinstance(request, EmbeddingRequest)
                return self._caps.embeddings.parse_embedding_response(request, response)
            assert isinstance(request, ChatRequest)
            return self._caps.provider.parse_response(request, response)
        except (InvalidResponse, ProviderError) as exc:
            raise _parse_failure(exc, status) from exc

    async def read_stream(self, prepared: Prepared, start: float) -> Completion:
        """Open a stream, then read it to the end; failures after its first delta are final.

        Args:
            prepared: The request, in mode :data:`STREAM`.
            start: The request's start, for time to first token.
        """
        reader = await self.open_stream(prepared, start)
        try:
            while await reader.next_delta() is not None:
                pass
            return reader.completion()
        except Exception as exc:
            info = stream_failure(exc)
            if info is None:
                raise
            raise AttemptFailed(info, final=True) from exc
        finally:
            await reader.aclose()

    async def open_stream(self, prepared: Prepared, start: float) -> EventReader:
        """Send a streamed request and read up to its first text delta; retryable until then.

        Returns the reader, which owns the open response. On any failure the response is closed
        before :class:`AttemptFailed` is raised.

        Args:
            prepared: The request, in mode :data:`STREAM` or :data:`OPEN_STREAM`.
            start: The request's start, for time to first token.
        """
        http_request = prepared.http
        timeout = self._request_timeout
        http_request.extensions["timeout"] = self._stream_timeouts
        with anyio.move_on_after(timeout):
            try:
                response = await self.send(http_request, stream=True)
            except (httpx2.HTTPError, OSError) as exc:
                raise AttemptFailed(classify_exception(exc)) from exc
            try:
                return await self.first_delta(prepared, response, start)
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await response.aclose()
                raise
        raise AttemptFailed(
            ErrorInfo(
                ErrorKind.TIMEOUT,
                f"no first token within request_timeout={timeout:g}s",
                retryable=True,
            )
        )

    async def first_delta(
        self, prepared: Prepared, response: httpx2.Response, start: float
    ) -> EventReader:
        """Check a streamed response's status and type, then read up to its first delta.

        Args:
            prepared: The streamed request.
            response: Its open response.
            start: The request's start, for time to first token.
        """
        provider = self._caps.streaming
        assert provider is not None
        request = prepared.request
        assert isinstance(request, ChatRequest)
        status = response.status_code
        self._rate.observe(read_rate_limits(response.headers), status)
        content_type = response.headers.get("content-type", "").partition(";")[0].strip().lower()
        if not 200 <= status < 300 or content_type != "text/event-stream":
            try:
                await response.aread()
            except (httpx2.HTTPError, OSError) as exc:
                raise AttemptFailed(classify_exception(exc)) from exc
            if not 200 <= status < 300:
                raise AttemptFailed(provider.classify_error(response))
            if "json" not in content_type:
                raise AttemptFailed(
                    ErrorInfo(
                        ErrorKind.INVALID_RESPONSE,
                        f"asked for an event stream, got {content_type or 'no content type'}",
                        status_code=status,
                    )
                )
            # The server ignored the stream flag and answered whole: still a good answer.
            try:
                completion = provider.parse_response(request, response)
            except (InvalidResponse, ProviderError) as exc:
                raise _parse_failure(exc, status) from exc
            return EventReader.whole(response, completion, start)
        reader = EventReader(
            response, provider.stream_parser(request), start, idle_timeout=self._request_timeout
        )
        try:
            await reader.prime()
        except BaseException as exc:
            await reader.aclose()
            info = stream_failure(exc) if isinstance(exc, Exception) else None
            if info is None:
                raise
            raise AttemptFailed(info) from exc
        return reader


def _parse_failure(exc: InvalidResponse | ProviderError, status: int) -> AttemptFailed:
    """Return the failed attempt that a parser's refusal of a 2xx answer stands for."""
    if isinstance(exc, InvalidResponse):
        return AttemptFailed(ErrorInfo(ErrorKind.INVALID_RESPONSE, str(exc), status_code=status))
    info = exc.info
    if info.status_code is None:
        info = attrs.evolve(info, status_code=status)
    return AttemptFailed(info)
