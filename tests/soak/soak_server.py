"""Serve the soak's `MockServer` on a loopback port, in a process of its own.

Run as ``python soak_server.py CONFIG_JSON``, where ``CONFIG_JSON`` holds `MockConfig` fields
(``error_rates`` keys may be strings, as JSON requires). The script prints one JSON line,
``{"port": N}``, once the server listens; it then serves until a line (or end of file) arrives
on stdin, and prints a second JSON line with what the server saw, before it exits:

- ``hits``: requests received (every attempt of every request);
- ``peak_in_flight``: the most requests handled at once;
- ``cpu_s``: the CPU seconds the server process used, to tell which side set the pace;
- ``outcomes``: finished requests by outcome: an HTTP status as a string (``"200"``, ``"429"``,
  ``"500"``, ``"503"``), ``"drop"`` (the mock reset the connection) or ``"stall"`` (the client
  went away before the answer, which, with no latency configured, only a stall past the client's
  timeout causes).

The server has a core of its own so that the client under test, not hypercorn, sets the pace.
"""

from __future__ import annotations

import collections
import json
import sys
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import anyio
import anyio.to_thread

from corral.testing import MockConfig, MockServer, serve

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class OutcomeCounter:
    """Wrap an ASGI app and count how each HTTP request ended: status, drop or stall."""

    __slots__ = ("_app", "counts")

    def __init__(self, app: Any) -> None:
        self._app = app
        self.counts: collections.Counter[str] = collections.Counter()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one ASGI scope through the wrapped app, counting the outcome of HTTP ones."""
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        status = 0
        finished = False

        async def watched_send(message: Message) -> None:
            nonlocal status, finished
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                finished = True
            await send(message)

        outcome = "stall"
        try:
            await self._app(scope, receive, watched_send)
            if finished:
                outcome = str(status)
        except Exception:
            # The mock drops a connection by raising out of the app: hypercorn then resets it.
            outcome = "drop"
            raise
        finally:
            self.counts[outcome] += 1


async def main(raw_config: str) -> None:
    """Serve until told to stop, then report what the server saw."""
    fields = json.loads(raw_config)
    if "error_rates" in fields:
        fields["error_rates"] = {int(k): v for k, v in fields["error_rates"].items()}
    server = MockServer(MockConfig(**fields))
    counter = OutcomeCounter(server)
    async with serve(counter) as running:
        print(json.dumps({"port": running.port}), flush=True)
        await anyio.to_thread.run_sync(sys.stdin.readline)
    stats = server.statistics()
    report = {
        "hits": stats.total_hits,
        "peak_in_flight": stats.peak_in_flight,
        "cpu_s": time.process_time(),
        "outcomes": dict(sorted(counter.counts.items())),
    }
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    anyio.run(main, sys.argv[1])
