"""A circuit breaker per provider endpoint: closed, open, half-open.

The state machine is sans-IO (`_BreakerState` takes ``now`` in every method); `Breaker` adds
the anyio clock and the waiting of ``wait=True``; `BreakerRegistry` keeps one `Breaker` per
endpoint, created on first use.

Rules:

- **closed**: every request is admitted. ``failure_threshold`` *consecutive* counted failures
  open the circuit. A success resets the count; ignored outcomes leave it alone.
- **open**: nothing is admitted (zero network hits) until ``reset_timeout`` seconds after the
  circuit opened; then it turns half-open.
- **half-open**: at most ``half_open_probes`` requests (probes) are admitted at a time. A probe
  that succeeds closes the circuit; one that fails opens it again for another
  ``reset_timeout``; one whose outcome does not count (a 4xx, a 429, a cancellation) frees its
  slot for the next probe.

Only failures that say the upstream is unwell count: 5xx, 529 and other overload answers,
connection errors and timeouts (`outcome_for_kind` maps error kinds). Cancellation never counts:
the client releases the admission in a ``finally`` block, so a cancelled probe cannot leave the
breaker stuck half-open. Releasing and recording are idempotent.

Results of requests admitted under an earlier state (for example a slow request sent before the
circuit opened) are ignored: each state change starts a new *generation*, and an admission only
counts within its own.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Mapping
from typing import Any

import anyio
import anyio.lowlevel
import attrs

from .._errors import KIND_POLICIES, check_number, check_type

__all__ = ["BreakerState", "BreakerStatistics", "CircuitBreaker"]


class BreakerState(enum.StrEnum):
    """The state of one circuit."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class Outcome(enum.Enum):
    """What an admitted request's result means to the breaker."""

    #: The upstream answered properly: closes a half-open circuit, resets the failure count.
    SUCCESS = "success"
    #: A counted upstream failure: 5xx, 529, connection error or timeout.
    FAILURE = "failure"
    #: Neither (4xx, 429, cancellation, a request never sent): the breaker only frees the slot.
    IGNORED = "ignored"


def outcome_for_kind(kind: str | None) -> Outcome:
    """Return the breaker outcome for a request that ended with error `kind` (None: success).

    Counted failures are ``server_error``, ``overloaded``, ``timeout`` and ``connection`` (the
    ``breaker`` column of ``corral._errors.KIND_POLICIES``); every other kind
    (``rate_limited``, ``bad_request``, ...) is ignored.

    Args:
        kind: The `corral.ErrorKind` of the failure (or its string value), None for a success.
    """
    if kind is None:
        return Outcome.SUCCESS
    return Outcome.FAILURE if KIND_POLICIES[kind].breaker else Outcome.IGNORED


def _positive_int(inst: object, attribute: attrs.Attribute[int], value: int) -> None:
    check_number(value, f"CircuitBreaker.{attribute.name}", minimum=1, integer=True)


def _positive_float(inst: object, attribute: attrs.Attribute[float], value: float) -> None:
    check_number(value, f"CircuitBreaker.{attribute.name}", minimum=0, above=True)


def _boolean(inst: object, attribute: attrs.Attribute[bool], value: bool) -> None:
    check_type(value, f"CircuitBreaker.{attribute.name}", bool, "True or False")


@attrs.frozen
class CircuitBreaker:
    """When to stop sending to an endpoint that keeps failing, and when to try again.

    Args:
        failure_threshold: Consecutive counted failures that open the circuit.
        reset_timeout: Seconds the circuit stays open before it lets probes through.
        half_open_probes: The most probes in flight at once while half-open.
        wait: Whether a request that finds the circuit open waits for it to close (bounded by
            the request's own deadline) instead of failing at once as ``circuit_open``.
    """

    failure_threshold: int = attrs.field(default=20, validator=_positive_int)
    reset_timeout: float = attrs.field(default=30.0, validator=_positive_float)
    half_open_probes: int = attrs.field(default=1, validator=_positive_int)
    wait: bool = attrs.field(default=False, validator=_boolean)


class Admission:
    """Permission to send one request through a breaker; record its outcome exactly once.

    Args:
        probe: Whether this request is a half-open probe.
        generation: The breaker state generation it was admitted in.
    """

    __slots__ = ("_done", "generation", "probe")

    def __init__(self, probe: bool, generation: int) -> None:
        self.probe = probe
        self.generation = generation
        self._done = False

    @property
    def done(self) -> bool:
        """Whether the outcome was recorded (or the admission released) already."""
        return self._done

    def __repr__(self) -> str:
        kind = "probe" if self.probe else "request"
        return f"<Admission {kind} generation={self.generation} done={self._done}>"


