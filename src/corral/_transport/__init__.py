"""The fast HTTP/1.1 transport: corral's own ``httpx2.AsyncBaseTransport`` over anyio streams.

- ``fast``: :class:`corral.FastTransport`, the entry point, and its delegation to httpx2.
- ``pool``: the keep-alive connection pool, one per origin.
- ``sockets``: TCP and TLS sockets, happy eyeballs, deadlines enforced by the socket.
- ``http11``: the HTTP/1.1 wire (request heads, chunked bodies, httptools or h11 parsing).
- ``httpx_internals``: every access to httpx2's private attributes, in one place.
"""
