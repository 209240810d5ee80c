"""The Client: owns the HTTP client, the limits and the policies; runs one request or millions."""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from functools import partial
from types import TracebackType
from typing import Any, Final, Generic, Literal, NoReturn, Self, TypeVar, overload

import anyio
import anyio.lowlevel
import attrs
import httpx2
import stamina

from ._errors import ConfigurationError, InvalidRequestError, check_number, exception_for
from ._flow.adaptive import (
    AdaptiveConcurrency,
    AdaptiveLimiter,
    AdaptiveStatistics,
    signal_for_kind,
)
from ._flow.breaker import (
    Admission,
    Breaker,
    BreakerRegistry,
    BreakerStatistics,
    CircuitBreaker,
    outcome_for_kind,
)
from ._flow.budget import Budget, BudgetStatistics, BudgetTracker, Reservation
from ._flow.pricing import Pricing
from ._flow.ratelimit import Permit, RateLimit, RateLimiter, RateLimiterStatistics
from ._flow.retry import RetryPolicy, classify_exception
from ._models import (
    AnyRequest,
    BatchResult,
    BatchStatistics,
    ChatRequest,
    Completion,
    EmbeddingRequest,
    EmbeddingResult,
    ErrorInfo,
    ErrorKind,
    Failure,
    Result,
    StatisticsCollector,
)
from ._runner import LazyInput, admit
from ._secret import header_secrets, redact
from ._streaming import CompletionStream, EventReader, stream_failure
from ._transport.fast import FastTransport
from .providers._base import (
    EmbeddingProvider,
    InvalidResponse,
    Provider,
    ProviderError,
    StreamingProvider,
    scrubbed,
)

__all__ = ["Client", "ClientStatistics", "ResultStream"]

log = logging.getLogger("corral")

Requests = Iterable[AnyRequest] | AsyncIterable[AnyRequest]

T = TypeVar("T")
_Success = TypeVar("_Success", Completion, EmbeddingResult)

_CHAT: Final = 0
_STREAM: Final = 1
_EMBED: Final = 2


class _AttemptFailed(Exception):
    """One HTTP attempt failed; carries the normalised error to the retry hook.

    ``final`` marks a failure after a stream's first delta: never retried.
    """

    __slots__ = ("final", "gave_up", "info")

    def __init__(self, info: ErrorInfo, *, final: bool = False) -> None:
        # Masked before stamina's hooks and loggers see it: they print its repr.
        info = scrubbed(info, whole=True)
        super().__init__(info.message)
        self.info = info
        self.final = final
        self.gave_up: str | None = None


class _DeadlinePassed(Exception):
    """The request's deadline passed during an attempt or while waiting to send one."""


class _LimitReached(Exception):
    """The transport gave up at the attempt's limit (its "deadline" extension)."""


#: The timeout extension of an attempt that the transport bounds by its "deadline" extension.
_NO_TIMEOUTS: Final[dict[str, float | None]] = {}


class _Tries(Generic[T]):
    """One request's retry loop: what an attempt runs, its limits, and what the attempts did.

    One small object instead of closures over the loop's variables: a request in flight holds
    it for its whole life, and at high concurrency every object it holds is one more for the
    garbage collector to walk.
    """

    __slots__ = (
        "attempt",
        "bounded",
        "breaker",
        "count",
        "deadline",
        "extensions",
        "last",
        "prepared",
    )

    def __init__(
        self,
        prepared: _Prepared,
        attempt: Callable[[], Awaitable[T]],
        deadline: float,
        bounded: bool,
        extensions: dict[str, Any] | None,
        breaker: Breaker | None,
    ) -> None:
        self.prepared = prepared
        self.attempt = attempt
        self.deadline = deadline
        # Whether an attempt is bounded by request_timeout as a whole (not a stream).
        self.bounded = bounded
        # The request's extensions when the transport bounds attempts by their "deadline".
        self.extensions = extensions
        self.breaker = breaker
        self.count = 0
        self.last: _AttemptFailed | None = None


class _Prepared:
    """A request with its HTTP request built once, for every attempt, and its size estimate."""

    __slots__ = ("http", "input_estimate", "max_output", "mode", "request")

    def __init__(self, request: AnyRequest, http: httpx2.Request, mode: int) -> None:
        self.request = request
        self.http = http
        self.mode = mode
        self.input_estimate = 0
        self.max_output = 0

    def __repr__(self) -> str:
        return f"<_Prepared {self.request.id!r} mode={self.mode}>"


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


