"""The Client: the public API and the lifecycle of the layers a request passes.

A request's path, in three modules: :class:`Client` (here) admits it under the concurrency
limit; :class:`~corral._attempt.RequestPath` reserves its budget and makes its attempts and
retries; :class:`~corral._exchange.Exchange` makes one HTTP exchange and parses the answer.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Iterable
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any, Literal, Self, overload

import anyio
import anyio.lowlevel
import attrs
import httpx2

from ._attempt import RequestPath, Tally
from ._errors import ConfigurationError, ConfigurationTypeError, check_number, exception_for
from ._exchange import CHAT, OPEN_STREAM, Capabilities, Exchange
from ._flow.adaptive import AdaptiveConcurrency, AdaptiveLimiter, AdaptiveStatistics
from ._flow.breaker import BreakerRegistry, BreakerStatistics, CircuitBreaker
from ._flow.budget import Budget, BudgetStatistics, BudgetTracker
from ._flow.pricing import Pricing
from ._flow.ratelimit import RateLimit, RateLimiter, RateLimiterStatistics
from ._flow.retry import RetryPolicy
from ._models import (
    AnyRequest,
    BatchResult,
    BatchStatistics,
    ChatRequest,
    Completion,
    EmbeddingRequest,
    EmbeddingResult,
    Failure,
    Result,
    StatisticsCollector,
)
from ._runner import LazyInput, admit
from ._streaming import CompletionStream, EventReader
from ._transport.fast import FastTransport
from ._transport.limits import DEFAULT_MAX_RESPONSE_BYTES, CappedTransport, check_limit
from .providers._base import Provider

__all__ = ["Client", "ClientStatistics", "ResultStream"]

Requests = Iterable[AnyRequest] | AsyncIterable[AnyRequest]


@attrs.frozen
class ClientStatistics:
    """A snapshot of a client's activity since it was opened.

    Args:
        max_concurrency: The concurrency limit now (it moves with adaptive concurrency).
        in_flight: Requests being worked on now.
        started: Requests started.
        succeeded: Requests that completed.
        failed: Requests that failed.
        attempts: HTTP attempts made.
        rate_limiter: The rate limiter's counters and learned limits.
        breakers: Each endpoint's circuit breaker, when a breaker is configured.
        budget: The budget's spend and reservations, when a budget is configured.
        adaptive: The adaptive concurrency controller, with ``max_concurrency="auto"``.
    """

    max_concurrency: int
    in_flight: int
    started: int
    succeeded: int
    failed: int
    attempts: int
    rate_limiter: RateLimiterStatistics | None = None
    breakers: dict[str, BreakerStatistics] = attrs.field(factory=dict)
    budget: BudgetStatistics | None = None
    adaptive: AdaptiveStatistics | None = None


class ResultStream:
    """Results of :meth:`Client.stream`, as they complete; an async iterator.

    Every input yields exactly one result. Iterate it to the end to receive all of them.
    """

    __slots__ = ("_collector", "_error", "_receive")

    def __init__(
        self,
        receive: anyio.abc.ObjectReceiveStream[Result],
        collector: StatisticsCollector,
    ) -> None:
        self._receive = receive
        self._collector = collector
        # Set when reading the input failed: the consumer gets it instead of a quiet end.
        self._error: Exception | None = None

    def __repr__(self) -> str:
        return f"<ResultStream {self._collector!r}>"

    def __aiter__(self) -> AsyncIterator[Result]:
        return self

    async def __anext__(self) -> Result:
        try:
            result = await self._receive.receive()
        except anyio.EndOfStream:
            if self._error is not None:
                raise self._error from None
            raise StopAsyncIteration from None
        self._collector.add(result)
        return result

    def statistics(self) -> BatchStatistics:
        """Return the statistics of the results received so far."""
        return self._collector.snapshot(anyio.current_time())


class _Layers:
    """The flow-control layers of one opening of a client, kept for its statistics."""

    __slots__ = ("adaptive", "breakers", "budget", "rate")

    def __init__(
        self,
        *,
        rate: RateLimiter,
        breakers: BreakerRegistry | None,
        budget: BudgetTracker | None,
        adaptive: AdaptiveLimiter | None,
    ) -> None:
        self.rate = rate
        self.breakers = breakers
        self.budget = budget
        self.adaptive = adaptive

    def __repr__(self) -> str:
        return f"<_Layers rate={self.rate!r} breakers={self.breakers!r} budget={self.budget!r}>"


class Client:
    """Send chat requests to one provider, with limits, retries and statistics.

    Use it as an async context manager; nothing it starts outlives the ``async with``. It can be
    opened inside any task group, on asyncio or trio.

    A request passes these layers, in this order, and none of them sends anything for a
    request it refuses:

    1. a concurrency slot (``max_concurrency``), taken before the request's task even exists
       in :meth:`run` and :meth:`stream`, so memory stays bounded by concurrency;
    2. the budget, which reserves the request's worst case (when a budget is set);
    3. then, for every attempt, inside the retry loop (stamina; the policy's deadline covers
       waits, attempts and backoffs): the circuit breaker of the provider's endpoint (when
       one is set), the rate limiter (configured limits, limits learned from headers, and the
       shared cooldown after a 429), then one exchange through the transport, bounded by
       ``request_timeout``;
    4. the budget is settled with what the request really cost.

    Every layer but the concurrency limit is optional.

    Args:
        provider: The API adapter, for example :class:`corral.providers.OpenAI`.
        max_concurrency: The most requests in flight at once, or ``"auto"`` to find the
            server's capacity at run time (see *adaptive*).
        retry: The retry policy; ``RetryPolicy()`` when not given.
        request_timeout: Seconds one HTTP attempt may take, all of it.
        rate_limit: Requests and tokens per minute to pace by. Even without one, the limits the
            server announces in its rate-limit headers are learned
            (``RateLimit(learn_from_headers=False)`` turns that off), and a 429 always pauses
            every worker at once until the server's hint (a shared cooldown).
        breaker: A circuit breaker per provider endpoint; None for none.
        budget: The most money and tokens the client may spend; None for no limit.
        pricing: Prices for ``cost_usd`` and the budget; ``Pricing.default()`` when not given.
        adaptive: The bounds and tuning of ``max_concurrency="auto"``;
            ``AdaptiveConcurrency()`` when not given.
        http_client: Your own :class:`httpx2.AsyncClient` (proxies, mTLS, event hooks). corral
            never closes a client it did not create, and sends every request through its
            ``send()``, so its hooks, auth and mounts all apply; only redirects are never
            followed, even if the client is set to follow them, so that no credential header
            reaches another origin.
        transport: Without *http_client*: ``"fast"`` (the default) sends through
            :class:`corral.FastTransport`, corral's own HTTP/1.1 transport, and skips the
            general client's per-request work (redirects, cookies, auth flows, URL merging);
            ``"httpx"`` uses httpx2's stock transport and client, as they come.
        max_response_bytes: The most bytes one response body may take (256 MiB by default,
            far above any real answer); a larger one fails as ``invalid_response`` once
            this many bytes are read, and is not retried. Either transport also refuses a
            compressed answer, which corral never asks for, the same way. Your own
            *http_client* keeps its transport's limits: this one does not apply.
    """

    __slots__ = (
        "_adaptive_policy",
        "_breaker_policy",
        "_budget_policy",
        "_caps",
        "_http",
        "_layers",
        "_limiter",
        "_max_concurrency",
        "_max_response_bytes",
        "_open",
        "_own_http",
        "_path",
        "_pricing",
        "_provider",
        "_rate_policy",
        "_request_timeout",
        "_retry",
        "_tally",
        "_transport_choice",
    )

    def __init__(
        self,
        provider: Provider,
        *,
        max_concurrency: int | Literal["auto"] = 64,
        retry: RetryPolicy | None = None,
        request_timeout: float = 60.0,
        rate_limit: RateLimit | None = None,
        breaker: CircuitBreaker | None = None,
        budget: Budget | None = None,
        pricing: Pricing | None = None,
        adaptive: AdaptiveConcurrency | None = None,
        http_client: httpx2.AsyncClient | None = None,
        transport: Literal["fast", "httpx"] | None = None,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    ) -> None:
        if not isinstance(provider, Provider):
            raise ConfigurationTypeError(
                f"provider must be a corral provider adapter (such as corral.providers.OpenAI), "
                f"got {type(provider).__name__}"
            )
        self._adaptive_policy: AdaptiveConcurrency | None = None
        if max_concurrency == "auto":
            self._adaptive_policy = adaptive if adaptive is not None else AdaptiveConcurrency()
            max_concurrency = self._adaptive_policy.max_concurrency
        elif adaptive is not None:
            raise ConfigurationError('adaptive= needs max_concurrency="auto"')
        if isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int | str):
            raise ConfigurationTypeError(
                f'max_concurrency must be an integer >= 1 or "auto", '
                f"got {type(max_concurrency).__name__}"
            )
        if isinstance(max_concurrency, str) or max_concurrency < 1:
            raise ConfigurationError(
                f'max_concurrency must be an integer >= 1 or "auto", got {max_concurrency!r}'
            )
        for name, value, cls in (
            ("retry", retry, RetryPolicy),
            ("rate_limit", rate_limit, RateLimit),
            ("breaker", breaker, CircuitBreaker),
            ("budget", budget, Budget),
            ("pricing", pricing, Pricing),
            ("adaptive", adaptive, AdaptiveConcurrency),
        ):
            if value is not None and not isinstance(value, cls):
                raise ConfigurationTypeError(
                    f"{name} must be a corral.{cls.__name__}, got {type(value).__name__}"
                )
        self._rate_policy = rate_limit if rate_limit is not None else RateLimit()
        self._breaker_policy = breaker
        self._budget_policy = budget
        self._pricing = pricing if pricing is not None else Pricing.default()
        check_number(request_timeout, "request_timeout", minimum=0, above=True)
        if http_client is not None and not isinstance(http_client, httpx2.AsyncClient):
            raise ConfigurationTypeError(
                f"http_client must be an httpx2.AsyncClient, got {type(http_client).__name__}"
            )
        self._provider = provider
        self._max_concurrency = max_concurrency
        self._retry = retry if retry is not None else RetryPolicy()
        self._request_timeout = float(request_timeout)
        if transport is not None and not isinstance(transport, str):
            raise ConfigurationTypeError(
                f'transport must be "fast", "httpx" or None, got {type(transport).__name__}'
            )
        if transport not in (None, "fast", "httpx"):
            raise ConfigurationError(f'transport must be "fast" or "httpx", got {transport!r}')
        if transport is not None and http_client is not None:
            raise ConfigurationError(
                "pass either transport= or http_client=, not both: with your own http_client, "
                "corral sends through it as it is"
            )
        self._transport_choice = transport or "fast"
        try:
            self._max_response_bytes = check_limit("max_response_bytes", max_response_bytes)
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(str(exc)) from exc
        self._http = http_client
        self._own_http = http_client is None
        # What the provider can do, resolved once: one isinstance() against a runtime-checkable
        # protocol makes 15 Python calls on 3.11, a fifth of what corral does for a request.
        self._caps = Capabilities(provider)
        self._tally = Tally()
        self._limiter: anyio.CapacityLimiter | None = None
        # Built when the client opens; kept after it closes, for statistics().
        self._path: RequestPath | None = None
        self._layers: _Layers | None = None
        self._open = False

    def __repr__(self) -> str:
        state = "open" if self._open else "closed"
        concurrency = "auto" if self._adaptive_policy is not None else self._max_concurrency
        parts = [
            f"<corral.Client {state} provider={self._provider!r}",
            f"max_concurrency={concurrency!r}",
            f"retry={self._retry!r}",
        ]
        if self._rate_policy.limits():
            parts.append(f"rate_limit={self._rate_policy!r}")
        if self._breaker_policy is not None:
            parts.append(f"breaker={self._breaker_policy!r}")
        if self._budget_policy is not None:
            parts.append(f"budget={self._budget_policy!r}")
        parts.append(f"in_flight={self._tally.in_flight}>")
        return " ".join(parts)

    async def __aenter__(self) -> Self:
        if self._open:
            raise RuntimeError("this Client is already open")
        direct: httpx2.AsyncBaseTransport | None = None
        if self._own_http:
            limits = httpx2.Limits(
                max_connections=self._max_concurrency,
                max_keepalive_connections=self._max_concurrency,
            )
            if self._transport_choice == "fast":
                # Attempts go straight to corral's own transport (see Exchange).
                direct = FastTransport(
                    max_connections=self._max_concurrency,
                    max_response_bytes=self._max_response_bytes,
                )
                self._http = httpx2.AsyncClient(
                    transport=direct,
                    timeout=self._request_timeout,
                    limits=limits,
                    follow_redirects=False,
                )
            else:
                stock = httpx2.AsyncHTTPTransport(limits=limits)
                self._http = httpx2.AsyncClient(
                    transport=CappedTransport(stock, max_response_bytes=self._max_response_bytes),
                    timeout=self._request_timeout,
                    limits=limits,
                    follow_redirects=False,
                )
        assert self._http is not None
        # The backend's own clock: anyio.current_time looks the backend up on every call.
        clock = anyio.lowlevel.current_token().backend_class.current_time
        limiter = self._limiter = anyio.CapacityLimiter(self._max_concurrency)
        layers = self._layers = _Layers(
            rate=RateLimiter(
                self._rate_policy,
                clock=clock,
                concurrency=self._max_concurrency,
                max_pause=self._retry.max_retry_after,
            ),
            breakers=(
                BreakerRegistry(self._breaker_policy, clock=clock)
                if self._breaker_policy is not None
                else None
            ),
            budget=BudgetTracker(self._budget_policy) if self._budget_policy is not None else None,
            adaptive=(
                AdaptiveLimiter(self._adaptive_policy, limiter, clock=clock)
                if self._adaptive_policy is not None
                else None
            ),
        )
        self._path = RequestPath(
            limiter=limiter,
            capabilities=self._caps,
            exchange=Exchange(self._caps, self._http, direct, layers.rate, self._request_timeout),
            tally=self._tally,
            retry=self._retry,
            request_timeout=self._request_timeout,
            rate_policy=self._rate_policy,
            rate=layers.rate,
            breakers=layers.breakers,
            budget_policy=self._budget_policy,
            budget=layers.budget,
            pricing=self._pricing,
            adaptive=layers.adaptive,
            clock=clock,
        )
        self._open = True
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._open = False
        if self._own_http and self._http is not None:
            http, self._http = self._http, None
            with anyio.CancelScope(shield=True):
                await http.aclose()

    @property
    def provider(self) -> Provider:
        """The provider adapter this client sends through."""
        return self._provider

    def statistics(self) -> ClientStatistics:
        """Return a snapshot of this client's activity."""
        limit = self._max_concurrency
        if self._limiter is not None:
            limit = int(self._limiter.total_tokens)
        tally = self._tally
        layers = self._layers
        return ClientStatistics(
            max_concurrency=limit,
            in_flight=tally.in_flight,
            started=tally.started,
            succeeded=tally.succeeded,
            failed=tally.failed,
            attempts=tally.attempts,
            rate_limiter=layers.rate.statistics() if layers is not None else None,
            breakers=(
                dict(layers.breakers.statistics())
                if layers is not None and layers.breakers is not None
                else {}
            ),
            budget=(
                layers.budget.statistics()
                if layers is not None and layers.budget is not None
                else None
            ),
            adaptive=(
                layers.adaptive.statistics()
                if layers is not None and layers.adaptive is not None
                else None
            ),
        )

    # -- public calls -------------------------------------------------------------------------

    @overload
    async def complete(self, request: ChatRequest) -> Completion: ...

    @overload
    async def complete(self, request: EmbeddingRequest) -> EmbeddingResult: ...

    async def complete(self, request: AnyRequest) -> Completion | EmbeddingResult:
        """Send one request and return its completion, or its embeddings.

        Raises the :class:`corral.RequestFailed` subclass that matches the failure's kind (for
        example :class:`corral.RateLimitedError`) when it fails after retries, and
        :class:`corral.InvalidRequestError`, before sending anything, for a request the provider
        cannot take (an Anthropic request without ``max_tokens``, embeddings on Anthropic).

        Args:
            request: A :class:`corral.ChatRequest` or a :class:`corral.EmbeddingRequest`.
        """
        path = self._require_open()
        _check_request(request)
        prepared = path.prepare(request, CHAT)
        async with path.limiter:
            result = await path.run(prepared)
        if isinstance(result, Failure):
            raise exception_for(result.error, request_id=result.id, attempts=result.attempts)
        return result

    @asynccontextmanager
    async def complete_stream(self, request: ChatRequest) -> AsyncIterator[CompletionStream]:
        """Stream one completion: yield a :class:`corral.CompletionStream` of text deltas.

        Use as ``async with client.complete_stream(request) as deltas:`` then
        ``async for text in deltas: ...``; after the loop, ``deltas.completion`` is the final
        :class:`corral.Completion`, with ``ttft_s`` and ``inter_token_gaps_s``. Leaving the block
        early, or cancelling it, closes the connection.

        Retries (and the retry policy's deadline) apply only until the first text delta: a
        failure before it is retried like any other attempt and, once retries are spent, raised
        when the block is entered. A failure after it raises from the iteration, as the
        :class:`corral.RequestFailed` subclass of its kind (a connection broken mid-stream is a
        :class:`corral.ConnectionFailedError`, a stream cut before its final event an
        :class:`corral.InvalidResponseError`). Between deltas, each read may take up to
        ``request_timeout``.

        Args:
            request: The request.
        """
        path = self._require_open()
        if not isinstance(request, ChatRequest):
            raise TypeError(
                f"complete_stream takes a corral.ChatRequest, got {type(request).__name__}"
            )
        self._require_streaming()
        prepared = path.prepare(request, OPEN_STREAM)
        async with path.limiter:
            state = path.begin(prepared)
            try:
                failure = await path.reserve(state)
                if failure is None:
                    outcome = await path.attempts(state)
                    failure = outcome if isinstance(outcome, Failure) else None
                if failure is not None:
                    path.settle(state, failure)
                    raise exception_for(
                        failure.error, request_id=request.id, attempts=failure.attempts
                    )
                assert isinstance(outcome, EventReader)
                try:
                    # The stream settles the request when it ends (state.stream_ended); a
                    # server's error event mid-stream may quote the key back (redacted).
                    yield CompletionStream(
                        outcome,
                        request.id,
                        state.start,
                        state.count,
                        state.stream_ended,
                        prepared.redacted,
                    )
                finally:
                    await outcome.aclose()
            finally:
                path.end(state)

    async def run(self, requests: Requests, *, stream: bool = False) -> BatchResult:
        """Send every request and return all results, in input order.

        Failures come back as :class:`corral.Failure` values; only bugs and cancellation raise.
        An exception raised while reading the input (a non-request item, or your iterator's
        own error) cancels the work in flight and propagates unwrapped. The input is read
        lazily, but the results are all kept: use :meth:`stream` for inputs too large to hold.

        Args:
            requests: Any iterable or async iterable of chat and embedding requests.
            stream: Send chat requests as streams, to measure time to first token and the gaps
                between tokens (``ttft_s``, ``inter_token_gaps_s``, and the TTFT and TPOT
                percentiles of the statistics). Embedding requests are never streamed.
        """
        path = self._require_open()
        if stream:
            self._require_streaming()
        limiter = path.limiter
        collector = StatisticsCollector(anyio.current_time())
        results: list[Result | None] = []

        def deliver(index: int, result: Result) -> None:
            results[index] = result
            collector.add(result)

        def check(request: AnyRequest) -> None:
            _check_request(request)
            results.append(None)

        await admit(
            LazyInput(requests, check),
            limiter,
            path.execute_streamed if stream else path.execute,
            deliver,
            elastic=self._adaptive_policy is not None,
        )
        done = tuple(r for r in results if r is not None)
        if len(done) != len(results):  # pragma: no cover - would be a bug in admit()
            raise AssertionError("a request produced no result")
        return BatchResult(done, collector.snapshot(anyio.current_time()))

    @asynccontextmanager
    async def stream(
        self, requests: Requests, *, stream: bool = False
    ) -> AsyncIterator[ResultStream]:
        """Send every request and yield results as they complete, in bounded memory.

        Use as ``async with client.stream(requests) as results: async for r in results: ...``.
        Leaving the block early cancels the requests still in flight. An exception raised while
        reading the input (a non-request item, or your iterator's own error) is raised by the
        iteration, unwrapped, after the results that came before it.

        Args:
            requests: Any iterable or async iterable of chat and embedding requests.
            stream: Send chat requests as streams, to measure time to first token (see
                :meth:`run`).
        """
        path = self._require_open()
        if stream:
            self._require_streaming()
        limiter = path.limiter
        send, receive = anyio.create_memory_object_stream[Result](self._max_concurrency)
        collector = StatisticsCollector(anyio.current_time())
        execute = path.execute_streamed if stream else path.execute

        def deliver(index: int, result: Result) -> Awaitable[None]:
            return send.send(result)

        results = ResultStream(receive, collector)

        async def feed() -> None:
            async with send:
                try:
                    await admit(
                        LazyInput(requests, _check_request),
                        limiter,
                        execute,
                        deliver,
                        elastic=self._adaptive_policy is not None,
                    )
                except Exception as exc:
                    results._error = exc  # noqa: SLF001

        error: Exception | None = None
        async with anyio.create_task_group() as tg:
            tg.start_soon(feed)
            try:
                yield results
            except Exception as exc:
                # Raised by the caller's own code in the block: re-raise it after the task group,
                # unwrapped, rather than let the group turn it into an ExceptionGroup.
                error = exc
            finally:
                tg.cancel_scope.cancel()
                receive.close()
        if error is not None:
            raise error

    # -- helpers ----------------------------------------------------------------------------

    def _require_open(self) -> RequestPath:
        if not self._open or self._path is None:
            raise RuntimeError("use the Client inside 'async with corral.Client(...) as client:'")
        return self._path

    def _require_streaming(self) -> None:
        if self._caps.streaming is None:
            raise ConfigurationError(
                f"provider {self._provider.name!r} does not stream: it has no "
                f"build_stream_request/stream_parser (see corral.providers.StreamingProvider)"
            )


def _check_request(request: Any) -> None:
    if not isinstance(request, ChatRequest | EmbeddingRequest):
        raise TypeError(
            f"expected a corral.ChatRequest or corral.EmbeddingRequest, got "
            f"{type(request).__name__}; build one with corral.ChatRequest(...) or "
            f"corral.ChatRequest.from_openai(body)"
        )