@attrs.frozen
class BreakerStatistics:
    """A snapshot of one circuit.

    Args:
        state: The current state.
        consecutive_failures: Counted failures since the last success.
        opened: Times the circuit opened.
        rejected: Requests refused (failed fast as ``circuit_open``).
        admitted: Requests admitted.
        probes_in_flight: Half-open probes not yet finished.
        time_until_half_open: Seconds until an open circuit lets probes through (0 otherwise).
        successes: Outcomes recorded as successes.
        failures: Outcomes recorded as counted failures.
        waiting: Requests waiting for the circuit (``wait=True``).
    """

    state: BreakerState
    consecutive_failures: int
    opened: int
    rejected: int
    admitted: int
    probes_in_flight: int
    time_until_half_open: float
    successes: int
    failures: int
    waiting: int = 0


class _BreakerState:
    """The sans-IO state machine of one circuit; every method takes the current time."""

    __slots__ = (
        "_policy",
        "admitted",
        "consecutive_failures",
        "failures",
        "generation",
        "opened",
        "opened_at",
        "probes_in_flight",
        "rejected",
        "state",
        "successes",
    )

    def __init__(self, policy: CircuitBreaker) -> None:
        self._policy = policy
        self.state = BreakerState.CLOSED
        self.generation = 0
        self.consecutive_failures = 0
        self.opened_at = -math.inf
        self.probes_in_flight = 0
        self.opened = 0
        self.rejected = 0
        self.admitted = 0
        self.successes = 0
        self.failures = 0

    def _enter(self, state: BreakerState, now: float) -> None:
        self.state = state
        self.generation += 1
        self.probes_in_flight = 0
        if state is BreakerState.OPEN:
            self.opened_at = now
            self.opened += 1
        elif state is BreakerState.CLOSED:
            self.consecutive_failures = 0

    def time_until_half_open(self, now: float) -> float:
        """Return seconds until an open circuit admits probes; 0 when it is not open."""
        if self.state is not BreakerState.OPEN:
            return 0.0
        return max(self.opened_at + self._policy.reset_timeout - now, 0.0)

    def current_state(self, now: float) -> BreakerState:
        """Return the state, turning an open circuit half-open once its timeout has passed."""
        if self.state is BreakerState.OPEN and self.time_until_half_open(now) == 0.0:
            self._enter(BreakerState.HALF_OPEN, now)
        return self.state

    def admit(self, now: float) -> Admission | None:
        """Admit one request, or return None if the circuit refuses it now."""
        state = self.current_state(now)
        if state is BreakerState.CLOSED:
            self.admitted += 1
            return Admission(False, self.generation)
        if state is BreakerState.HALF_OPEN and (
            self.probes_in_flight < self._policy.half_open_probes
        ):
            self.probes_in_flight += 1
            self.admitted += 1
            return Admission(True, self.generation)
        return None

    def record(self, admission: Admission, outcome: Outcome, now: float) -> bool:
        """Record an admitted request's outcome; return whether waiters may now get in."""
        if admission._done:  # noqa: SLF001
            return False
        admission._done = True  # noqa: SLF001
        if outcome is Outcome.SUCCESS:
            self.successes += 1
        elif outcome is Outcome.FAILURE:
            self.failures += 1
        if admission.generation != self.generation:
            return False
        if admission.probe:
            self.probes_in_flight -= 1
            if outcome is Outcome.SUCCESS:
                self._enter(BreakerState.CLOSED, now)
            elif outcome is Outcome.FAILURE:
                self._enter(BreakerState.OPEN, now)
            return True
        if outcome is Outcome.SUCCESS:
            self.consecutive_failures = 0
        elif outcome is Outcome.FAILURE:
            self.consecutive_failures += 1
            if self.consecutive_failures >= self._policy.failure_threshold:
                self._enter(BreakerState.OPEN, now)
                return True
        return False

    def snapshot(self, now: float, waiting: int = 0) -> BreakerStatistics:
        """Return the statistics at `now`."""
        return BreakerStatistics(
            state=self.current_state(now),
            consecutive_failures=self.consecutive_failures,
            opened=self.opened,
            rejected=self.rejected,
            admitted=self.admitted,
            probes_in_flight=self.probes_in_flight,
            time_until_half_open=self.time_until_half_open(now),
            successes=self.successes,
            failures=self.failures,
            waiting=waiting,
        )