class Client:
    """Send chat requests to one provider, with limits, retries and statistics.

    Use it as an async context manager; nothing it starts outlives the ``async with``. It can be
    opened inside any task group, on asyncio or trio.

    Each request takes, in order: a concurrency slot (before its task even starts, so memory
    stays bounded by concurrency), then its worst case from the budget; then every attempt
    passes the circuit breaker and the rate limiter before it is sent. Every layer but the
    concurrency limit is optional, and none of them sends anything for a request it refuses.

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
    """

    __slots__ = (
        "_adaptive",
        "_adaptive_policy",
        "_attempts",
        "_breaker_policy",
        "_breakers",
        "_budget",
        "_budget_policy",
        "_clock",
        "_direct",
        "_estimate_tokens",
        "_failed",
        "_http",
        "_in_flight",
        "_limiter",
        "_max_concurrency",
        "_open",
        "_own_http",
        "_pricing",
        "_provider",
        "_rate",
        "_rate_policy",
        "_request_timeout",
        "_retry",
        "_started",
        "_succeeded",
        "_timeout_ext",
        "_timeout_ext_bounded",
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
    ) -> None:
        if not isinstance(provider, Provider):
            raise ConfigurationError(
                f"provider must be a corral provider adapter (such as corral.providers.OpenAI), "
                f"got {type(provider).__name__}"
            )
        self._adaptive_policy: AdaptiveConcurrency | None = None
        if max_concurrency == "auto":
            self._adaptive_policy = adaptive if adaptive is not None else AdaptiveConcurrency()
            max_concurrency = self._adaptive_policy.max_concurrency
        elif adaptive is not None:
            raise ConfigurationError('adaptive= needs max_concurrency="auto"')
        if (
            isinstance(max_concurrency, bool)
            or not isinstance(max_concurrency, int)
            or (max_concurrency < 1)
        ):
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
                raise ConfigurationError(
                    f"{name} must be a corral.{cls.__name__}, got {type(value).__name__}"
                )
        self._rate_policy = rate_limit if rate_limit is not None else RateLimit()
        self._breaker_policy = breaker
        self._budget_policy = budget
        self._pricing = pricing if pricing is not None else Pricing.default()
        # Token estimates feed the budget's reservations and the rate limiter's token limits,
        # configured or learned from headers.
        self._estimate_tokens = (
            budget is not None
            or bool(self._rate_policy.limits())
            or self._rate_policy.learn_from_headers
        )
        self._rate: RateLimiter | None = None
        self._breakers: BreakerRegistry | None = None
        self._budget: BudgetTracker | None = None
        self._adaptive: AdaptiveLimiter | None = None
        check_number(request_timeout, "request_timeout", minimum=0, above=True)
        if http_client is not None and not isinstance(http_client, httpx2.AsyncClient):
            raise ConfigurationError(
                f"http_client must be an httpx2.AsyncClient, got {type(http_client).__name__}"
            )
        self._provider = provider
        self._max_concurrency = max_concurrency
        self._retry = retry if retry is not None else RetryPolicy()
        self._request_timeout = float(request_timeout)
        self._timeout_ext = {
            "connect": self._request_timeout,
            "read": self._request_timeout,
            "write": self._request_timeout,
            "pool": self._request_timeout,
        }
        # A whole attempt is already bounded by request_timeout (a cancel scope around it, or
        # the "deadline" extension): per-read and per-write timeouts would only open more
        # cancel scopes on the hot path.
        self._timeout_ext_bounded = {
            "connect": self._request_timeout,
            "read": None,
            "write": None,
            "pool": self._request_timeout,
        }
        if transport not in (None, "fast", "httpx"):
            raise ConfigurationError(f'transport must be "fast" or "httpx", got {transport!r}')
        if transport is not None and http_client is not None:
            raise ConfigurationError(
                "pass either transport= or http_client=, not both: with your own http_client, "
                "corral sends through it as it is"
            )
        self._transport_choice = transport or "fast"
        self._http = http_client
        self._own_http = http_client is None
        # Set when corral owns the HTTP stack: attempts then go straight to the transport.
        self._direct: httpx2.AsyncBaseTransport | None = None
        self._limiter: anyio.CapacityLimiter | None = None
        # anyio's clock; while open, the backend's own function (anyio.current_time looks the
        # backend up on every call, several times per request).
        self._clock: Callable[[], float] = anyio.current_time
        self._open = False
        self._in_flight = 0
        self._started = 0
        self._succeeded = 0
        self._failed = 0
        self._attempts = 0

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
        parts.append(f"in_flight={self._in_flight}>")
        return " ".join(parts)

    async def __aenter__(self) -> Self:
        if self._open:
            raise RuntimeError("this Client is already open")
        if self._own_http:
            limits = httpx2.Limits(
                max_connections=self._max_concurrency,
                max_keepalive_connections=self._max_concurrency,
            )
            if self._transport_choice == "fast":
                self._direct = FastTransport(max_connections=self._max_concurrency)
                self._http = httpx2.AsyncClient(
                    transport=self._direct,
                    timeout=self._request_timeout,
                    limits=limits,
                    follow_redirects=False,
                )
            else:
                self._http = httpx2.AsyncClient(
                    timeout=self._request_timeout, limits=limits, follow_redirects=False
                )
        self._clock = anyio.lowlevel.current_token().backend_class.current_time
        self._limiter = anyio.CapacityLimiter(self._max_concurrency)
        if self._adaptive_policy is not None:
            self._adaptive = AdaptiveLimiter(
                self._adaptive_policy, self._limiter, clock=self._clock
            )
        self._rate = RateLimiter(self._rate_policy, clock=self._clock)
        if self._breaker_policy is not None:
            self._breakers = BreakerRegistry(self._breaker_policy, clock=self._clock)
        if self._budget_policy is not None:
            self._budget = BudgetTracker(self._budget_policy)
        self._open = True
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._open = False
        self._direct = None
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
        return ClientStatistics(
            max_concurrency=limit,
            in_flight=self._in_flight,
            started=self._started,
            succeeded=self._succeeded,
            failed=self._failed,
            attempts=self._attempts,
            rate_limiter=self._rate.statistics() if self._rate is not None else None,
            breakers=dict(self._breakers.statistics()) if self._breakers is not None else {},
            budget=self._budget.statistics() if self._budget is not None else None,
            adaptive=self._adaptive.statistics() if self._adaptive is not None else None,
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
        limiter = self._require_open()
        _check_request(request)
        prepared = self._prepare(request, stream=False)
        async with limiter:
            result = await self._execute_prepared(prepared)
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
        limiter = self._require_open()
        if not isinstance(request, ChatRequest):
            raise TypeError(
                f"complete_stream takes a corral.ChatRequest, got {type(request).__name__}"
            )
        self._require_streaming()
        prepared = self._prepare(request, stream=True)
        async with limiter:
            self._started += 1
            self._in_flight += 1
            reservation: Reservation | None = None
            try:
                start = self._clock()
                budgeted = await self._reserve_budget(prepared)
                if isinstance(budgeted, Failure):
                    self._failed += 1
                    raise exception_for(budgeted.error, request_id=request.id, attempts=0)
                reservation = budgeted
                outcome = await self._with_retries(
                    prepared, start, partial(self._open_stream, prepared, start)
                )
                if isinstance(outcome, Failure):
                    self._failed += 1
                    self._settle_budget(reservation, outcome)
                    raise exception_for(
                        outcome.error, request_id=request.id, attempts=outcome.attempts
                    )
                reader, attempts = outcome

                def end(completion: Completion | None) -> Completion | None:
                    self._count_end(completion)
                    if completion is not None:
                        completion = self._priced(completion, request.model)
                    self._settle_budget(reservation, completion)
                    return completion

                try:
                    # A server's error event mid-stream may quote the key back.
                    redact = partial(_redacted, request=prepared.http)
                    yield CompletionStream(reader, request.id, start, attempts, end, redact)
                finally:
                    await reader.aclose()
            finally:
                self._in_flight -= 1
                if reservation is not None and self._budget is not None:
                    # Cancelled or broken before the end: keep the worst case as spent.
                    self._budget.settle(reservation, None, reservation.tokens)

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
        limiter = self._require_open()
        if stream:
            self._require_streaming()
        collector = StatisticsCollector(self._clock())
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
            partial(self._execute, stream=stream),
            deliver,
            elastic=self._adaptive is not None,
        )
        done = tuple(r for r in results if r is not None)
        if len(done) != len(results):  # pragma: no cover - would be a bug in admit()
            raise AssertionError("a request produced no result")
        return BatchResult(done, collector.snapshot(self._clock()))

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
        limiter = self._require_open()
        if stream:
            self._require_streaming()
        send, receive = anyio.create_memory_object_stream[Result](self._max_concurrency)
        collector = StatisticsCollector(self._clock())
        execute = partial(self._execute, stream=stream)

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
                        elastic=self._adaptive is not None,
                    )
                except Exception as exc:
                    results._error = exc

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

    # -- one request --------------------------------------------------------------------------

    def _require_open(self) -> anyio.CapacityLimiter:
        if not self._open or self._limiter is None:
            raise RuntimeError("use the Client inside 'async with corral.Client(...) as client:'")
        return self._limiter

    def _require_streaming(self) -> None:
        if not isinstance(self._provider, StreamingProvider):
            raise ConfigurationError(
                f"provider {self._provider.name!r} does not stream: it has no "
                f"build_stream_request/stream_parser (see corral.providers.StreamingProvider)"
            )

    def _count_end(self, completion: Completion | None) -> Completion | None:
        if completion is None:
            self._failed += 1
        else:
            self._succeeded += 1
        return completion

    def _prepare(self, request: AnyRequest, *, stream: bool) -> _Prepared:
        """Build the HTTP request once; raise InvalidRequestError when the provider cannot."""
        provider = self._provider
        if isinstance(request, EmbeddingRequest):
            if not isinstance(provider, EmbeddingProvider):
                raise InvalidRequestError(
                    f"request {request.id!r}: {provider.name} has no embeddings API; "
                    f"send embedding requests through a provider that has one (OpenAI, Gemini)"
                )
            prepared = _Prepared(request, provider.build_embedding_request(request), _EMBED)
            texts = [request.input] if isinstance(request.input, str) else request.input
            prepared.input_estimate = self._rate_policy.count_tokens("\n".join(texts))
            return prepared
        if stream:
            assert isinstance(provider, StreamingProvider)
            prepared = _Prepared(request, provider.build_stream_request(request), _STREAM)
        else:
            prepared = _Prepared(request, provider.build_request(request), _CHAT)
        if self._estimate_tokens:
            prepared.input_estimate = self._rate_policy.count_tokens(request.prompt_text)
        prepared.max_output = request.max_tokens or 0
        return prepared

    async def _reserve_budget(self, prepared: _Prepared) -> Reservation | Failure | None:
        """Reserve a request's worst case; a Failure means the budget refuses it."""
        budget = self._budget
        if budget is None:
            return None
        request = prepared.request
        tokens = prepared.input_estimate + prepared.max_output
        worst = self._pricing.worst_case_cost(
            request.model, prepared.input_estimate, prepared.max_output or None
        )
        reservation = None if budget.exhausted else await budget.reserve(worst, tokens)
        if reservation is not None:
            return reservation
        policy = self._budget_policy
        if worst is None and policy is not None and policy.max_cost_usd is not None:
            why = (
                f"no known price for model {request.model!r} or no max_tokens, so its worst "
                f"case cannot be reserved under max_cost_usd; add a price with "
                f"Pricing.with_overrides() and set max_tokens"
            )
        else:
            why = f"the budget cannot fit this request ({budget.statistics()!r})"
        return Failure(request.id, ErrorInfo(ErrorKind.BUDGET_EXHAUSTED, why), 0, 0.0)

    def _settle_budget(self, reservation: Reservation | None, result: Result | None) -> None:
        budget = self._budget
        if reservation is None or budget is None:
            return
        if isinstance(result, Completion | EmbeddingResult):
            budget.settle(reservation, result.cost_usd, result.usage.total_tokens)
        elif isinstance(result, Failure) and (
            result.attempts == 0
            or (result.error.status_code is not None and not 200 <= result.error.status_code < 300)
        ):
            # Refused before sending, or answered with an error status: nothing was billed.
            budget.release(reservation)
        else:
            # A timeout, a broken connection or a 2xx whose body could not be read may still
            # have been billed: count the worst case.
            budget.settle(reservation, None, reservation.tokens)

    def _priced(self, value: _Success, requested_model: str) -> _Success:
        cost = self._pricing.cost(value.model or requested_model, value.usage)
        return attrs.evolve(value, cost_usd=cost) if cost is not None else value

    def _execute(self, request: AnyRequest, stream: bool = False) -> Awaitable[Result]:
        """Run one request through retries; return its result. Expected failures are values.

        A plain function that returns the coroutine to await: one frame less on a stack that
        every suspension and resumption of the request walks through.
        """
        try:
            prepared = self._prepare(request, stream=stream)
        except InvalidRequestError as exc:
            self._started += 1
            self._failed += 1
            log.debug("request %s refused before sending: %s", request.id, exc)
            info = ErrorInfo(ErrorKind.BAD_REQUEST, str(exc))
            return _at_once(Failure(request.id, info, 0, 0.0))
        return self._execute_prepared(prepared)

    async def _execute_prepared(self, prepared: _Prepared) -> Result:
        self._started += 1
        self._in_flight += 1
        reservation = None
        try:
            # No budget, no reservation: skip the call (a coroutine) on the hot path.
            budgeted = await self._reserve_budget(prepared) if self._budget is not None else None
            if isinstance(budgeted, Failure):
                result: Result = budgeted
            else:
                reservation = budgeted
                request = prepared.request
                start = self._clock()
                # _with_retries, inline: a coroutine less under every wait of the request.
                tries = self._tries(prepared, start, self._attempt_for(prepared, start))
                outcome: tuple[Completion | EmbeddingResult, int] | Failure
                try:
                    # Nothing awaited since `start` was read: it is the time the attempt begins.
                    outcome = await self._counted(tries, start), tries.count
                except _AttemptFailed as exc:
                    outcome = await self._retried(tries, exc, start)
                except _DeadlinePassed:
                    outcome = self._deadline_failure(prepared, None, start, tries.count)
                if isinstance(outcome, Failure):
                    result = outcome
                else:
                    value, attempts = outcome
                    cost = self._pricing.cost(value.model or request.model, value.usage)
                    result = _finished(value, self._clock() - start, attempts, cost)
                self._settle_budget(reservation, result)
        finally:
            self._in_flight -= 1
            if reservation is not None and self._budget is not None:
                # Cancelled mid-request: it may have been billed, so keep the worst case.
                self._budget.settle(reservation, None, reservation.tokens)
        if isinstance(result, Failure):
            self._failed += 1
        else:
            self._succeeded += 1
        return result

    def _attempt_for(
        self, prepared: _Prepared, start: float
    ) -> Callable[[], Awaitable[Completion | EmbeddingResult]]:
        """Return what one attempt of *prepared* runs: a streamed one, or a plain exchange."""
        request = prepared.request
        if prepared.mode == _STREAM:
            return partial(self._streamed_attempt, prepared, start)
        if isinstance(request, EmbeddingRequest):
            provider = self._provider
            assert isinstance(provider, EmbeddingProvider)
            return partial(self._attempt, prepared.http, provider.parse_embedding_response, request)
        return partial(self._attempt, prepared.http, self._provider.parse_response, request)

    def _tries(
        self, prepared: _Prepared, start: float, attempt: Callable[[], Awaitable[T]]
    ) -> _Tries[T]:
        """Return the retry state of a request that started at *start*."""
        policy = self._retry
        deadline = start + policy.timeout if policy.timeout is not None else math.inf
        # A whole non-streamed attempt runs under request_timeout; a stream bounds only its
        # wait for the first delta (in _open_stream), never the reading of a long answer.
        bounded = prepared.mode != _STREAM
        # `is not None`: an empty registry is falsy (it has a __len__) until its first circuit.
        breakers = self._breakers
        return _Tries(
            prepared,
            attempt,
            deadline,
            bounded,
            # corral's own transport ends an attempt's waits at its limit itself (the request's
            # "deadline" extension), which spares a cancel scope per attempt; other transports
            # run the attempt inside one.
            prepared.http.extensions if bounded and self._direct is not None else None,
            breakers.get(self._provider.endpoint) if breakers is not None else None,
        )

    async def _with_retries(
        self, prepared: _Prepared, start: float, attempt: Callable[[], Awaitable[T]]
    ) -> tuple[T, int] | Failure:
        """Call *attempt* under the retry policy; return its value and the attempt count.

        `_execute_prepared` does the same inline, a coroutine less under every wait.
        """
        tries = self._tries(prepared, start, attempt)
        # The first attempt runs outside stamina: a success, the common case, then costs
        # nothing extra (see _retried for a failure).
        try:
            return await self._counted(tries), tries.count
        except _AttemptFailed as exc:
            return await self._retried(tries, exc, start)
        except _DeadlinePassed:
            return self._deadline_failure(prepared, None, start, tries.count)

    async def _retried(
        self, tries: _Tries[T], last: _AttemptFailed, start: float
    ) -> tuple[T, int] | Failure:
        """Retry after the first attempt of *tries* failed with *last*, as the policy says.

        The first failure is re-raised inside stamina's loop, so that stamina decides about it
        and sleeps its backoff like for any other attempt.
        """
        prepared = tries.prepared
        policy = self._retry
        retry_hook = partial(self._retry_hook, tries)
        if policy.attempts == 1 or retry_hook(last) is False:
            return self._fail(prepared, last, start, tries.count)
        first: _AttemptFailed | None = last
        # Backoff sleeps count against the deadline too.
        with anyio.CancelScope(deadline=tries.deadline):
            try:
                async for retry in stamina.retry_context(
                    on=retry_hook,
                    attempts=policy.attempts,
                    timeout=None,  # the deadline is enforced on anyio's clock
                    wait_initial=policy.wait_initial,
                    wait_max=policy.wait_max,
                    wait_jitter=policy.wait_jitter,
                    wait_exp_base=policy.wait_exp_base,
                ):
                    with retry:
                        if first is not None:
                            pending, first = first, None
                            raise pending
                        log.debug("retrying %s (attempt %d)", prepared.request.id, tries.count + 1)
                        value = await self._counted(tries)
            except _AttemptFailed as exc:
                return self._fail(prepared, exc, start, tries.count)
            except _DeadlinePassed:
                pass
            else:
                return value, tries.count
        # The deadline passed: during an attempt, a wait to send, or a backoff sleep.
        return self._deadline_failure(prepared, tries.last, start, tries.count)

    async def _counted(self, tries: _Tries[T], now: float | None = None) -> T:
        """Make one attempt of *tries*, admitted, bounded and counted; return its value.

        Args:
            tries: The request's retry state.
            now: The clock's reading, when the caller took it just now (the first attempt).
        """
        prepared = tries.prepared
        breaker = tries.breaker
        rate = self._rate
        admission: Admission | None = None
        permit: Permit | None = None
        began = self._clock() if now is None else now
        if breaker is None and rate is not None:
            permit = rate.acquire_nowait(prepared.input_estimate, prepared.max_output, began)
        if breaker is not None or (rate is not None and permit is None):
            admission, permit = await self._wait_to_send(breaker, rate, prepared, tries.deadline)
            began = self._clock()
        tries.count += 1
        self._attempts += 1
        outcome: str | None = None  # the error kind's value; None for a success
        sent = True
        # The attempt's limit: the request's deadline, or the attempt's own timeout when that
        # comes first. Waiting above is bounded by the deadline alone.
        deadline = tries.deadline
        request_timeout = self._request_timeout
        limit = min(deadline, began + request_timeout) if tries.bounded else deadline
        extensions = tries.extensions
        try:
            if extensions is not None:
                extensions["deadline"] = limit
                try:
                    value = await tries.attempt()
                except _LimitReached:
                    _timed_out(deadline_passed=limit >= deadline, request_timeout=request_timeout)
            else:
                with anyio.CancelScope(deadline=limit) as scope:
                    value = await tries.attempt()
                if scope.cancelled_caught:
                    _timed_out(deadline_passed=limit >= deadline, request_timeout=request_timeout)
        except _AttemptFailed as exc:
            outcome = exc.info.kind.value
            if rate is not None and permit is not None:
                self._after_refusal(rate, permit, exc.info)
            raise
        except BaseException:
            # Cancellation, the deadline (or a bug) says nothing about the upstream: free the
            # probe slot without an outcome, and teach the concurrency controller nothing.
            if breaker is not None and admission is not None:
                breaker.release(admission)
                admission = None
            sent = False
            raise
        finally:
            if breaker is not None and admission is not None:
                breaker.record(admission, outcome_for_kind(outcome))
            if self._adaptive is not None and sent:
                self._adaptive.record(signal_for_kind(outcome), self._clock() - began)
        if rate is not None and permit is not None:
            usage = getattr(value, "usage", None)
            if usage is None:
                rate.settle(permit, None, None)
            else:
                rate.settle(permit, usage.input_tokens, usage.output_tokens)
        return value

    def _retry_hook(self, tries: _Tries[Any], exc: Exception) -> bool | float:
        """Tell stamina whether (and after how long) to retry after *exc*."""
        if not isinstance(exc, _AttemptFailed):
            return False
        tries.last = exc
        if exc.final or not exc.info.retryable:
            return False
        hint = exc.info.retry_after_s
        if hint is None:
            return True
        policy = self._retry
        remaining = tries.deadline - self._clock()
        if hint > policy.max_retry_after or hint >= remaining:
            limit = "max_retry_after" if hint > policy.max_retry_after else "the deadline"
            exc.gave_up = f"server asked to retry after {hint:g}s, beyond {limit}"
            return False
        return hint

    async def _wait_to_send(
        self,
        breaker: Breaker | None,
        rate: RateLimiter | None,
        prepared: _Prepared,
        deadline: float,
    ) -> tuple[Admission | None, Permit | None]:
        """Wait for the circuit and the rate limiter to admit an attempt, until the deadline."""
        admission: Admission | None = None
        with anyio.CancelScope(deadline=deadline):
            if breaker is not None:
                admission = await breaker.admit()
                if admission is None:
                    stats = breaker.statistics()
                    raise _AttemptFailed(
                        ErrorInfo(
                            ErrorKind.CIRCUIT_OPEN,
                            f"circuit for {self._provider.endpoint} is {stats.state.value}; "
                            f"not sent",
                            retry_after_s=stats.time_until_half_open or None,
                        ),
                        final=True,
                    )
            try:
                permit = None
                if rate is not None:
                    permit = await rate.acquire(prepared.input_estimate, prepared.max_output)
            except BaseException:
                if breaker is not None and admission is not None:
                    breaker.release(admission)
                raise
            return admission, permit
        # The deadline passed while waiting (the scope swallowed it after the release above).
        raise _DeadlinePassed

    def _deadline_failure(
        self, prepared: _Prepared, last: _AttemptFailed | None, start: float, attempts: int
    ) -> Failure:
        detail = f"; last error: {last.info.message}" if last is not None else ""
        info = ErrorInfo(
            ErrorKind.TIMEOUT,
            f"deadline of {self._retry.timeout:g}s passed after {attempts} attempt(s){detail}",
            status_code=last.info.status_code if last is not None else None,
            retryable=True,
            retry_after_s=last.info.retry_after_s if last is not None else None,
        )
        info = _redacted(info, prepared.http)
        return Failure(prepared.request.id, info, attempts, self._clock() - start)

    def _after_refusal(self, rate: RateLimiter, permit: Any, info: ErrorInfo) -> None:
        if info.status_code == 429:
            # A refused request used no tokens; and every worker waits out the same hint, but
            # never longer than the policy would wait for one request: a hint of days (or of a
            # date in 9999) would otherwise stall the whole batch until its deadlines.
            rate.settle(permit, 0, 0)
            if info.kind is ErrorKind.RATE_LIMITED:
                hint = info.retry_after_s if info.retry_after_s is not None else 1.0
                rate.cooldown(min(hint, self._retry.max_retry_after))
        elif info.status_code is not None:
            rate.settle(permit, 0, 0)
        else:
            rate.settle(permit, None, None)

    def _fail(
        self, prepared: _Prepared, last: _AttemptFailed, start: float, attempts: int
    ) -> Failure:
        info = last.info
        if last.gave_up is not None:
            info = attrs.evolve(info, message=f"{info.message} ({last.gave_up})")
        info = _redacted(info, prepared.http)
        request_id = prepared.request.id
        log.debug("request %s failed: %s", request_id, info.kind.value)
        return Failure(request_id, info, attempts, self._clock() - start)

    async def _attempt(
        self,
        http_request: httpx2.Request,
        parse: Callable[[Any, httpx2.Response], _Success],
        request: AnyRequest,
    ) -> _Success:
        """Make one HTTP attempt; raise :class:`_AttemptFailed` on any expected failure.

        With corral's own stack the request goes straight to the transport: redirects are
        never followed for API calls, and cookies, auth flows and URL merging have nothing to do
        for a request that the adapter built complete.
        """
        # The attempt's limit (a cancel scope around it, or the "deadline" extension that
        # corral's transport honours) bounds it as a whole: per-read and per-write timeouts
        # would only open more scopes on the hot path.
        extensions = http_request.extensions
        bounded_here = "deadline" in extensions
        extensions["timeout"] = _NO_TIMEOUTS if bounded_here else self._timeout_ext_bounded
        direct = self._direct
        try:
            if direct is None:
                response = await self._send(http_request, stream=False)
            else:
                # Sent here rather than through _send: one frame less under every wait.
                response = await direct.handle_async_request(http_request)
                response.request = http_request
                try:
                    await response.aread()
                except BaseException:
                    with anyio.CancelScope(shield=True):
                        await response.aclose()
                    raise
        except httpx2.TimeoutException as exc:
            if bounded_here:
                raise _LimitReached from exc
            raise _AttemptFailed(classify_exception(exc)) from exc
        except (httpx2.HTTPError, OSError) as exc:
            raise _AttemptFailed(classify_exception(exc)) from exc
        status = response.status_code
        if self._rate is not None:
            self._rate.observe(response.headers, status)
        if 200 <= status < 300:
            return _parse_success(parse, request, response)
        raise _AttemptFailed(self._provider.classify_error(response))

    async def _send(self, request: httpx2.Request, *, stream: bool) -> httpx2.Response:
        """Send one request through the HTTP client, or open a stream through either stack."""
        direct = self._direct
        if direct is None:
            http = self._http
            assert http is not None
            # Even when the user's client follows redirects: credential headers other than
            # Authorization (x-api-key, x-goog-api-key) would travel to the new origin.
            return await http.send(request, stream=stream, follow_redirects=False)
        assert stream, "non-streamed attempts go to the transport in _attempt"
        response = await direct.handle_async_request(request)
        response.request = request
        return response

    async def _streamed_attempt(self, prepared: _Prepared, start: float) -> Completion:
        """Open the stream, then read it to the end; failures after its first delta are final."""
        reader = await self._open_stream(prepared, start)
        try:
            while await reader.next_delta() is not None:
                pass
            return reader.completion()
        except Exception as exc:
            info = stream_failure(exc)
            if info is None:
                raise
            raise _AttemptFailed(info, final=True) from exc
        finally:
            await reader.aclose()

    async def _open_stream(self, prepared: _Prepared, start: float) -> EventReader:
        """Send a streamed request and read up to its first text delta; retryable until then.

        Returns the reader, which owns the open response. On any failure the response is closed
        before :class:`_AttemptFailed` is raised.
        """
        http_request = prepared.http
        http_request.extensions["timeout"] = self._timeout_ext
        with anyio.move_on_after(self._request_timeout):
            try:
                response = await self._send(http_request, stream=True)
            except (httpx2.HTTPError, OSError) as exc:
                raise _AttemptFailed(classify_exception(exc)) from exc
            try:
                return await self._first_delta(prepared, response, start)
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await response.aclose()
                raise
        raise _AttemptFailed(
            ErrorInfo(
                ErrorKind.TIMEOUT,
                f"no first token within request_timeout={self._request_timeout:g}s",
                retryable=True,
            )
        )

    async def _first_delta(
        self, prepared: _Prepared, response: httpx2.Response, start: float
    ) -> EventReader:
        provider = self._provider
        assert isinstance(provider, StreamingProvider)
        assert isinstance(prepared.request, ChatRequest)
        request = prepared.request
        status = response.status_code
        if self._rate is not None:
            self._rate.observe(response.headers, status)
        content_type = response.headers.get("content-type", "").partition(";")[0].strip().lower()
        if not 200 <= status < 300 or content_type != "text/event-stream":
            try:
                await response.aread()
            except (httpx2.HTTPError, OSError) as exc:
                raise _AttemptFailed(classify_exception(exc)) from exc
            if not 200 <= status < 300:
                raise _AttemptFailed(provider.classify_error(response))
            if "json" not in content_type:
                raise _AttemptFailed(
                    ErrorInfo(
                        ErrorKind.INVALID_RESPONSE,
                        f"asked for an event stream, got {content_type or 'no content type'}",
                        status_code=status,
                    )
                )
            # The server ignored the stream flag and answered whole: still a good answer.
            completion = _parse_success(provider.parse_response, request, response)
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
            raise _AttemptFailed(info) from exc
        return reader


