"""`MockServer`: a deterministic ASGI app that speaks the OpenAI, Anthropic and Gemini APIs.

It is a plain ASGI callable, so it runs in-process behind ``httpx2.ASGITransport`` or on a real
port through `corral.testing.serve`. All time comes from ``anyio.current_time()`` and
``anyio.sleep``, so virtual-time tests drive its latency, rate limits and outages.

One request goes through, in order: routing, auth, body validation, the outage windows, the daily
quota, the rate limits (each refuses at once, without latency), then the latency (and a stall),
then an injected error or the answer (possibly dropped or truncated).
"""

from __future__ import annotations

import collections
import datetime
import hashlib
import math
import random
import re
import urllib.parse
from typing import Any, Final

import anyio
import attrs
import httpx2

from .anthropic_api import AnthropicApi
from .config import MockConfig, MockHit, MockStatistics
from .gemini_api import GeminiApi
from .limits import Admission, RateLimits, http_date
from .openai_api import OpenAIApi
from .text import count_mock_tokens
from .wire import Api, ApiError, Context, Headers, Receive, Reply, Scope, Send, Work

__all__ = ["MockServer"]

_MAX_BODY: Final = 32 * 1024 * 1024
_DAY: Final = 86_400.0
_RETRY_STATUSES: Final = frozenset({429, 503, 529})
_GEMINI_PATH: Final = re.compile(r"^/(?:v1beta|v1)/models/([^/:]+):(\w+)$")
_GEMINI_OPS: Final = frozenset(
    {
        "generateContent",
        "streamGenerateContent",
        "embedContent",
        "batchEmbedContents",
        "countTokens",
    }
)


class _Route:
    __slots__ = ("family", "method", "model", "op")

    def __init__(self, family: str, op: str, method: str, model: str = "") -> None:
        self.family = family
        self.op = op
        self.method = method
        self.model = model


def _route(path: str, headers: dict[str, str]) -> _Route | None:
    """Map a path to an API family and operation; None for an unknown path."""
    anthropic = "anthropic-version" in headers
    if path == "/v1/chat/completions":
        return _Route("openai", "chat", "POST")
    if path == "/v1/embeddings":
        return _Route("openai", "embed", "POST")
    if path == "/v1/messages":
        return _Route("anthropic", "messages", "POST")
    if path == "/v1/messages/count_tokens":
        return _Route("anthropic", "count_tokens", "POST")
    match = _GEMINI_PATH.match(path)
    if match is not None:
        op = match[2]
        return _Route("gemini", op, "POST", match[1]) if op in _GEMINI_OPS else None
    for prefix, family in (("/v1beta/models", "gemini"), ("/v1/models", "openai")):
        if path == prefix or path.startswith(prefix + "/"):
            if family == "openai" and anthropic:
                family = "anthropic"
            model = path[len(prefix) + 1 :]
            if "/" in model:
                return None
            return _Route(family, "model" if model else "models", "GET", model)
    return None


def _guess_family(path: str, headers: dict[str, str]) -> str:
    if path.startswith("/v1beta"):
        return "gemini"
    return "anthropic" if "anthropic-version" in headers else "openai"


def _check_route(route: _Route | None, method: str, path: str) -> _Route:
    if route is None:
        raise ApiError(404, "not_found", f"Unknown request URL: {method} {path}.")
    if method != route.method:
        raise ApiError(405, "method", f"Method {method} not allowed for {path}.")
    return route


class _Draws:
    """Every random choice one request needs, derived from a hash of its key."""

    __slots__ = ("drop", "error_status", "latency", "request_id", "stall", "truncate")

    def __init__(self, key: bytes, config: MockConfig) -> None:
        # One keyed hash instead of a seeded Random: a tenth of the cost, just as reproducible.
        digest = hashlib.blake2b(key, digest_size=52).digest()
        chance, stall, drop, truncate, spread = (
            int.from_bytes(digest[i : i + 8], "little") / 2**64 for i in range(0, 40, 8)
        )
        self.error_status: int | None = None
        total = 0.0
        for status, rate in sorted(config.error_rates.items()):
            total += rate
            if chance < total:
                self.error_status = status
                break
        self.stall = stall < config.stall_rate
        self.drop = drop < config.drop_rate
        self.truncate = truncate < config.truncate_rate
        self.request_id = digest[40:].hex()
        latency = config.latency
        if callable(latency):
            rng = random.Random(int.from_bytes(digest[32:40], "little"))
            self.latency = max(0.0, float(latency(rng)))
        elif isinstance(latency, tuple):
            low, high = latency
            self.latency = low + (high - low) * spread
        else:
            self.latency = float(latency)