class Breaker:
    """The circuit of one endpoint, on the anyio clock.

    The client calls, per HTTP attempt (so a dead upstream stops retries too)::

        admission = await breaker.admit()
        if admission is None:
            ...  # fail as circuit_open, nothing sent
        outcome = Outcome.IGNORED
        try:
            ...  # send; set outcome = outcome_for_kind(error kind or None)
        finally:
            breaker.record(admission, outcome)

    Args:
        policy: When to open and when to probe.
        key: The endpoint this circuit guards (for reprs and statistics).
        clock: Returns the current time in seconds; defaults to `anyio.current_time`.
    """

    __slots__ = ("_changed", "_clock", "_policy", "_state", "_waiting", "key")

    def __init__(
        self,
        policy: CircuitBreaker,
        key: str = "",
        *,
        clock: Callable[[], float] = anyio.current_time,
    ) -> None:
        self._policy = policy
        self.key = key
        self._clock = clock
        self._state = _BreakerState(policy)
        self._changed: anyio.Event | None = None
        self._waiting = 0

    @property
    def policy(self) -> CircuitBreaker:
        """The policy of this circuit."""
        return self._policy

    @property
    def state(self) -> BreakerState:
        """The current state."""
        return self._state.current_state(self._clock())

    async def admit(self) -> Admission | None:
        """Admit one request, or return None when the circuit refuses it.

        With ``wait=False`` a refusal is immediate. With ``wait=True`` the caller waits until
        the circuit admits it: through the reset timeout, then behind the probes; a failed
        probe sends it back to waiting. Bound the wait with a cancel scope (the client's
        deadline does).
        """
        await anyio.lowlevel.checkpoint_if_cancelled()
        admission = self._state.admit(self._clock())
        if admission is not None:
            return admission
        if not self._policy.wait:
            self._state.rejected += 1
            return None
        self._waiting += 1
        try:
            while True:
                now = self._clock()
                admission = self._state.admit(now)
                if admission is not None:
                    return admission
                if self._changed is None:
                    self._changed = anyio.Event()
                delay = self._state.time_until_half_open(now)
                # Open: sleep out the timeout (or until something changes). Half-open with
                # every probe slot taken: wait for a probe to finish.
                with anyio.move_on_after(delay if delay > 0 else math.inf):
                    await self._changed.wait()
        finally:
            self._waiting -= 1

    def record(self, admission: Admission, outcome: Outcome) -> None:
        """Record what happened to an admitted request; a second call does nothing.

        Args:
            admission: The admission from `admit`.
            outcome: What the result means to the breaker.
        """
        if self._state.record(admission, outcome, self._clock()) and self._changed is not None:
            self._changed.set()
            self._changed = None

    def release(self, admission: Admission) -> None:
        """Give the admission back without an outcome (cancelled or never sent); idempotent.

        Args:
            admission: The admission from `admit`.
        """
        self.record(admission, Outcome.IGNORED)

    def statistics(self) -> BreakerStatistics:
        """Return a snapshot of this circuit."""
        return self._state.snapshot(self._clock(), self._waiting)

    def __repr__(self) -> str:
        state = self._state
        return (
            f"<Breaker {self.key!r} state={state.state.value}"
            f" consecutive_failures={state.consecutive_failures} opened={state.opened}>"
        )


class BreakerRegistry:
    """One `Breaker` per endpoint key (for example a provider's base URL), made on first use.

    Args:
        policy: The policy every circuit follows.
        clock: Returns the current time in seconds; defaults to `anyio.current_time`.
    """

    __slots__ = ("_breakers", "_clock", "_policy")

    def __init__(
        self, policy: CircuitBreaker, *, clock: Callable[[], float] = anyio.current_time
    ) -> None:
        self._policy = policy
        self._clock = clock
        self._breakers: dict[str, Breaker] = {}

    @property
    def policy(self) -> CircuitBreaker:
        """The policy every circuit follows."""
        return self._policy

    def get(self, key: str) -> Breaker:
        """Return the circuit for `key`, creating it closed if it is new.

        Args:
            key: The endpoint, for example ``"https://api.openai.com/v1"``.
        """
        breaker = self._breakers.get(key)
        if breaker is None:
            breaker = self._breakers[key] = Breaker(self._policy, key, clock=self._clock)
        return breaker

    def statistics(self) -> Mapping[str, BreakerStatistics]:
        """Return a snapshot of every circuit, by endpoint key."""
        return {key: breaker.statistics() for key, breaker in self._breakers.items()}

    def __len__(self) -> int:
        return len(self._breakers)

    def __repr__(self) -> str:
        states: dict[str, Any] = {k: b.state.value for k, b in self._breakers.items()}
        return f"<BreakerRegistry {self._policy!r} circuits={states}>"
