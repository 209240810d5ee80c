"""Every path an attempt can take through ``FastTransport.handle_async_request``.

The transport has two exchanges: the inline one, taken when a request has no per-read or
per-write timeout (corral's Client sets a ``deadline`` extension and an empty ``timeout``), and
the timed one (``_timed_exchange``), taken under httpx2's per-phase timeouts. The body is then
either taken whole (``aread``, the Client's way) or streamed chunk by chunk (``_ResponseStream``
reads, as a streamed completion does). The fault matrix runs each case on each path.
"""

from __future__ import annotations

from typing import Any, Literal

import anyio
import attrs
import httpx2

from corral._transport.fast import FastTransport

Phase = Literal["connect", "read", "write", "pool"]


@attrs.frozen
class AttemptPath:
    """One way of sending a request through a :class:`FastTransport`.

    Args:
        name: The test id.
        inline: Bound the request by a ``deadline`` extension (the inline exchange) instead of
            per-phase timeouts (the timed exchange).
        streamed: Read the body chunk by chunk instead of whole.
        via_client: Send through ``httpx2.AsyncClient.send`` (its wrapped stream) instead of
            straight to the transport as corral's Client does.
    """

    name: str
    inline: bool
    streamed: bool
    via_client: bool = False

    def __str__(self) -> str:
        return self.name

    @property
    def per_read(self) -> bool:
        """Whether a read timeout restarts with each read (else it bounds the whole exchange)."""
        return not self.inline

    def build(
        self, method: str, url: str, *, timeouts: dict[Phase, float], **kwargs: Any
    ) -> httpx2.Request:
        """Return the request with this path's limits: *timeouts*, 5 s for the phases not named.

        On the inline path the tightest of those named (5 s when none is) becomes the whole
        exchange's deadline.
        """
        request = httpx2.Request(method, url, **kwargs)
        limits: dict[str, float] = dict.fromkeys(("connect", "read", "write", "pool"), 5.0)
        limits.update(timeouts)
        if self.inline:
            request.extensions = {
                "deadline": anyio.current_time() + min(timeouts.values(), default=5.0),
                "timeout": {},
            }
        else:
            request.extensions = {"timeout": limits}
        return request

    async def open(
        self,
        transport: FastTransport,
        method: str,
        url: str,
        *,
        timeouts: dict[Phase, float] | None = None,
        **kwargs: Any,
    ) -> httpx2.Response:
        """Send the request; return the response with its body not yet read."""
        request = self.build(method, url, timeouts=timeouts or {}, **kwargs)
        if self.via_client:
            client = httpx2.AsyncClient(transport=transport)
            return await client.send(request, stream=True)
        response = await transport.handle_async_request(request)
        response.request = request
        return response

    async def read(self, response: httpx2.Response) -> httpx2.Response:
        """Read the body this path's way; return a response holding it. Closes *response*."""
        try:
            if not self.streamed:
                await response.aread()
                return response
            chunks = [chunk async for chunk in response.aiter_raw()]
        finally:
            with anyio.CancelScope(shield=True):
                await response.aclose()
        return httpx2.Response(
            response.status_code,
            headers=response.headers,
            content=b"".join(chunks),
            request=response.request,
        )

    async def send(
        self,
        transport: FastTransport,
        method: str,
        url: str,
        *,
        timeouts: dict[Phase, float] | None = None,
        **kwargs: Any,
    ) -> httpx2.Response:
        """Send the request and read its body this path's way."""
        response = await self.open(transport, method, url, timeouts=timeouts, **kwargs)
        return await self.read(response)


PATHS = [
    AttemptPath("client-timeouts", inline=False, streamed=False, via_client=True),
    AttemptPath("inline-deadline", inline=True, streamed=False),
    AttemptPath("inline-streamed", inline=True, streamed=True),
    AttemptPath("timed-streamed", inline=False, streamed=True),
]
