"""Spend limits: reserve the worst case before sending, settle with the truth afterwards.

The invariant, checked by the property tests under any interleaving of workers:

    settled spend + outstanding reservations <= limit

so the settled spend alone never exceeds the budget. A reservation holds one attempt's worst
case: the most the provider can bill for it (its input bounded by the body's bytes, see
`corral.providers`, and ``max_tokens`` of output). Each attempt that may have been billed (a
timeout, a broken connection, a 2xx whose answer was unusable) keeps its worst case as spent
(`BudgetTracker.bill_attempt`), and the next attempt holds a worst case of its own
(`BudgetTracker.extend`) or is not sent. A settlement never charges more than its
reservation: a reported cost above it is a server's error (counted in ``overruns``), charged
as the worst case. A request that cannot fit
even once every outstanding reservation is released marks the budget **exhausted**: from then
on nothing new is reserved, and the client returns ``budget_exhausted`` failures for every
remaining input. A request that could fit once in-flight requests settle waits for them
(`BudgetTracker.reserve`) instead of giving up early.

Money is counted in whole nano-dollars (``int``), rounded against the budget (reservations and
spend up, the limit down), so float error can neither creep past the limit nor make a property
test flaky.
"""

from __future__ import annotations

import enum
import math
from typing import Any, Final

import anyio
import anyio.lowlevel
import attrs

from .._errors import check_number
from .._models import Usage

__all__ = ["Budget", "BudgetStatistics"]

#: The most tokens any usage field may report; far beyond any context window (see
#: ``corral.providers``' token counts, which refuse larger ones).
_MAX_TOKENS: Final = 1 << 40

_NANO: Final = 1_000_000_000


def _nano_up(usd: float) -> int:
    """Return the fewest nano-dollars that are at least `usd`."""
    n = math.ceil(usd * _NANO)
    while n / _NANO < usd:  # at most a step or two: the product above may round down
        n += 1
    return n


def _nano_down(usd: float) -> int:
    """Return the most nano-dollars that are at most `usd`."""
    n = math.floor(usd * _NANO)
    while n / _NANO > usd:
        n -= 1
    return n


_MAX_USD: Final = 1e15


