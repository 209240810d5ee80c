"""Fixtures for the mock server's tests: in-process clients and an SSE reader."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import httpx2
import pytest

from corral.testing._mock.server import MockServer

Connect = Callable[[MockServer], AbstractAsyncContextManager[httpx2.AsyncClient]]


@asynccontextmanager
async def _connect(app: MockServer) -> AsyncIterator[httpx2.AsyncClient]:
    transport = httpx2.ASGITransport(app=app)
    async with httpx2.AsyncClient(transport=transport, base_url="http://mock") as client:
        yield client


@pytest.fixture
def connect() -> Connect:
    """Open an in-process httpx2 client on a mock server."""
    return _connect


async def call_app(
    app: MockServer, path: str, body: object, headers: dict[str, str]
) -> tuple[int, dict[str, str], bytes]:
    """POST `body` as JSON straight to the ASGI app, without an HTTP client; return the reply."""
    scope = {
        "type": "http",
        "method": "POST",
        "path": path,
        "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
    }
    payload = json.dumps(body).encode()
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": payload, "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = sent[0]
    reply_headers = {k.decode(): v.decode() for k, v in start["headers"]}
    return start["status"], reply_headers, b"".join(m.get("body", b"") for m in sent[1:])


@pytest.fixture
def call() -> Callable[..., Any]:
    """POST JSON straight to the ASGI app (fast, for tests that send thousands of requests)."""
    return call_app


def sse_events(text: str) -> list[tuple[str | None, Any]]:
    """Split a server-sent-events body into (event name, decoded data) pairs."""
    events: list[tuple[str | None, Any]] = []
    for block in re.split(r"\r?\n\r?\n", text):
        if not block.strip():
            continue
        name: str | None = None
        data: list[str] = []
        for line in block.splitlines():
            field, _, value = line.partition(": ")
            if field == "event":
                name = value
            elif field == "data":
                data.append(value)
        payload = "\n".join(data)
        events.append((name, payload if payload == "[DONE]" else json.loads(payload)))
    return events


@pytest.fixture
def parse_sse() -> Callable[[str], list[tuple[str | None, Any]]]:
    """Split a server-sent-events body into (event name, decoded data) pairs."""
    return sse_events
