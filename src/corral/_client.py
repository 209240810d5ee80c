"""The Client: owns the HTTP client, the limits and the policies; runs one request or millions."""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any, Self

import anyio
import attrs
import httpx2
import stamina

from ._errors import ConfigurationError, exception_for
from ._models import (
    BatchResult,
    BatchStatistics,
    ChatRequest,
    Completion,
    ErrorInfo,
    ErrorKind,
    Failure,
    Result,
    StatisticsCollector,
)
from ._retry import RetryPolicy, classify_exception
from ._runner import LazyInput, admit
from .providers._base import InvalidResponse, Provider

__all__ = ["Client", "ClientStatistics", "ResultStream"]

log = logging.getLogger("corral")

Requests = Iterable[ChatRequest] | AsyncIterable[ChatRequest]


class _AttemptFailed(Exception):
    """One HTTP attempt failed; carries the normalised error to the retry hook."""

    __slots__ = ("gave_up", "info")

    def __init__(self, info: ErrorInfo) -> None:
        super().__init__(info.message)
        self.info = info
        self.gave_up: str | None = None


@attrs.frozen
class ClientStatistics:
    """A snapshot of a client's activity since it was opened.

    Args:
        max_concurrency: The concurrency limit.
        in_flight: Requests being worked on now.
        started: Requests started.
        succeeded: Requests that completed.
        failed: Requests that failed.
        attempts: HTTP attempts made.
    """

    max_concurrency: int
    in_flight: int
    started: int
    succeeded: int
    failed: int
    attempts: int


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

    Args:
        provider: The API adapter, for example :class:`corral.providers.OpenAI`.
        max_concurrency: The most requests in flight at once.
        retry: The retry policy; ``RetryPolicy()`` when not given.
        request_timeout: Seconds one HTTP attempt may take, all of it.
        http_client: Your own :class:`httpx2.AsyncClient` (proxies, mTLS, event hooks). corral
            never closes a client it did not create.
    """

    __slots__ = (
        "_attempts",
        "_failed",
        "_http",
        "_in_flight",
        "_limiter",
        "_max_concurrency",
        "_open",
        "_own_http",
        "_provider",
        "_request_timeout",
        "_retry",
        "_started",
        "_succeeded",
        "_timeout_ext",
    )

    def __init__(
        self,
        provider: Provider,
        *,
        max_concurrency: int = 64,
        retry: RetryPolicy | None = None,
        request_timeout: float = 60.0,
        http_client: httpx2.AsyncClient | None = None,
    ) -> None:
        if not isinstance(provider, Provider):
            raise ConfigurationError(
                f"provider must be a corral provider adapter (such as corral.providers.OpenAI), "
                f"got {type(provider).__name__}"
            )
        if isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int) or (
            max_concurrency < 1
        ):
            raise ConfigurationError(
                f"max_concurrency must be an integer >= 1, got {max_concurrency!r}"
            )
        if not (isinstance(request_timeout, int | float) and math.isfinite(request_timeout)
                and request_timeout > 0):
            raise ConfigurationError(f"request_timeout must be > 0, got {request_timeout!r}")
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
        self._http = http_client
        self._own_http = http_client is None
        self._limiter: anyio.CapacityLimiter | None = None
        self._open = False
        self._in_flight = 0
        self._started = 0
        self._succeeded = 0
        self._failed = 0
        self._attempts = 0

    def __repr__(self) -> str:
        state = "open" if self._open else "closed"
        return (
            f"<corral.Client {state} provider={self._provider!r} "
            f"max_concurrency={self._max_concurrency} retry={self._retry!r} "
            f"in_flight={self._in_flight}>"
        )

    async def __aenter__(self) -> Self:
        if self._open:
            raise RuntimeError("this Client is already open")
        if self._own_http:
            self._http = httpx2.AsyncClient(
                timeout=self._request_timeout,
                limits=httpx2.Limits(
                    max_connections=self._max_concurrency,
                    max_keepalive_connections=self._max_concurrency,
                ),
                follow_redirects=False,
            )
        self._limiter = anyio.CapacityLimiter(self._max_concurrency)
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

    def statistics(self) -> ClientStatistics:
        """Return a snapshot of this client's activity."""
        return ClientStatistics(
            max_concurrency=self._max_concurrency,
            in_flight=self._in_flight,
            started=self._started,
            succeeded=self._succeeded,
            failed=self._failed,
            attempts=self._attempts,
        )

    # -- public calls -------------------------------------------------------------------------

    async def complete(self, request: ChatRequest) -> Completion:
        """Send one request and return its completion.

        Raises the :class:`corral.RequestFailed` subclass that matches the failure's kind (for
        example :class:`corral.RateLimitedError`) when it fails after retries.

        Args:
            request: The request.
        """
        limiter = self._require_open()
        _check_request(request)
        async with limiter:
            result = await self._execute(request)
        if isinstance(result, Failure):
            raise exception_for(result.error, request_id=result.id, attempts=result.attempts)
        return result

    async def run(self, requests: Requests) -> BatchResult:
        """Send every request and return all results, in input order.

        Failures come back as :class:`corral.Failure` values; only bugs and cancellation raise.
        An exception raised while reading the input (a non-request item, or your iterator's
        own error) cancels the work in flight and propagates unwrapped. The input is read lazily, but the results are all kept: use :meth:`stream` for inputs too
        large to hold.

        Args:
            requests: Any iterable or async iterable of requests.
        """
        limiter = self._require_open()
        collector = StatisticsCollector(anyio.current_time())
        results: list[Result | None] = []

        async def deliver(index: int, result: Result) -> None:
            results[index] = result
            collector.add(result)

        def check(request: ChatRequest) -> None:
            _check_request(request)
            results.append(None)

        await admit(LazyInput(requests, check), limiter, self._execute, deliver)
        done = tuple(r for r in results if r is not None)
        if len(done) != len(results):  # pragma: no cover - would be a bug in admit()
            raise AssertionError("a request produced no result")
        return BatchResult(done, collector.snapshot(anyio.current_time()))

    @asynccontextmanager
    async def stream(self, requests: Requests) -> AsyncIterator[ResultStream]:
        """Send every request and yield results as they complete, in bounded memory.

        Use as ``async with client.stream(requests) as results: async for r in results: ...``.
        Leaving the block early cancels the requests still in flight. An exception raised while
        reading the input (a non-request item, or your iterator's own error) is raised by the
        iteration, unwrapped, after the results that came before it.

        Args:
            requests: Any iterable or async iterable of requests.
        """
        limiter = self._require_open()
        send, receive = anyio.create_memory_object_stream[Result](self._max_concurrency)
        collector = StatisticsCollector(anyio.current_time())

        async def deliver(index: int, result: Result) -> None:
            await send.send(result)

        results = ResultStream(receive, collector)

        async def feed() -> None:
            async with send:
                try:
                    await admit(
                        LazyInput(requests, _check_request), limiter, self._execute, deliver
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

    async def _execute(self, request: ChatRequest) -> Result:
        """Run one request through retries; return its result. Expected failures are values."""
        self._started += 1
        self._in_flight += 1
        try:
            result = await self._with_retries(request)
        finally:
            self._in_flight -= 1
        if isinstance(result, Completion):
            self._succeeded += 1
        else:
            self._failed += 1
        return result

    async def _with_retries(self, request: ChatRequest) -> Result:
        policy = self._retry
        start = anyio.current_time()
        deadline = start + policy.timeout if policy.timeout is not None else math.inf
        attempts = 0
        last: _AttemptFailed | None = None

        async def attempt() -> Completion:
            nonlocal attempts
            attempts += 1
            self._attempts += 1
            return await self._attempt(request)

        def retry_hook(exc: Exception) -> bool | float:
            if not isinstance(exc, _AttemptFailed) or not exc.info.retryable:
                return False
            hint = exc.info.retry_after_s
            if hint is None:
                return True
            remaining = deadline - anyio.current_time()
            if hint > policy.max_retry_after or hint >= remaining:
                limit = "max_retry_after" if hint > policy.max_retry_after else "the deadline"
                exc.gave_up = f"server asked to retry after {hint:g}s, beyond {limit}"
                return False
            return hint

        with anyio.move_on_after(deadline - start):
            # The first attempt runs outside stamina: a success, the common case, then costs
            # nothing extra. A failure is re-raised inside stamina's loop so that stamina decides
            # about it and sleeps its backoff like for any other attempt.
            try:
                completion = await attempt()
            except _AttemptFailed as exc:
                last = exc
            else:
                return self._finish(completion, start, attempts)
            if policy.attempts > 1 and retry_hook(last) is not False:
                first: _AttemptFailed | None = last
                try:
                    async for retry in stamina.retry_context(
                        on=retry_hook,
                        attempts=policy.attempts,
                        timeout=None,  # the deadline above is enforced on anyio's clock
                        wait_initial=policy.wait_initial,
                        wait_max=policy.wait_max,
                        wait_jitter=policy.wait_jitter,
                        wait_exp_base=policy.wait_exp_base,
                    ):
                        with retry:
                            if first is not None:
                                pending, first = first, None
                                raise pending
                            log.debug("retrying %s (attempt %d)", request.id, attempts + 1)
                            completion = await attempt()
                    return self._finish(completion, start, attempts)
                except _AttemptFailed as exc:
                    last = exc
            return self._fail(request, last, start, attempts)
        # The deadline passed.
        detail = f"; last error: {last.info.message}" if last is not None else ""
        info = ErrorInfo(
            ErrorKind.TIMEOUT,
            f"deadline of {policy.timeout:g}s passed after {attempts} attempt(s){detail}",
            status_code=last.info.status_code if last is not None else None,
            retryable=True,
            retry_after_s=last.info.retry_after_s if last is not None else None,
        )
        return Failure(request.id, info, attempts, anyio.current_time() - start)

    def _finish(self, completion: Completion, start: float, attempts: int) -> Completion:
        return attrs.evolve(
            completion, latency_s=anyio.current_time() - start, attempts=attempts
        )

    def _fail(
        self, request: ChatRequest, last: _AttemptFailed, start: float, attempts: int
    ) -> Failure:
        info = last.info
        if last.gave_up is not None:
            info = attrs.evolve(info, message=f"{info.message} ({last.gave_up})")
        log.debug("request %s failed: %s", request.id, info.kind.value)
        return Failure(request.id, info, attempts, anyio.current_time() - start)

    async def _attempt(self, request: ChatRequest) -> Completion:
        """Make one HTTP attempt; raise :class:`_AttemptFailed` on any expected failure."""
        http = self._http
        assert http is not None
        provider = self._provider
        http_request = provider.build_request(request)
        http_request.extensions["timeout"] = self._timeout_ext
        with anyio.move_on_after(self._request_timeout) as scope:
            try:
                response = await http.send(http_request)
            except (httpx2.HTTPError, OSError) as exc:
                raise _AttemptFailed(classify_exception(exc)) from exc
        if scope.cancelled_caught:
            raise _AttemptFailed(
                ErrorInfo(
                    ErrorKind.TIMEOUT,
                    f"attempt took longer than request_timeout={self._request_timeout:g}s",
                    retryable=True,
                )
            )
        status = response.status_code
        if 200 <= status < 300:
            try:
                return provider.parse_response(request, response)
            except InvalidResponse as exc:
                raise _AttemptFailed(
                    ErrorInfo(ErrorKind.INVALID_RESPONSE, str(exc), status_code=status)
                ) from exc
        raise _AttemptFailed(provider.classify_error(response))


def _check_request(request: Any) -> None:
    if not isinstance(request, ChatRequest):
        raise TypeError(
            f"expected a corral.ChatRequest, got {type(request).__name__}; build one with "
            f"corral.ChatRequest(...) or corral.ChatRequest.from_openai(body)"
        )