def _optional_non_negative(inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    check_number(
        value,
        f"Budget.{attribute.name}",
        minimum=0,
        # Dollars are counted in nano-dollars: keep that count within a float's range.
        maximum=None if attribute.name == "max_tokens" else _MAX_USD,
        integer=attribute.name == "max_tokens",
        optional=True,
    )


@attrs.frozen
class Budget:
    """The most a client may spend, in dollars and in tokens. Unset limits do not apply.

    Args:
        max_cost_usd: The most USD to spend, computed with the client's `corral.Pricing`.
        max_tokens: The most tokens (input plus output) to use.
    """

    max_cost_usd: float | None = attrs.field(default=None, validator=_optional_non_negative)
    max_tokens: int | None = attrs.field(default=None, validator=_optional_non_negative)


class Verdict(enum.Enum):
    """Whether a reservation fits a budget."""

    #: It fits now.
    FITS = "fits"
    #: It does not fit now, but would once outstanding reservations settle or are released.
    WAIT = "wait"
    #: It can never fit, or the budget is exhausted already.
    NEVER = "never"
    #: Its cost is unknown (no price for the model) and the budget limits cost.
    UNPRICED = "unpriced"


class Reservation:
    """Money and tokens held for one request's current attempt until it is settled or released.

    Args:
        cost_nano: One attempt's worst-case cost in nano-dollars.
        tokens: One attempt's worst-case tokens.
    """

    __slots__ = ("_done", "_held", "billed_attempts", "cost_nano", "tokens")

    def __init__(self, cost_nano: int, tokens: int) -> None:
        self.cost_nano = cost_nano
        self.tokens = tokens
        #: Attempts charged at their worst case already (`BudgetTracker.bill_attempt`).
        self.billed_attempts = 0
        self._held = True
        self._done = False

    @property
    def cost_usd(self) -> float:
        """One attempt's worst-case cost in USD."""
        return self.cost_nano / _NANO

    @property
    def held(self) -> bool:
        """Whether a worst case is held for an attempt (False once billed, until extended)."""
        return self._held and not self._done

    @property
    def done(self) -> bool:
        """Whether the reservation was settled or released already."""
        return self._done

    def __repr__(self) -> str:
        return (
            f"<Reservation ${self.cost_usd:.6f} tokens={self.tokens} held={self._held}"
            f" billed_attempts={self.billed_attempts} done={self._done}>"
        )


@attrs.frozen
class BudgetStatistics:
    """A snapshot of a `BudgetTracker`.

    Args:
        max_cost_usd: The cost limit, or None.
        max_tokens: The token limit, or None.
        spent_usd: Settled spend.
        spent_tokens: Settled tokens.
        reserved_usd: Held by requests in flight.
        reserved_tokens: Tokens held by requests in flight.
        in_flight: Outstanding reservations.
        exhausted: Whether the budget stopped admitting requests.
        refused: Reservations refused (never fitting, or after exhaustion).
        overruns: Settlements whose real cost exceeded their reservation.
    """

    max_cost_usd: float | None
    max_tokens: int | None
    spent_usd: float
    spent_tokens: int
    reserved_usd: float
    reserved_tokens: int
    in_flight: int
    exhausted: bool
    refused: int
    overruns: int

    @property
    def remaining_usd(self) -> float | None:
        """The cost still free (neither spent nor reserved), or None without a cost limit."""
        if self.max_cost_usd is None:
            return None
        return max(self.max_cost_usd - self.spent_usd - self.reserved_usd, 0.0)


class BudgetTracker:
    """Hold a `Budget` across concurrent requests: reserve, then settle or release.

    The client calls, per request (before its first attempt):

    1. ``reservation = await tracker.reserve(worst_case_usd, worst_case_tokens)``, the worst
       case of one attempt; None means the request is not sent: it fails as
       ``budget_exhausted`` (and once `exhausted` is true, so does every remaining input);
    2. per attempt that may have been billed and did not succeed,
       ``tracker.bill_attempt(reservation)``; before any further attempt,
       ``await tracker.extend(reservation)``, which holds another worst case or returns False
       (then the request fails as ``budget_exhausted`` instead of overspending);
    3. ``tracker.settle(reservation, cost_usd, tokens)`` with the last attempt's real cost and
       tokens, or ``tracker.release(reservation)`` if it spent nothing (never sent, answered
       with an error status). Both are idempotent and keep what `bill_attempt` charged; call
       one of them in a ``finally`` block.

    Args:
        policy: The limits.
    """

    __slots__ = (
        "_changed",
        "_exhausted",
        "_in_flight",
        "_limit_nano",
        "_overruns",
        "_policy",
        "_refused",
        "_reserved_nano",
        "_reserved_tokens",
        "_spent_nano",
        "_spent_tokens",
    )

    def __init__(self, policy: Budget) -> None:
        self._policy = policy
        cost = policy.max_cost_usd
        self._limit_nano = None if cost is None else _nano_down(cost)
        self._spent_nano = 0
        self._spent_tokens = 0
        self._reserved_nano = 0
        self._reserved_tokens = 0
        self._in_flight = 0
        self._exhausted = False
        self._refused = 0
        self._overruns = 0
        self._changed: anyio.Event | None = None

    @property
    def policy(self) -> Budget:
        """The limits this tracker holds."""
        return self._policy

    @property
    def exhausted(self) -> bool:
        """Whether the budget has stopped admitting requests for good."""
        return self._exhausted

    def check(self, cost_usd: float | None, tokens: int = 0) -> Verdict:
        """Say whether a request of this worst case would fit, without reserving anything.

        Args:
            cost_usd: The request's worst-case cost, or None if it has no known price.
            tokens: The request's worst-case tokens (input estimate plus ``max_tokens``).
        """
        if self._exhausted:
            return Verdict.NEVER
        tokens = max(int(tokens), 0)
        cost_nano = 0
        if self._limit_nano is not None:
            if cost_usd is None or not math.isfinite(cost_usd):
                return Verdict.UNPRICED
            cost_nano = _nano_up(max(cost_usd, 0.0))
        return self._verdict(cost_nano, tokens)

    def _verdict(self, cost_nano: int, tokens: int) -> Verdict:
        if self._exhausted:
            return Verdict.NEVER
        if self._limit_nano is not None and self._spent_nano + cost_nano > self._limit_nano:
            return Verdict.NEVER
        limit_tokens = self._policy.max_tokens
        if limit_tokens is not None and self._spent_tokens + tokens > limit_tokens:
            return Verdict.NEVER
        if self._limit_nano is not None and (
            self._spent_nano + self._reserved_nano + cost_nano > self._limit_nano
        ):
            return Verdict.WAIT
        if limit_tokens is not None and (
            self._spent_tokens + self._reserved_tokens + tokens > limit_tokens
        ):
            return Verdict.WAIT
        return Verdict.FITS

    def try_reserve(self, cost_usd: float | None, tokens: int = 0) -> Reservation | None:
        """Reserve a request's worst case if it fits now, else return None; never waits.

        A request that can never fit marks the budget exhausted. One that might fit later
        (``Verdict.WAIT``) or has no known price under a cost limit (``Verdict.UNPRICED``) gets
        None without exhausting anything; `check` tells which.

        Args:
            cost_usd: The request's worst-case cost, or None if it has no known price.
            tokens: The request's worst-case tokens (input estimate plus ``max_tokens``).
        """
        verdict = self.check(cost_usd, tokens)
        if verdict is Verdict.FITS:
            cost_nano = 0 if cost_usd is None else _nano_up(max(cost_usd, 0.0))
            reservation = Reservation(cost_nano, max(int(tokens), 0))
            self._reserved_nano += reservation.cost_nano
            self._reserved_tokens += reservation.tokens
            self._in_flight += 1
            return reservation
        if verdict is Verdict.NEVER:
            self._refused += 1
            if not self._exhausted:
                self._exhausted = True
                self._wake()
        elif verdict is Verdict.UNPRICED:
            self._refused += 1
        return None

    async def reserve(self, cost_usd: float | None, tokens: int = 0) -> Reservation | None:
        """Reserve a request's worst case, waiting while in-flight requests may free room.

        Returns None when the request can never fit (the budget is then exhausted) or has no
        known price under a cost limit.

        Args:
            cost_usd: The request's worst-case cost, or None if it has no known price.
            tokens: The request's worst-case tokens (input estimate plus ``max_tokens``).
        """
        await anyio.lowlevel.checkpoint_if_cancelled()
        while True:
            reservation = self.try_reserve(cost_usd, tokens)
            if reservation is not None:
                return reservation
            if self.check(cost_usd, tokens) is not Verdict.WAIT:
                return None
            if self._changed is None:
                self._changed = anyio.Event()
            await self._changed.wait()

    def bill_attempt(self, reservation: Reservation) -> None:
        """Keep an attempt's worst case as spent: it ended in a way the provider may bill.

        A timeout or a broken connection after sending, or a 2xx whose answer was unusable,
        may each have been billed in full, so each keeps its worst case even if the request
        is retried. The reservation then holds nothing until `extend`. Does nothing when
        nothing is held (already billed, settled or released).

        Args:
            reservation: The request's reservation.
        """
        if not reservation.held:
            return
        reservation._held = False  # noqa: SLF001
        reservation.billed_attempts += 1
        self._reserved_nano -= reservation.cost_nano
        self._reserved_tokens -= reservation.tokens
        self._spent_nano += reservation.cost_nano
        self._spent_tokens += reservation.tokens
        self._check_exhausted()
        self._wake()

    def try_extend(self, reservation: Reservation) -> Verdict:
        """Hold another worst case for a request's next attempt if it fits now; never waits.

        Returns `Verdict.FITS` when the reservation holds a worst case (already, or now).
        `Verdict.NEVER` (the budget is then exhausted) means the attempt must not be sent.

        Args:
            reservation: The request's reservation, billed for its last attempt.
        """
        if reservation.done:
            return Verdict.NEVER
        if reservation._held:  # noqa: SLF001
            return Verdict.FITS
        verdict = self._verdict(reservation.cost_nano, reservation.tokens)
        if verdict is Verdict.FITS:
            reservation._held = True  # noqa: SLF001
            self._reserved_nano += reservation.cost_nano
            self._reserved_tokens += reservation.tokens
        elif verdict is Verdict.NEVER:
            self._refused += 1
            if not self._exhausted:
                self._exhausted = True
                self._wake()
        return verdict

    async def extend(self, reservation: Reservation) -> bool:
        """Hold another worst case for a request's next attempt, waiting while it may fit later.

        Returns False when it can never fit (the budget is then exhausted): the attempt is not
        sent. A request waiting here holds nothing, so waiting cannot deadlock.

        Args:
            reservation: The request's reservation, billed for its last attempt.
        """
        await anyio.lowlevel.checkpoint_if_cancelled()
        while True:
            verdict = self.try_extend(reservation)
            if verdict is not Verdict.WAIT:
                return verdict is Verdict.FITS
            if self._changed is None:
                self._changed = anyio.Event()
            await self._changed.wait()

    def _finish(self, reservation: Reservation) -> bool:
        if reservation._done:  # noqa: SLF001
            return False
        reservation._done = True  # noqa: SLF001
        if reservation._held:  # noqa: SLF001
            self._reserved_nano -= reservation.cost_nano
            self._reserved_tokens -= reservation.tokens
        self._in_flight -= 1
        return True

    def settle(self, reservation: Reservation, cost_usd: float | None, tokens: int) -> None:
        """Release a reservation and add what its last attempt spent; a repeat does nothing.

        A cost of None (no known price, or a request cancelled mid-attempt) is charged as the
        worst case. A real cost or token count above the reservation cannot be a real bill (the
        reservation is the most the provider can charge): it is counted in ``overruns`` and
        charged as the worst case. Attempts billed already (`bill_attempt`) stay spent; when
        the reservation holds nothing, nothing more is charged.

        Args:
            reservation: The reservation from `reserve` or `try_reserve`.
            cost_usd: The last attempt's real cost, or None if unknown.
            tokens: The last attempt's real tokens (input plus output).
        """
        held = reservation.held
        if not self._finish(reservation):
            return
        if held:
            if cost_usd is None or not math.isfinite(cost_usd):
                cost_nano = reservation.cost_nano
            elif cost_usd > _MAX_USD:
                cost_nano = reservation.cost_nano + 1  # an overrun, whatever its size
            else:
                cost_nano = _nano_up(max(cost_usd, 0.0))
            tokens = max(int(tokens), 0)
            # Tokens are bounded by the reservation only under a token limit (else unreserved).
            over_tokens = self._policy.max_tokens is not None and tokens > reservation.tokens
            if cost_nano > reservation.cost_nano or over_tokens:
                self._overruns += 1
                cost_nano = min(cost_nano, reservation.cost_nano)
                if over_tokens:
                    tokens = reservation.tokens
            self._spent_nano += cost_nano
            self._spent_tokens += tokens
            self._check_exhausted()
        self._wake()

    def _check_exhausted(self) -> None:
        limit_tokens = self._policy.max_tokens
        if (self._limit_nano is not None and self._spent_nano >= self._limit_nano) or (
            limit_tokens is not None and self._spent_tokens >= limit_tokens
        ):
            self._exhausted = True

    def release(self, reservation: Reservation) -> None:
        """Give back what a reservation holds unspent (its last attempt was not billed).

        Attempts billed already (`bill_attempt`) stay spent. Idempotent.

        Args:
            reservation: The reservation from `reserve` or `try_reserve`.
        """
        if self._finish(reservation):
            self._wake()

    def _wake(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    def statistics(self) -> BudgetStatistics:
        """Return a snapshot of spend, reservations and refusals."""
        return BudgetStatistics(
            max_cost_usd=self._policy.max_cost_usd,
            max_tokens=self._policy.max_tokens,
            spent_usd=self._spent_nano / _NANO,
            spent_tokens=self._spent_tokens,
            reserved_usd=self._reserved_nano / _NANO,
            reserved_tokens=self._reserved_tokens,
            in_flight=self._in_flight,
            exhausted=self._exhausted,
            refused=self._refused,
            overruns=self._overruns,
        )

    def __repr__(self) -> str:
        limit = self._policy
        return (
            f"<BudgetTracker spent=${self._spent_nano / _NANO:.6f}"
            f" of {limit.max_cost_usd!r} tokens={self._spent_tokens} of {limit.max_tokens!r}"
            f" in_flight={self._in_flight} exhausted={self._exhausted}>"
        )


def implausible_usage(usage: Usage, max_input: int | None, max_output: int | None) -> str | None:
    """Say why a reported usage cannot be a real bill, or return None when it can be.

    A provider cannot bill more input tokens than the request's bound, nor more output tokens
    than ``max_tokens`` allows; a count beyond any context window is a server's error too.

    Args:
        usage: The usage the server reported.
        max_input: The request's input-token bound, or None when not known.
        max_output: The request's output-token bound, or None when unbounded.
    """
    counts = (usage.input_tokens, usage.output_tokens, usage.cached_input_tokens)
    if max(counts) > _MAX_TOKENS or usage.cache_write_tokens > _MAX_TOKENS:
        return f"the server reported an impossible usage ({usage!r})"
    if max_input is not None and usage.input_tokens > max_input:
        return (
            f"the server reported {usage.input_tokens} input tokens, more than the request can "
            f"hold ({max_input})"
        )
    if max_output is not None and usage.output_tokens > max_output:
        return (
            f"the server reported {usage.output_tokens} output tokens, more than max_tokens "
            f"allows ({max_output})"
        )
    return None
