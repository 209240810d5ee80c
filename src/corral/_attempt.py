"""A request's life after admission: budget reservation, attempts, retries, settlement.

:class:`RequestPath` is built once when a :class:`corral.Client` opens and holds every layer a
request passes after its concurrency slot (see the client's docstring for the order). One
request's own state is a :class:`RequestState`; one HTTP exchange is :mod:`corral._exchange`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Final, NoReturn

import anyio
import attrs
import stamina

from ._errors import InvalidRequestError
from ._exchange import (
    CHAT,
    EMBED,
    OPEN_STREAM,
    STREAM,
    AttemptFailed,
    Capabilities,
    Exchange,
    LimitReached,
    Prepared,
)
from ._flow.adaptive import AdaptiveLimiter, signal_for_kind
from ._flow.breaker import Admission, Breaker, BreakerRegistry, outcome_for_kind
from ._flow.budget import Budget, BudgetTracker, Reservation
from ._flow.pricing import Pricing
from ._flow.ratelimit import Permit, RateLimit, RateLimiter
from ._flow.retry import RetryPolicy
from ._models import (
    AnyRequest,
    Completion,
    EmbeddingRequest,
    EmbeddingResult,
    ErrorInfo,
    ErrorKind,
    Failure,
    Result,
)
from ._streaming import EventReader
from .providers._base import may_be_billed, token_bounds, usage_problem

__all__: list[str] = []

log = logging.getLogger("corral")

#: What one attempt returns: a whole answer, or (``OPEN_STREAM``) a stream read up to its first
#: delta, for the caller to read on.
Value = Completion | EmbeddingResult | EventReader

_STREAMED: Final = (STREAM, OPEN_STREAM)


class DeadlinePassed(Exception):
    """The request's deadline passed during an attempt or while waiting to send one."""


class Tally:
    """A client's request counters; they outlive each ``async with`` of the client."""

    __slots__ = ("attempts", "failed", "in_flight", "started", "succeeded")

    def __init__(self) -> None:
        self.started = 0
        self.in_flight = 0
        self.succeeded = 0
        self.failed = 0
        self.attempts = 0

    def __repr__(self) -> str:
        return (
            f"<Tally started={self.started} in_flight={self.in_flight} "
            f"succeeded={self.succeeded} failed={self.failed} attempts={self.attempts}>"
        )


class RequestState:
    """One request from its start to its settlement: its limits, its attempts, its reservation.

    One small object per request in flight rather than closures over a loop's variables.
    """

    __slots__ = (
        "breaker",
        "count",
        "deadline",
        "extensions",
        "last",
        "path",
        "prepared",
        "reservation",
        "settled",
        "start",
    )

    def __init__(self, path: RequestPath, prepared: Prepared) -> None:
        self.path = path
        self.prepared = prepared
        self.start = 0.0
        self.deadline = math.inf
        # The request's extensions when the transport bounds whole attempts by their "deadline".
        self.extensions: dict[str, object] | None = None
        self.breaker: Breaker | None = None
        self.reservation: Reservation | None = None
        self.settled = False
        self.count = 0
        self.last: AttemptFailed | None = None

    def __repr__(self) -> str:
        return f"<RequestState {self.prepared.request.id!r} attempts={self.count}>"

    def retry_hook(self, exc: Exception) -> bool | float:
        """Tell stamina whether to retry after *exc*, and after how long (a server's hint)."""
        return self.path.retry_hook(self, exc)

    def stream_ended(self, completion: Completion | None) -> Completion | None:
        """Settle a stream the caller read (None: it failed); return the priced completion."""
        return self.path.settle_stream(self, completion)


