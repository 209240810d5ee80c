"""Hostile servers for the shared 429 cooldown: refusals that must not stall the whole batch.

`CooldownServer` is an OpenAI-compatible chat-completions ASGI app that answers 200 except
where its script says to refuse with a 429: the first ``refuse_first`` arrivals, every arrival
before ``refuse_until`` seconds, or a chosen set of request ids on their first attempt; each
refusal carries ``Retry-After`` and any rate-limit headers asked for, and ``headers`` go on every
response (for lies such as ``x-ratelimit-limit-tokens: 1``). It logs each arrival's virtual
time, status and request id, so tests can check who was sent when.

The tests serve it in process (``httpx2.ASGITransport``) in virtual time: an hour of
``Retry-After`` costs nothing, and what is measured is what the client decided, not how busy the
machine was.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Collection, Mapping, MutableMapping
from contextlib import asynccontextmanager
from typing import Any, NamedTuple

import anyio
import httpx2

import corral
from corral.providers import OpenAI

from ..scripted import completion_body

Scope = MutableMapping[str, Any]


class Arrival(NamedTuple):
    """One request as the server saw it: when it arrived, its status and its request id."""

    at: float
    status: int
    request_id: str


class CooldownServer:
    """Answer chat completions with 200, refusing with 429 where the script says.

    Args:
        latency: Seconds before each answer (refusals come at once, as a limiter's do).
        refuse_first: Refuse this many of the first arrivals.
        refuse_until: Refuse every arrival before this many seconds after the first one.
        refuse_ids: Refuse these request ids on their first attempt.
        retry_after: The ``Retry-After`` value sent with each refusal, or None for none.
        refusal_headers: More headers sent with each refusal.
        headers: Headers sent with every response.
    """

    __slots__ = (
        "_seen",
        "arrivals",
        "headers",
        "latency",
        "origin",
        "refusal_headers",
        "refuse_first",
        "refuse_ids",
        "refuse_until",
        "retry_after",
    )

    def __init__(
        self,
        *,
        latency: float = 0.0,
        refuse_first: int = 0,
        refuse_until: float = 0.0,
        refuse_ids: Collection[str] = (),
        retry_after: str | None = "1",
        refusal_headers: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.latency = latency
        self.refuse_first = refuse_first
        self.refuse_until = refuse_until
        self.refuse_ids = frozenset(refuse_ids)
        self.retry_after = retry_after
        self.refusal_headers = dict(refusal_headers or {})
        self.headers = dict(headers or {})
        self.arrivals: list[Arrival] = []
        self.origin: float | None = None
        self._seen: set[str] = set()

    def __repr__(self) -> str:
        return f"<CooldownServer arrivals={len(self.arrivals)} refused={len(self.refused())}>"

    def refused(self) -> list[Arrival]:
        """Return the arrivals answered with a 429."""
        return [a for a in self.arrivals if a.status == 429]

    def times_of(self, request_id: str) -> list[float]:
        """Return the arrival times of one request's attempts, in seconds after the first."""
        origin = self.origin or 0.0
        return [a.at - origin for a in self.arrivals if a.request_id == request_id]

    def _refuses(self, now: float, request_id: str) -> bool:
        assert self.origin is not None
        first_attempt = request_id not in self._seen
        self._seen.add(request_id)
        return (
            len(self.arrivals) < self.refuse_first
            or now - self.origin < self.refuse_until
            or (first_attempt and request_id in self.refuse_ids)
        )

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        now = anyio.current_time()
        if self.origin is None:
            self.origin = now
        request_id = dict(scope["headers"]).get(b"x-client-request-id", b"?").decode()
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = dict(self.headers)
        if self._refuses(now, request_id):
            status = 429
            if self.retry_after is not None:
                headers["retry-after"] = self.retry_after
            headers.update(self.refusal_headers)
            payload: dict[str, Any] = {
                "error": {
                    "message": "Rate limit reached for requests.",
                    "type": "requests",
                    "code": "rate_limit_exceeded",
                }
            }
        else:
            status = 200
            if self.latency:
                await anyio.sleep(self.latency)
            model = json.loads(body)["model"]
            payload = completion_body(model, "fine")
        self.arrivals.append(Arrival(now, status, request_id))
        data = json.dumps(payload).encode()
        raw = [(k.encode(), v.encode()) for k, v in headers.items()]
        raw += [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(data))]
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": data})


@asynccontextmanager
async def cooldown_client(app: Any, **kwargs: Any) -> AsyncIterator[corral.Client]:
    """Open a `corral.Client` for the OpenAI API served in process by `app`.

    Args:
        app: The ASGI app.
        kwargs: `corral.Client` options.
    """
    http = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app))
    provider = OpenAI("http://mock/v1", api_key="sk-test")
    async with http, corral.Client(provider, http_client=http, **kwargs) as client:
        yield client


def requests(count: int, **kwargs: Any) -> list[corral.ChatRequest]:
    """Build `count` short chat requests with ids ``r0``, ``r1``, ...

    Args:
        count: How many.
        kwargs: More `corral.ChatRequest` fields; ``max_tokens`` defaults to 16.
    """
    kwargs.setdefault("max_tokens", 16)
    return [
        corral.ChatRequest(
            "gpt-4o-mini", [{"role": "user", "content": f"Say hi to {i}."}], id=f"r{i}", **kwargs
        )
        for i in range(count)
    ]


async def per_request_retries(app: Any, batch: list[corral.ChatRequest], concurrency: int) -> float:
    """Send `batch` as an SDK with per-request retries would; return the virtual seconds taken.

    The reference for throughput: `concurrency` workers each send a request, and on a 429
    sleep its ``Retry-After`` and send it again, with no state shared between requests (what
    the openai SDK does).

    Args:
        app: The ASGI app, already configured.
        batch: The requests.
        concurrency: How many are in flight at once.
    """
    pending = iter(batch)
    start = anyio.current_time()

    async def worker(http: httpx2.AsyncClient) -> None:
        for request in pending:
            messages = [{"role": m.role, "content": m.content} for m in request.messages]
            body = {"model": request.model, "messages": messages, "max_tokens": 16}
            while True:
                response = await http.post(
                    "http://mock/v1/chat/completions",
                    json=body,
                    headers={"x-client-request-id": request.id, "authorization": "Bearer sk"},
                )
                if response.status_code != 429:
                    assert response.status_code == 200, response.text
                    break
                await anyio.sleep(float(response.headers.get("retry-after", "1")))

    transport = httpx2.ASGITransport(app=app)
    async with httpx2.AsyncClient(transport=transport) as http, anyio.create_task_group() as tg:
        for _ in range(concurrency):
            tg.start_soon(worker, http)
    return anyio.current_time() - start
