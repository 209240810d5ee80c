"""What a response may cost in memory: caps on its head and body, and the encodings it may use.

A server decides how many bytes it sends; without caps one response (endless headers, a huge
body, a compression bomb) could take all the memory of a process running thousands of
requests. Both of corral's transports enforce the same caps: :class:`corral.FastTransport`
while parsing, :class:`CappedTransport` around httpx2's stock transport. A response over a cap
fails with :class:`ResponseRefused`, which corral reports as ``invalid_response`` and never
retries: the same server would send the same bytes again.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Final

import httpx2

from .._errors import ResponseRefused

#: The most bytes a response head may take: status line and every header together. Real API
#: heads are 1-3 KiB; httpcore refuses heads past 100 KiB, llhttp past 80 KiB by default.
DEFAULT_MAX_HEADER_BYTES: Final = 256 * 1024
#: The most bytes one header line may take (name and value).
DEFAULT_MAX_HEADER_LINE: Final = 64 * 1024
#: The most bytes a response body may take once decoded. The largest real answers are
#: embeddings: 2,048 inputs of 3,072 floats as indented JSON come to about 160 MB.
DEFAULT_MAX_RESPONSE_BYTES: Final = 256 * 1024 * 1024

# Content codings that change nothing.
_IDENTITY: Final = frozenset({b"", b"identity"})


def check_limit(name: str, value: object) -> int:
    """Return a byte cap given as *name*, or raise naming the fix.

    Args:
        name: The argument's name, for the message.
        value: An integer >= 1.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer number of bytes >= 1, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value!r}")
    return value


def _codings(value: bytes) -> list[bytes]:
    return [part.split(b";")[0].strip().lower() for part in value.split(b",")]


def unasked_encoding(
    request_headers: httpx2.Headers, response_headers: list[tuple[bytes, bytes]]
) -> bytes | None:
    """Return a content coding the response uses that the request did not accept, or None.

    corral asks for no compression: a compressed answer it did not ask for is refused, since
    decoding it could take far more memory than its bytes on the wire (a 1 KB brotli body can
    decode to gigabytes). A request that lists codings in ``Accept-Encoding`` gets those.

    Args:
        request_headers: The request's headers.
        response_headers: The response's header fields as byte pairs.
    """
    accepted: set[bytes] | None = None
    for name, value in response_headers:
        if name.lower() != b"content-encoding":
            continue
        if accepted is None:
            accepted = set()
            for offer in request_headers.get_list("accept-encoding", split_commas=True):
                accepted.update(_codings(offer.encode("latin-1")))
        for coding in _codings(value):
            if coding not in _IDENTITY and coding not in accepted and b"*" not in accepted:
                return coding
    return None


def refuse_unasked_encoding(
    request_headers: httpx2.Headers, response_headers: list[tuple[bytes, bytes]]
) -> None:
    """Raise :class:`ResponseRefused` if the response uses a coding the request did not accept.

    Args:
        request_headers: The request's headers.
        response_headers: The response's header fields as byte pairs.
    """
    coding = unasked_encoding(request_headers, response_headers)
    if coding is not None:
        raise ResponseRefused(
            f"the response is encoded with {coding.decode('latin-1')!r}, which the request "
            f"did not accept (corral does not ask for compression)"
        )


def too_large(limit: int) -> ResponseRefused:
    """Return the error for a body past *limit* bytes."""
    return ResponseRefused(
        f"the response body is larger than max_response_bytes={limit}; reading stopped there"
    )


class CappedStream(httpx2.AsyncByteStream):
    """A response body that fails with :class:`ResponseRefused` past a number of bytes.

    Args:
        stream: The transport's body stream.
        limit: The most bytes it may yield.
    """

    __slots__ = ("_limit", "_seen", "_stream")

    def __init__(self, stream: httpx2.AsyncByteStream, limit: int) -> None:
        self._stream = stream
        self._limit = limit
        self._seen = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        chunks = aiter(self._stream)
        try:
            async for chunk in chunks:
                self._seen += len(chunk)
                if self._seen > self._limit:
                    raise too_large(self._limit)
                yield chunk
        finally:
            # The inner stream's iterator is an async generator: left unfinished, it would be
            # finalised by the garbage collector, late (and with a warning on trio).
            close = getattr(chunks, "aclose", None)
            if close is not None:
                await close()
            await self._stream.aclose()

    async def aclose(self) -> None:
        """Close the underlying stream."""
        await self._stream.aclose()

    def __repr__(self) -> str:
        return f"<CappedStream {self._seen}/{self._limit} bytes>"


class CappedTransport(httpx2.AsyncBaseTransport):
    """Apply corral's response caps to another transport (httpx2's stock one).

    The body is capped at *max_response_bytes*, and a ``Content-Encoding`` the request did not
    accept is refused before its body is read, so httpx2 never decodes what it was not asked
    to. The head is capped by the inner transport (httpcore refuses heads past 100 KiB); its
    refusal becomes a :class:`ResponseRefused` too.

    Args:
        transport: The transport that sends the requests; closed with this one.
        max_response_bytes: The most bytes a response body may take.
    """

    __slots__ = ("_limit", "_transport")

    def __init__(
        self,
        transport: httpx2.AsyncBaseTransport,
        *,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    ) -> None:
        self._transport = transport
        self._limit = check_limit("max_response_bytes", max_response_bytes)

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        """Send *request* through the inner transport; return its response, capped.

        Args:
            request: The request.

        Raises:
            ResponseRefused: The response uses a content coding the request did not accept.
        """
        try:
            response = await self._transport.handle_async_request(request)
        except httpx2.RemoteProtocolError as exc:
            # h11's words for a head past httpcore's cap (max_incomplete_event_size).
            if "Receive buffer too long" in str(exc):
                raise ResponseRefused(
                    f"the response head is longer than httpx2's transport accepts: {exc}"
                ) from exc
            raise
        stream = response.stream
        assert isinstance(stream, httpx2.AsyncByteStream)
        try:
            refuse_unasked_encoding(request.headers, response.headers.raw)
        except ResponseRefused:
            await stream.aclose()
            raise
        response.stream = CappedStream(stream, self._limit)
        return response

    async def aclose(self) -> None:
        """Close the inner transport."""
        await self._transport.aclose()

    def __repr__(self) -> str:
        return f"<CappedTransport {self._transport!r} max_response_bytes={self._limit}>"