class RequestPath:
    """Every layer a request passes after its concurrency slot, built once per open client.

    In order: the budget reserves the request's worst case; then each attempt, inside the retry
    loop, waits for the circuit breaker and the rate limiter, then makes one exchange; the
    outcome teaches the breaker, the adaptive controller and the rate limiter; the budget is
    settled with what the request really cost.

    Args:
        limiter: The concurrency limit, which the client takes before a request begins.
        capabilities: The provider and what it can do.
        exchange: Makes one HTTP exchange.
        tally: The client's counters.
        retry: The retry policy.
        request_timeout: Seconds one attempt may take.
        rate_policy: The rate limit (it also counts tokens for estimates).
        rate: The rate limiter.
        breakers: The circuit breakers, or None.
        budget_policy: The budget, or None.
        budget: Its tracker, or None.
        pricing: Prices for costs and reservations.
        adaptive: The adaptive concurrency controller, or None.
        clock: The backend's clock.
    """

    __slots__ = (
        "_adaptive",
        "_breakers",
        "_budget",
        "_budget_policy",
        "_caps",
        "_clock",
        "_estimate_tokens",
        "_exchange",
        "_pricing",
        "_rate",
        "_rate_policy",
        "_request_timeout",
        "_retry",
        "_tally",
        "limiter",
    )

    def __init__(
        self,
        *,
        limiter: anyio.CapacityLimiter,
        capabilities: Capabilities,
        exchange: Exchange,
        tally: Tally,
        retry: RetryPolicy,
        request_timeout: float,
        rate_policy: RateLimit,
        rate: RateLimiter,
        breakers: BreakerRegistry | None,
        budget_policy: Budget | None,
        budget: BudgetTracker | None,
        pricing: Pricing,
        adaptive: AdaptiveLimiter | None,
        clock: Callable[[], float],
    ) -> None:
        self.limiter = limiter
        self._caps = capabilities
        self._exchange = exchange
        self._tally = tally
        self._retry = retry
        self._request_timeout = request_timeout
        self._rate_policy = rate_policy
        self._rate = rate
        self._breakers = breakers
        self._budget_policy = budget_policy
        self._budget = budget
        self._pricing = pricing
        self._adaptive = adaptive
        self._clock = clock
        # Token estimates feed the budget's reservations and the rate limiter's token limits,
        # configured or learned from headers.
        self._estimate_tokens = (
            budget is not None or bool(rate_policy.limits()) or rate_policy.learn_from_headers
        )

    def __repr__(self) -> str:
        return f"<RequestPath {self._exchange!r} {self._tally!r}>"

    # -- preparing --------------------------------------------------------------------------

    def prepare(self, request: AnyRequest, mode: int) -> Prepared:
        """Build the HTTP request once; raise InvalidRequestError when the provider cannot.

        Args:
            request: The request.
            mode: :data:`~corral._exchange.CHAT` (embedding requests take their own mode
                whatever is asked), ``STREAM`` or ``OPEN_STREAM``.
        """
        caps = self._caps
        if isinstance(request, EmbeddingRequest):
            if caps.embeddings is None:
                raise InvalidRequestError(
                    f"request {request.id!r}: {caps.provider.name} has no embeddings API; "
                    f"send embedding requests through a provider that has one (OpenAI, Gemini)"
                )
            prepared = Prepared(request, caps.embeddings.build_embedding_request(request), EMBED)
            texts = [request.input] if isinstance(request.input, str) else request.input
            prepared.input_estimate = self._rate_policy.count_tokens("\n".join(texts))
            return prepared
        if mode == CHAT:
            prepared = Prepared(request, caps.provider.build_request(request), CHAT)
        else:
            assert caps.streaming is not None
            prepared = Prepared(request, caps.streaming.build_stream_request(request), mode)
        if self._estimate_tokens:
            prepared.input_estimate = self._rate_policy.count_tokens(request.prompt_text)
        prepared.max_output = request.max_tokens or 0
        return prepared

    # -- a batch's requests (Client.run and Client.stream) ----------------------------------

    async def execute(self, request: AnyRequest) -> Result:
        """Run one request of a batch; return its result. Expected failures are values."""
        try:
            prepared = self.prepare(request, CHAT)
        except InvalidRequestError as exc:
            return self._refused(request, exc)
        return await self.run(prepared)

    async def execute_streamed(self, request: AnyRequest) -> Result:
        """Run one request of a batch as a stream (embeddings are never streamed)."""
        try:
            prepared = self.prepare(request, STREAM)
        except InvalidRequestError as exc:
            return self._refused(request, exc)
        return await self.run(prepared)

    def _refused(self, request: AnyRequest, exc: InvalidRequestError) -> Failure:
        """Count a request the provider cannot take as started and failed; return its Failure."""
        self._tally.started += 1
        self._tally.failed += 1
        log.debug("request %s refused before sending: %s", request.id, exc)
        return Failure(request.id, ErrorInfo(ErrorKind.BAD_REQUEST, str(exc)), 0, 0.0)

    # -- one request, from start to settlement ----------------------------------------------

    async def run(self, prepared: Prepared) -> Result:
        """Run a whole request (not ``OPEN_STREAM``) through its life; return its result."""
        state = self.begin(prepared)
        try:
            result: Result
            refused = await self.reserve(state)
            if refused is not None:
                result = refused
            else:
                outcome = await self.attempts(state)
                if isinstance(outcome, Failure):
                    result = outcome
                else:
                    assert not isinstance(outcome, EventReader)
                    result = self.finished(state, outcome)
            self.settle(state, result)
        finally:
            self.end(state)
        return result

    def begin(self, prepared: Prepared) -> RequestState:
        """Start a request: count it started and in flight. :meth:`end` must follow."""
        self._tally.started += 1
        self._tally.in_flight += 1
        return RequestState(self, prepared)

    async def reserve(self, state: RequestState) -> Failure | None:
        """Reserve the request's worst case from the budget; a Failure when it refuses.

        Also starts the request's clock: its deadline counts from here.
        """
        budget = self._budget
        if budget is not None:
            prepared = state.prepared
            request = prepared.request
            # A bound the provider cannot exceed, not the pacing estimate (see token_bounds).
            max_input, max_output = token_bounds(self._caps.provider, request, prepared.http)
            worst = self._pricing.worst_case_cost(request.model, max_input, max_output)
            tokens = max_input + (max_output or 0)
            reservation = None if budget.exhausted else await budget.reserve(worst, tokens)
            if reservation is None:
                return Failure(request.id, self._refusal(budget, worst, request.model), 0, 0.0)
            state.reservation = reservation
        self._start(state)
        return None

    def _refusal(self, budget: BudgetTracker, worst: float | None, model: str) -> ErrorInfo:
        policy = self._budget_policy
        if worst is None and policy is not None and policy.max_cost_usd is not None:
            why = (
                f"no known price for model {model!r} or no max_tokens, so its worst "
                f"case cannot be reserved under max_cost_usd; add a price with "
                f"Pricing.with_overrides() and set max_tokens"
            )
        else:
            why = f"the budget cannot fit this request ({budget.statistics()!r})"
        return ErrorInfo(ErrorKind.BUDGET_EXHAUSTED, why)

    def _start(self, state: RequestState) -> None:
        policy = self._retry
        start = state.start = self._clock()
        if policy.timeout is not None:
            state.deadline = start + policy.timeout
        # corral's own transport ends a whole attempt at its limit itself (the request's
        # "deadline" extension), which spares a cancel scope per attempt; other transports, and
        # streams (bounded only until their first delta), run the attempt inside one.
        if self._exchange.direct is not None and state.prepared.mode not in _STREAMED:
            state.extensions = state.prepared.http.extensions
        # `is not None`: an empty registry is falsy (it has a __len__) until its first circuit.
        if self._breakers is not None:
            state.breaker = self._breakers.get(self._caps.provider.endpoint)

    def finished(
        self, state: RequestState, value: Completion | EmbeddingResult
    ) -> Completion | EmbeddingResult:
        """Return *value* with its latency, attempt count and cost filled in."""
        request = state.prepared.request
        cost = self._pricing.cost(value.model or request.model, value.usage)
        return attrs.evolve(
            value, latency_s=self._clock() - state.start, attempts=state.count, cost_usd=cost
        )

    def settle(self, state: RequestState, result: Result) -> None:
        """Count the request's result, and settle its reservation with what it cost."""
        state.settled = True
        if isinstance(result, Failure):
            self._tally.failed += 1
        else:
            self._tally.succeeded += 1
        budget = self._budget
        reservation = state.reservation
        if reservation is None or budget is None:
            return
        if not isinstance(result, Failure):
            budget.settle(reservation, result.cost_usd, result.usage.total_tokens)
        else:
            # Each attempt that may have been billed was charged its worst case as it ended
            # (see attempt); what is still held was not spent.
            budget.release(reservation)

    def settle_stream(
        self, state: RequestState, completion: Completion | None
    ) -> Completion | None:
        """Settle a stream the caller read to its end (None: it failed after its first delta)."""
        if completion is None:
            state.settled = True
            self._tally.failed += 1
            if state.reservation is not None and self._budget is not None:
                self._budget.settle(state.reservation, None, state.reservation.tokens)
            return None
        request = state.prepared.request
        cost = self._pricing.cost(completion.model or request.model, completion.usage)
        if cost is not None:
            completion = attrs.evolve(completion, cost_usd=cost)
        self.settle(state, completion)
        return completion

    def end(self, state: RequestState) -> None:
        """Take the request out of flight; unsettled (cancelled), keep its worst case as spent."""
        self._tally.in_flight -= 1
        reservation = state.reservation
        if not state.settled and reservation is not None and self._budget is not None:
            # It may have been billed.
            self._budget.settle(reservation, None, reservation.tokens)

    # -- attempts and retries ---------------------------------------------------------------

    async def attempts(self, state: RequestState) -> Value | Failure:
        """Make the request's attempts under the retry policy; return its value or its Failure.

        The first attempt runs outside stamina: a success, the common case, then costs nothing
        more (see :meth:`retried` for a failure).
        """
        try:
            # Nothing awaited since the start was read: it is the time the attempt begins.
            return await self.attempt(state, state.start)
        except AttemptFailed as exc:
            return await self.retried(state, exc)
        except DeadlinePassed:
            return self._deadline_failure(state)

    async def retried(self, state: RequestState, first: AttemptFailed) -> Value | Failure:
        """Retry after the first attempt failed with *first*, as the policy says.

        The first failure is re-raised inside stamina's loop, so that stamina decides about it
        and sleeps its backoff like for any other attempt.
        """
        policy = self._retry
        if policy.attempts == 1 or state.retry_hook(first) is False:
            return self._failure(state, first)
        pending: AttemptFailed | None = first
        # Backoff sleeps count against the deadline too.
        with anyio.CancelScope(deadline=state.deadline):
            try:
                async for retry in stamina.retry_context(
                    on=state.retry_hook,
                    attempts=policy.attempts,
                    timeout=None,  # the deadline is enforced on anyio's clock
                    wait_initial=policy.wait_initial,
                    wait_max=policy.wait_max,
                    wait_jitter=policy.wait_jitter,
                    wait_exp_base=policy.wait_exp_base,
                ):
                    with retry:
                        if pending is not None:
                            failed, pending = pending, None
                            raise failed
                        log.debug(
                            "retrying %s (attempt %d)", state.prepared.request.id, state.count + 1
                        )
                        value = await self.attempt(state, None)
            except AttemptFailed as exc:
                return self._failure(state, exc)
            except DeadlinePassed:
                pass
            else:
                return value
        # The deadline passed: during an attempt, a wait to send, or a backoff sleep.
        return self._deadline_failure(state)

    def retry_hook(self, state: RequestState, exc: Exception) -> bool | float:
        """Tell stamina whether to retry after *exc*: no, yes, or yes after the server's hint."""
        if not isinstance(exc, AttemptFailed):
            return False
        state.last = exc
        if exc.final or not exc.info.retryable:
            return False
        hint = exc.info.retry_after_s
        if hint is None:
            return True
        policy = self._retry
        remaining = state.deadline - self._clock()
        if hint > policy.max_retry_after or hint >= remaining:
            limit = "max_retry_after" if hint > policy.max_retry_after else "the deadline"
            exc.gave_up = f"server asked to retry after {hint:g}s, beyond {limit}"
            return False
        return hint

    async def attempt(self, state: RequestState, now: float | None) -> Value:
        """Make one attempt, admitted, bounded and counted; return its value.

        Args:
            state: The request.
            now: The clock's reading, when the caller took it just now (the first attempt).
        """
        prepared = state.prepared
        reservation = state.reservation
        if reservation is not None and not reservation.held:
            await self._extend_budget(reservation)
        breaker = state.breaker
        rate = self._rate
        admission: Admission | None = None
        began = self._clock() if now is None else now
        permit = None
        if breaker is None:
            permit = rate.acquire_nowait(prepared.input_estimate, prepared.max_output, began)
        if permit is None:
            admission, permit = await self.wait_to_send(state)
            began = self._clock()
        state.count += 1
        self._tally.attempts += 1
        outcome: str | None = None  # the error kind's value; None for a success
        sent = True
        # The attempt's limit: the deadline, or request_timeout when that comes first. A stream
        # bounds only its wait for the first delta (in the exchange), never the reading of a
        # long answer. Waiting to send, above, is bounded by the deadline alone.
        deadline = state.deadline
        streamed = prepared.mode in _STREAMED
        limit = deadline if streamed else min(deadline, began + self._request_timeout)
        extensions = state.extensions
        try:
            if extensions is not None:
                extensions["deadline"] = limit
                try:
                    value = await self._exchange.exchange(prepared, state.start)
                except LimitReached:
                    self._timed_out(limit >= deadline)
            else:
                with anyio.CancelScope(deadline=limit) as scope:
                    value = await self._exchange.exchange(prepared, state.start)
                if scope.cancelled_caught:
                    self._timed_out(limit >= deadline)
            self._check_usage(prepared, value)
        except AttemptFailed as exc:
            outcome = exc.info.kind.value
            if reservation is not None and may_be_billed(exc.info, exc.__cause__):
                self._bill_attempt(reservation)
            self._after_refusal(permit, exc.info, prepared.request.id)
            raise
        except BaseException:
            if reservation is not None:
                self._bill_attempt(reservation)  # cut off after sending: it may be billed
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
        usage = getattr(value, "usage", None)
        if usage is None:
            rate.settle(permit, None, None)
        else:
            rate.settle(permit, usage.input_tokens, usage.output_tokens)
        return value

    async def wait_to_send(self, state: RequestState) -> tuple[Admission | None, Permit]:
        """Wait for the circuit and the rate limiter to admit an attempt, until the deadline."""
        breaker = state.breaker
        prepared = state.prepared
        admission: Admission | None = None
        with anyio.CancelScope(deadline=state.deadline):
            if breaker is not None:
                admission = await breaker.admit()
                if admission is None:
                    stats = breaker.statistics()
                    raise AttemptFailed(
                        ErrorInfo(
                            ErrorKind.CIRCUIT_OPEN,
                            f"circuit for {self._caps.provider.endpoint} is "
                            f"{stats.state.value}; not sent",
                            retry_after_s=stats.time_until_half_open or None,
                        ),
                        final=True,
                    )
            try:
                verdict = await self._rate.admit(
                    prepared.input_estimate, prepared.max_output, state.deadline
                )
            except BaseException:
                if breaker is not None and admission is not None:
                    breaker.release(admission)
                raise
            if isinstance(verdict, ErrorInfo):
                # A known pause or limit that this request cannot wait out: fail now, unsent.
                if breaker is not None and admission is not None:
                    breaker.release(admission)
                raise AttemptFailed(verdict, final=True)
            return admission, verdict
        # The deadline passed while waiting (the scope swallowed it after the release above).
        raise DeadlinePassed

    def _bill_attempt(self, reservation: Reservation) -> None:
        assert self._budget is not None
        self._budget.bill_attempt(reservation)

    async def _extend_budget(self, reservation: Reservation) -> None:
        """Hold another worst case before a retry, or fail the request as budget_exhausted."""
        budget = self._budget
        assert budget is not None
        if not await budget.extend(reservation):
            why = f"the budget cannot fit another attempt ({budget.statistics()!r})"
            raise AttemptFailed(ErrorInfo(ErrorKind.BUDGET_EXHAUSTED, why), final=True)

    def _check_usage(self, prepared: Prepared, value: object) -> None:
        """Refuse an answer whose usage no provider could bill: it is an invalid response."""
        usage = getattr(value, "usage", None)  # None for a stream's opening (checked at its end)
        if usage is not None:
            problem = usage_problem(self._caps.provider, prepared.request, prepared.http, usage)
            if problem is not None:
                info = ErrorInfo(ErrorKind.INVALID_RESPONSE, problem, status_code=200)
                raise AttemptFailed(info, final=True)

    def _timed_out(self, deadline_passed: bool) -> NoReturn:
        """Raise what an attempt's expired limit means: the deadline, or a retryable timeout."""
        if deadline_passed:
            raise DeadlinePassed
        raise AttemptFailed(
            ErrorInfo(
                ErrorKind.TIMEOUT,
                f"attempt took longer than request_timeout={self._request_timeout:g}s",
                retryable=True,
            )
        )

    def _after_refusal(self, permit: Permit, info: ErrorInfo, key: str) -> None:
        rate = self._rate
        if info.status_code == 429 and info.kind is ErrorKind.RATE_LIMITED:
            # A refused request used no tokens; the limiter decides whether the refusal pauses
            # every worker or only this request (which the retry hook delays by its hint).
            rate.refused(permit, info.retry_after_s, key)
        elif info.status_code is not None:
            rate.settle(permit, 0, 0)
        else:
            rate.settle(permit, None, None)

    # -- failures ---------------------------------------------------------------------------

    def _failure(self, state: RequestState, last: AttemptFailed) -> Failure:
        info = last.info
        if last.gave_up is not None:
            info = attrs.evolve(info, message=f"{info.message} ({last.gave_up})")
        info = state.prepared.redacted(info)
        request_id = state.prepared.request.id
        log.debug("request %s failed: %s", request_id, info.kind.value)
        return Failure(request_id, info, state.count, self._clock() - state.start)

    def _deadline_failure(self, state: RequestState) -> Failure:
        last = state.last
        detail = f"; last error: {last.info.message}" if last is not None else ""
        info = ErrorInfo(
            ErrorKind.TIMEOUT,
            f"deadline of {self._retry.timeout:g}s passed after {state.count} attempt(s){detail}",
            status_code=last.info.status_code if last is not None else None,
            retryable=True,
            retry_after_s=last.info.retry_after_s if last is not None else None,
        )
        info = state.prepared.redacted(info)
        request = state.prepared.request
        return Failure(request.id, info, state.count, self._clock() - state.start)