async def _at_once(result: Result) -> Result:
    """Return *result*: an awaitable for a result known before anything is sent."""
    return result


def _finished(
    value: Completion | EmbeddingResult, latency_s: float, attempts: int, cost_usd: float | None
) -> Completion | EmbeddingResult:
    """Return *value* with its latency, attempt count and cost filled in.

    ``attrs.evolve`` would run every field's validator and converter again (a streamed answer's
    token gaps among them) for values that passed them a moment ago: copy the fields as they are.
    """
    cls = type(value)
    names = _FIELD_NAMES.get(cls)
    if names is None:
        return attrs.evolve(value, latency_s=latency_s, attempts=attempts, cost_usd=cost_usd)
    copy = object.__new__(cls)
    for name in names:
        object.__setattr__(copy, name, getattr(value, name))
    object.__setattr__(copy, "latency_s", latency_s)
    object.__setattr__(copy, "attempts", attempts)
    object.__setattr__(copy, "cost_usd", cost_usd)
    return copy


# Exactly these classes, not subclasses: a subclass may add fields or checks of its own.
_FIELD_NAMES: Final[dict[type, tuple[str, ...]]] = {
    cls: tuple(field.name for field in attrs.fields(cls)) for cls in (Completion, EmbeddingResult)
}


def _timed_out(*, deadline_passed: bool, request_timeout: float) -> NoReturn:
    """Raise what an attempt's expired cancel scope means: the deadline, or a retryable timeout."""
    if deadline_passed:
        raise _DeadlinePassed
    raise _AttemptFailed(
        ErrorInfo(
            ErrorKind.TIMEOUT,
            f"attempt took longer than request_timeout={request_timeout:g}s",
            retryable=True,
        )
    )


