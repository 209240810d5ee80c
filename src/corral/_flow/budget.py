"""Spend limits: reserve the worst case before sending, settle with the truth afterwards.

The invariant, checked by the property tests under any interleaving of workers:

    settled spend + outstanding reservations <= limit

so the settled spend alone never exceeds the budget, as long as each request's real cost stays
within its reservation (a worst case computed from ``max_tokens``). A request that cannot fit
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

__all__ = ["Budget", "BudgetStatistics"]

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
    """Money and tokens held for one request until it is settled or released.

    Args:
        cost_nano: The reserved cost in nano-dollars.
        tokens: The reserved tokens.
    """

    __slots__ = ("_done", "cost_nano", "tokens")

    def __init__(self, cost_nano: int, tokens: int) -> None:
        self.cost_nano = cost_nano
        self.tokens = tokens
        self._done = False

    @property
    def cost_usd(self) -> float:
        """The reserved cost in USD."""
        return self.cost_nano / _NANO

    @property
    def done(self) -> bool:
        """Whether the reservation was settled or released already."""
        return self._done

    def __repr__(self) -> str:
        return f"<Reservation ${self.cost_usd:.6f} tokens={self.tokens} done={self._done}>"


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

    1. ``reservation = await tracker.reserve(worst_case_usd, worst_case_tokens)``; None means
       the request is not sent: it fails as ``budget_exhausted`` (and once `exhausted` is
       true, so does every remaining input);
    2. ``tracker.settle(reservation, cost_usd, tokens)`` with the real cost and tokens, or
       ``tracker.release(reservation)`` if nothing was spent (never sent, failed without
       usage). Both are idempotent; call one of them in a ``finally`` block.

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
            if self._spent_nano + cost_nano > self._limit_nano:
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

    def _finish(self, reservation: Reservation) -> bool:
        if reservation._done:
            return False
        reservation._done = True
        self._reserved_nano -= reservation.cost_nano
        self._reserved_tokens -= reservation.tokens
        self._in_flight -= 1
        return True

    def settle(self, reservation: Reservation, cost_usd: float | None, tokens: int) -> None:
        """Release a reservation and add what the request really spent; a repeat does nothing.

        A cost of None (no known price) is charged as the reservation. A real cost above the
        reservation is recorded as spent all the same (and counted in ``overruns``); if that
        leaves no room, the budget is exhausted.

        Args:
            reservation: The reservation from `reserve` or `try_reserve`.
            cost_usd: The request's real cost, or None if unknown.
            tokens: The request's real tokens (input plus output).
        """
        if not self._finish(reservation):
            return
        if cost_usd is None or not math.isfinite(cost_usd):
            cost_nano = reservation.cost_nano
        else:
            cost_nano = _nano_up(max(cost_usd, 0.0))
        tokens = max(int(tokens), 0)
        if cost_nano > reservation.cost_nano or tokens > reservation.tokens:
            self._overruns += 1
        self._spent_nano += cost_nano
        self._spent_tokens += tokens
        limit_tokens = self._policy.max_tokens
        if (self._limit_nano is not None and self._spent_nano >= self._limit_nano) or (
            limit_tokens is not None and self._spent_tokens >= limit_tokens
        ):
            self._exhausted = True
        self._wake()

    def release(self, reservation: Reservation) -> None:
        """Give a reservation back unspent (never sent, or failed without usage); idempotent.

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