class _Exchange:
    """Send one response and remember its status once it is complete."""

    __slots__ = ("_pending", "_send", "status")

    def __init__(self, send: Send) -> None:
        self._send = send
        self._pending = 0
        self.status = 0

    async def start(self, status: int, headers: Headers) -> None:
        self._pending = status
        await self._send({"type": "http.response.start", "status": status, "headers": headers})

    async def body(self, data: bytes, *, more: bool) -> None:
        await self._send({"type": "http.response.body", "body": data, "more_body": more})
        if not more:
            self.status = self._pending


async def _pause(seconds: float, receive: Receive) -> bool:
    """Sleep, but stop early if the client goes away; return whether it is still there."""
    if seconds <= 0:
        return True
    with anyio.move_on_after(seconds):
        # Once the body is read, receive() only returns when the client disconnects.
        while (await receive())["type"] != "http.disconnect":
            pass
        return False
    return True


async def _read_body(receive: Receive) -> bytes | None:
    """Read the whole request body; None if the client disconnected first."""
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > _MAX_BODY:
            raise ApiError(413, "too_large", f"Request bodies are limited to {_MAX_BODY} bytes.")
        parts.append(chunk)
        if not message.get("more_body", False):
            return b"".join(parts)


class MockServer:
    """Answer OpenAI, Anthropic and Gemini requests deterministically, with tunable faults.

    Use it in-process with ``httpx2.AsyncClient(transport=httpx2.ASGITransport(app=server))`` or
    on a real port with `corral.testing.serve`. Paths served:

    - OpenAI: ``POST /v1/chat/completions``, ``POST /v1/embeddings``, ``GET /v1/models``;
    - Anthropic: ``POST /v1/messages``, ``POST /v1/messages/count_tokens``, ``GET /v1/models``
      (when the ``anthropic-version`` header is sent);
    - Gemini: ``POST /v1beta/models/{model}:generateContent``, ``:streamGenerateContent``,
      ``:embedContent``, ``:batchEmbedContents``, ``:countTokens``, ``GET /v1beta/models``.

    Args:
        config: The knobs; defaults to ``MockConfig()``.
        knobs: `MockConfig` fields that override those of `config`.
    """

    __slots__ = (
        "_apis",
        "_by_path",
        "_by_status",
        "_cache",
        "_config",
        "_date_cache",
        "_idle_waiters",
        "_in_flight",
        "_limits",
        "_log",
        "_origin",
        "_peak",
        "_per_id",
        "_quota_day",
        "_quota_used",
        "_sequence",
        "_total",
        "_wall_origin",
    )

    def __init__(self, config: MockConfig | None = None, **knobs: Any) -> None:
        if config is not None and not isinstance(config, MockConfig):
            raise TypeError(
                f"config must be a corral.testing.MockConfig, got {type(config).__name__}"
            )
        base = config if config is not None else MockConfig()
        self._config = attrs.evolve(base, **knobs) if knobs else base
        self._apis: dict[str, Api] = {
            "openai": OpenAIApi(self._config),
            "anthropic": AnthropicApi(self._config),
            "gemini": GeminiApi(self._config),
        }
        self._in_flight = 0
        self._idle_waiters: list[anyio.Event] = []
        self._date_cache: tuple[int, bytes] = (-1, b"")
        self.reset()

    @property
    def config(self) -> MockConfig:
        """The configuration this server runs with."""
        return self._config

    def reset(self) -> None:
        """Forget everything seen so far: statistics, prompt cache, rate limits, quota, clock.

        The server's start time (for outage windows, fixed rate-limit windows and the daily
        quota) is taken again at the next request. Requests in flight keep counting as such.
        """
        self._origin: float | None = None
        self._wall_origin: datetime.datetime | None = None
        self._total = 0
        self._by_path: collections.Counter[str] = collections.Counter()
        self._by_status: collections.Counter[int] = collections.Counter()
        self._peak = self._in_flight
        self._log: list[MockHit] = []
        self._per_id: dict[str, int] = {}
        self._sequence = 0
        self._limits: dict[str, RateLimits] = {}
        self._cache: set[bytes] = set()
        self._quota_day = 0
        self._quota_used = 0

    def statistics(self) -> MockStatistics:
        """Return a snapshot of the hits, statuses and in-flight counts seen so far."""
        return MockStatistics(
            total_hits=self._total,
            hits_by_path=dict(self._by_path),
            hits_by_status=dict(self._by_status),
            in_flight=self._in_flight,
            peak_in_flight=self._peak,
            hit_log=tuple(self._log),
        )

    def hits_for(self, request_id: str) -> int:
        """Return how many requests carried ``X-Client-Request-Id: <request_id>``.

        Args:
            request_id: The client's request id.
        """
        return self._per_id.get(request_id, 0)

    async def wait_idle(self) -> None:
        """Wait until no request is in flight, for example after a client was cancelled."""
        while self._in_flight:
            event = anyio.Event()
            self._idle_waiters.append(event)
            await event.wait()

    def __repr__(self) -> str:
        return (
            f"<MockServer seed={self._config.seed} hits={self._total}"
            f" in_flight={self._in_flight} peak_in_flight={self._peak}>"
        )

    # -- ASGI ---------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI connection scope: ``http`` requests and the ``lifespan`` protocol."""
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            raise RuntimeError(f"the mock server speaks HTTP only, not {scope['type']!r}")
        now = anyio.current_time()
        self._start(now)
        headers = {
            name.decode("latin-1").lower(): value.decode("latin-1")
            for name, value in scope["headers"]
        }
        path: str = scope["path"]
        request_id = headers.get("x-client-request-id")
        key = self._arrive(path, request_id)
        exchange = _Exchange(send)
        try:
            await self._handle(scope, receive, exchange, headers, key, now)
        finally:
            self._in_flight -= 1
            if not self._in_flight and self._idle_waiters:
                for waiter in self._idle_waiters:
                    waiter.set()
                self._idle_waiters.clear()
            self._by_status[exchange.status] += 1
            if self._config.record_hits:
                self._log.append(MockHit(request_id, path, exchange.status))

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self._start(anyio.current_time())
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    def _start(self, now: float) -> None:
        if self._origin is None:
            self._origin = now
            # The one wall-clock read: it only anchors the dates the server prints.
            self._wall_origin = self._config.clock_origin or datetime.datetime.now(datetime.UTC)

    def _wall(self, now: float) -> datetime.datetime:
        assert self._wall_origin is not None
        assert self._origin is not None
        return self._wall_origin + datetime.timedelta(seconds=now - self._origin)

    def _date(self, now: datetime.datetime) -> bytes:
        second = int(now.timestamp())
        if self._date_cache[0] != second:
            self._date_cache = (second, http_date(now).encode())
        return self._date_cache[1]

    def _arrive(self, path: str, request_id: str | None) -> bytes:
        self._total += 1
        self._by_path[path] += 1
        self._in_flight += 1
        self._peak = max(self._peak, self._in_flight)
        seed = self._config.seed
        if request_id is not None and self._config.record_hits:
            attempt = self._per_id.get(request_id, 0) + 1
            self._per_id[request_id] = attempt
            return f"{seed}\x1fid\x1f{request_id}\x1f{attempt}".encode()
        self._sequence += 1
        return f"{seed}\x1fseq\x1f{self._sequence}".encode()

    async def _handle(
        self,
        scope: Scope,
        receive: Receive,
        exchange: _Exchange,
        headers: dict[str, str],
        key: bytes,
        now: float,
    ) -> None:
        config = self._config
        draws = _Draws(key, config)
        path: str = scope["path"]
        query = dict(urllib.parse.parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        route = _route(path, headers)
        api = self._apis[route.family if route is not None else _guess_family(path, headers)]
        ctx = Context(config, draws.request_id, self._wall(now), query)
        admission: Admission | None = None
        try:
            body = await _read_body(receive)
            if body is None:
                return
            route = _check_route(route, scope["method"], path)
            api.authenticate(headers, query)
            work = api.parse(route.op, route.model, body, headers, query)
            ctx.model = work.model
            self._check_outage(api, now)
            if work.limited:
                admission = self._admit(api, work, now)
                if admission is not None:
                    ctx.limits = admission.limits
        except ApiError as error:
            if error.limits is not None:
                ctx.limits = error.limits
            await self._send(api, api.error(error, ctx), ctx, exchange, receive, 0.0, False)
            return

        produced = 0
        try:
            if work.cache_prefix is not None:
                self._use_cache(api.family, work, ctx)
            if not await _pause(draws.latency, receive):
                return
            if draws.stall and not await _pause(config.stall_seconds, receive):
                return
            processing = draws.latency + (config.stall_seconds if draws.stall else 0.0)
            ctx.now = self._wall(anyio.current_time())
            status = draws.error_status
            if status is not None:
                retry = config.retry_after if status in _RETRY_STATUSES else None
                injected = ApiError(status, "injected", "Injected.", retry_after=retry)
                reply = api.error(injected, ctx)
            else:
                reply = api.render(work, ctx)
                produced = reply.output_tokens
            if draws.drop:
                api.add_headers(reply, ctx, processing)
                await exchange.start(reply.status, reply.headers)
                produced = 0
                raise httpx2.RemoteProtocolError("the mock server dropped the connection")
            await self._send(api, reply, ctx, exchange, receive, processing, draws.truncate)
        finally:
            if admission is not None:
                # What was not answered in full is refunded, as a client settles a failure.
                spent = work.input_tokens + produced if exchange.status == 200 else 0
                admission.settle(
                    anyio.current_time(),
                    {
                        "tokens": spent,
                        "input_tokens": work.input_tokens if spent else 0,
                        "output_tokens": produced if spent else 0,
                    },
                )

    def _check_outage(self, api: Api, now: float) -> None:
        assert self._origin is not None
        elapsed = now - self._origin
        if any(start <= elapsed < end for start, end in self._config.outages):
            raise ApiError(
                api.outage_status, "outage", "Mock outage.", retry_after=self._config.retry_after
            )

    def _admit(self, api: Api, work: Work, now: float) -> Admission | None:
        """Apply the daily quota and the rate limits; raise the 429 that refuses the request."""
        config = self._config
        assert self._origin is not None
        if config.daily_quota is not None:
            day = int((now - self._origin) // _DAY)
            if day != self._quota_day:
                self._quota_day, self._quota_used = day, 0
            if self._quota_used >= config.daily_quota:
                raise ApiError(429, "quota", "Daily quota exhausted.")
        limits = self._limits.get(api.family)
        if limits is None:
            limits = self._limits[api.family] = RateLimits(config, now)
        admission: Admission | None = None
        if limits:
            decision = limits.admit(now, work.input_tokens, work.output_reserve)
            if not isinstance(decision, Admission):
                # A request larger than the whole limit never fits: no retry hint then.
                wait = decision.wait_s if math.isfinite(decision.wait_s) else None
                raise ApiError(
                    429,
                    "rate_limit",
                    "Rate limit exceeded.",
                    retry_after=wait,
                    denial=decision,
                    limits=limits.state(now),
                )
            admission = decision
        self._quota_used += 1
        return admission

    def _use_cache(self, family: str, work: Work, ctx: Context) -> None:
        assert work.cache_prefix is not None
        key = hashlib.blake2b(
            "\x1f".join((family, work.model, work.cache_prefix)).encode(), digest_size=16
        ).digest()
        tokens = count_mock_tokens(work.cache_prefix)
        if key in self._cache:
            ctx.cache_read = tokens
        else:
            self._cache.add(key)
            ctx.cache_write = tokens

    async def _send(
        self,
        api: Api,
        reply: Reply,
        ctx: Context,
        exchange: _Exchange,
        receive: Receive,
        processing: float,
        truncate: bool,
    ) -> None:
        api.add_headers(reply, ctx, processing)
        reply.headers.append((b"date", self._date(ctx.now)))
        events = reply.events
        if events is None:
            body = reply.body[: len(reply.body) // 2] if truncate else reply.body
            reply.headers.append((b"content-length", b"%d" % len(body)))
            await exchange.start(reply.status, reply.headers)
            await exchange.body(body, more=False)
            return
        if truncate:
            events = events[: len(events) - reply.tail]
        await exchange.start(reply.status, reply.headers)
        delay = self._config.chunk_delay
        if delay <= 0:
            await exchange.body(b"".join(events), more=False)
            return
        for index, event in enumerate(events):
            if index and not await _pause(delay, receive):
                return
            await exchange.body(event, more=True)
        await exchange.body(b"", more=False)