def _redacted(info: ErrorInfo, request: httpx2.Request) -> ErrorInfo:
    """Mask any credential of *request* that the server quoted back in its error message."""
    message = redact(info.message, header_secrets(request.headers.multi_items()))
    return info if message == info.message else attrs.evolve(info, message=message)


def _parse_success(
    parse: Callable[[Any, httpx2.Response], T], request: AnyRequest, response: httpx2.Response
) -> T:
    """Parse a 2xx response; raise :class:`_AttemptFailed` for a body that reports a failure."""
    status = response.status_code
    try:
        return parse(request, response)
    except InvalidResponse as exc:
        raise _AttemptFailed(
            ErrorInfo(ErrorKind.INVALID_RESPONSE, str(exc), status_code=status)
        ) from exc
    except ProviderError as exc:
        info = exc.info
        if info.status_code is None:
            info = attrs.evolve(info, status_code=status)
        raise _AttemptFailed(info) from exc


def _check_request(request: Any) -> None:
    if not isinstance(request, ChatRequest | EmbeddingRequest):
        raise TypeError(
            f"expected a corral.ChatRequest or corral.EmbeddingRequest, got "
            f"{type(request).__name__}; build one with corral.ChatRequest(...) or "
            f"corral.ChatRequest.from_openai(body)"
        )
