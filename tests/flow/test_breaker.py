"""The circuit breaker: its state machine as a model test, and racing anyio callers."""

from __future__ import annotations

import random
from typing import TypeVar

import anyio
import anyio.lowlevel
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corral._errors import ConfigurationError
from corral._flow.breaker import (
    Admission,
    Breaker,
    BreakerRegistry,
    BreakerState,
    CircuitBreaker,
    Outcome,
    _BreakerState,
    outcome_for_kind,
)

T = TypeVar("T")


def some(value: T | None) -> T:
    """Return `value`, failing the test if it is None."""
    assert value is not None
    return value


# --- the sans-IO state machine -------------------------------------------------------------


def test_consecutive_counted_failures_open_the_circuit() -> None:
    """Exactly failure_threshold consecutive counted failures open a closed circuit."""
    state = _BreakerState(CircuitBreaker(failure_threshold=3, reset_timeout=10))
    for _ in range(2):
        state.record(some(state.admit(0.0)), Outcome.FAILURE, 0.0)
    assert state.current_state(0.0) is BreakerState.CLOSED
    state.record(some(state.admit(0.0)), Outcome.FAILURE, 0.0)
    assert state.current_state(0.0) is BreakerState.OPEN
    assert state.admit(5.0) is None


def test_a_success_resets_the_count_and_ignored_outcomes_do_not() -> None:
    """Successes break a failure streak; 4xx, 429 and cancellations neither count nor reset."""
    state = _BreakerState(CircuitBreaker(failure_threshold=3))
    for outcome in [Outcome.FAILURE, Outcome.FAILURE, Outcome.SUCCESS, Outcome.FAILURE]:
        state.record(some(state.admit(0.0)), outcome, 0.0)
    assert state.consecutive_failures == 1
    for outcome in [Outcome.IGNORED, Outcome.FAILURE, Outcome.IGNORED, Outcome.FAILURE]:
        state.record(some(state.admit(0.0)), outcome, 0.0)
    assert state.current_state(0.0) is BreakerState.OPEN


def test_half_open_probe_success_closes_and_failure_reopens() -> None:
    """After the timeout one probe goes; its success closes, its failure reopens for longer."""
    state = _BreakerState(CircuitBreaker(failure_threshold=1, reset_timeout=10))
    state.record(some(state.admit(0.0)), Outcome.FAILURE, 0.0)
    assert state.admit(9.99) is None
    probe = state.admit(10.0)
    assert probe is not None
    assert probe.probe
    assert state.admit(10.0) is None  # one probe at a time
    state.record(probe, Outcome.FAILURE, 12.0)
    assert state.current_state(12.0) is BreakerState.OPEN
    assert state.time_until_half_open(12.0) == 10.0
    probe = some(state.admit(22.0))
    state.record(probe, Outcome.SUCCESS, 23.0)
    assert state.current_state(23.0) is BreakerState.CLOSED
    assert state.opened == 2


def test_stale_results_from_before_a_state_change_are_ignored() -> None:
    """A slow request sent while closed cannot close or reopen the circuit later."""
    state = _BreakerState(CircuitBreaker(failure_threshold=1, reset_timeout=10))
    slow = some(state.admit(0.0))
    state.record(some(state.admit(0.0)), Outcome.FAILURE, 0.0)
    state.record(slow, Outcome.SUCCESS, 1.0)
    assert state.current_state(1.0) is BreakerState.OPEN
    probe = some(state.admit(10.0))
    late = Admission(False, 0)
    state.record(late, Outcome.FAILURE, 10.5)
    assert state.current_state(10.5) is BreakerState.HALF_OPEN
    state.record(probe, Outcome.SUCCESS, 11.0)
    assert state.current_state(11.0) is BreakerState.CLOSED


def test_recording_twice_counts_once() -> None:
    """Recording or releasing an admission a second time changes nothing."""
    state = _BreakerState(CircuitBreaker(failure_threshold=2))
    admission = some(state.admit(0.0))
    state.record(admission, Outcome.FAILURE, 0.0)
    state.record(admission, Outcome.FAILURE, 0.0)
    assert state.consecutive_failures == 1
    assert admission.done


operations = st.lists(
    st.one_of(
        st.tuples(st.just("admit")),
        st.tuples(
            st.just("finish"),
            st.integers(min_value=0, max_value=1_000),
            st.sampled_from(list(Outcome)),
        ),
        st.tuples(st.just("advance"), st.floats(min_value=0.0, max_value=8.0)),
    ),
    max_size=150,
)


@settings(max_examples=150, deadline=None)
@given(
    st.integers(min_value=1, max_value=6),
    st.integers(min_value=1, max_value=4),
    operations,
)
def test_state_machine_invariants_hold_under_any_sequence(
    threshold: int, probes: int, ops: list[tuple[object, ...]]
) -> None:
    """Open admits nothing, half-open never exceeds its probes, opening needs the threshold."""
    policy = CircuitBreaker(failure_threshold=threshold, reset_timeout=5.0, half_open_probes=probes)
    state = _BreakerState(policy)
    now = 0.0
    outstanding: list[Admission] = []
    streak = 0  # counted failures in a row among closed-state results of the current generation
    for op in ops:
        before = state.current_state(now)
        if op[0] == "admit":
            admission = state.admit(now)
            if before is BreakerState.OPEN:
                assert admission is None, "admitted while open"
            if admission is not None:
                assert admission.probe == (state.state is BreakerState.HALF_OPEN)
                outstanding.append(admission)
        elif op[0] == "finish" and outstanding:
            index = int(op[1]) % len(outstanding)  # type: ignore[call-overload]
            admission = outstanding.pop(index)
            outcome = op[2]
            assert isinstance(outcome, Outcome)
            generation = state.generation
            state.record(admission, outcome, now)
            counts = admission.generation == generation and not admission.probe
            if counts and before is BreakerState.CLOSED:
                if outcome is Outcome.FAILURE:
                    streak += 1
                elif outcome is Outcome.SUCCESS:
                    streak = 0
            if before is BreakerState.CLOSED and state.state is BreakerState.OPEN:
                assert streak >= threshold, "opened before the threshold"
            if before is BreakerState.CLOSED and streak >= threshold:
                assert state.state is BreakerState.OPEN, "did not open at the threshold"
            if state.generation != generation:
                streak = 0
        elif op[0] == "advance":
            now += float(op[1])  # type: ignore[arg-type]
        live_probes = sum(1 for a in outstanding if a.probe and a.generation == state.generation)
        assert state.probes_in_flight == live_probes
        assert state.probes_in_flight <= probes


# --- the anyio adapter ---------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.virtual_time
async def test_outage_opens_with_no_hits_while_open_then_recovers() -> None:
    """Racing workers stop hitting a dead upstream, probe one at a time, and resume after."""
    breaker = Breaker(CircuitBreaker(failure_threshold=5, reset_timeout=10, half_open_probes=2))
    start = anyio.current_time()
    outage_end = 35.0
    hits: list[tuple[float, bool]] = []  # (time, probe)
    probes_now = 0
    peak_probes = 0
    rejected = 0
    rng = random.Random(7)

    async def worker() -> None:
        nonlocal probes_now, peak_probes, rejected
        while anyio.current_time() - start < 60.0:
            admission = await breaker.admit()
            if admission is None:
                rejected += 1
                await anyio.sleep(rng.uniform(0.1, 0.5))
                continue
            t = anyio.current_time() - start
            assert breaker.state is not BreakerState.OPEN
            hits.append((t, admission.probe))
            if admission.probe:
                probes_now += 1
                peak_probes = max(peak_probes, probes_now)
            outcome = Outcome.IGNORED
            try:
                await anyio.sleep(rng.uniform(0.5, 1.5))
                outcome = Outcome.FAILURE if t < outage_end else Outcome.SUCCESS
            finally:
                if admission.probe:
                    probes_now -= 1
                breaker.record(admission, outcome)

    async with anyio.create_task_group() as tg:
        for _ in range(20):
            tg.start_soon(worker)

    stats = breaker.statistics()
    assert peak_probes <= 2
    assert stats.state is BreakerState.CLOSED
    outage_hits = [t for t, _ in hits if t < outage_end]
    # The first failures plus what was already in flight, then only probes every 10 s.
    assert len(outage_hits) <= 5 + 20 + 2 * 4
    assert rejected > 0
    assert stats.rejected == rejected
    assert any(t >= outage_end for t, _ in hits)
    # Once recovered, the workers run freely again.
    assert sum(1 for t, _ in hits if t >= outage_end + 10) > 20


@pytest.mark.anyio
@pytest.mark.virtual_time
async def test_racing_callers_never_exceed_the_probe_limit() -> None:
    """Hundreds of callers racing at the half-open moment get at most half_open_probes slots."""
    breaker = Breaker(CircuitBreaker(failure_threshold=1, reset_timeout=1.0, half_open_probes=3))
    first = some(await breaker.admit())
    breaker.record(first, Outcome.FAILURE)
    await anyio.sleep(1.0)
    admitted: list[Admission] = []

    async def caller() -> None:
        await anyio.lowlevel.checkpoint()
        admission = await breaker.admit()
        if admission is not None:
            admitted.append(admission)

    async with anyio.create_task_group() as tg:
        for _ in range(300):
            tg.start_soon(caller)
    assert len(admitted) == 3
    assert all(a.probe for a in admitted)
    assert breaker.statistics().probes_in_flight == 3
    assert breaker.statistics().rejected == 297


@pytest.mark.anyio
@pytest.mark.virtual_time
async def test_a_cancelled_probe_releases_its_slot() -> None:
    """Cancelling the task holding the probe frees it: the circuit is never stuck half-open."""
    breaker = Breaker(CircuitBreaker(failure_threshold=1, reset_timeout=1.0))
    breaker.record(some(await breaker.admit()), Outcome.FAILURE)
    await anyio.sleep(1.0)

    async def probe_then_hang(task_status: anyio.abc.TaskStatus[None]) -> None:
        admission = some(await breaker.admit())
        try:
            task_status.started()
            await anyio.sleep_forever()
        finally:
            breaker.release(admission)

    async with anyio.create_task_group() as tg:
        await tg.start(probe_then_hang)
        assert await breaker.admit() is None  # the one probe slot is taken
        tg.cancel_scope.cancel()
    probe = await breaker.admit()
    assert probe is not None
    assert probe.probe
    breaker.record(probe, Outcome.SUCCESS)
    assert breaker.state is BreakerState.CLOSED


@pytest.mark.anyio
@pytest.mark.virtual_time
async def test_wait_true_waits_for_the_probe_then_proceeds() -> None:
    """With wait=True callers sit out the open time and the probe, then all get in."""
    breaker = Breaker(CircuitBreaker(failure_threshold=1, reset_timeout=10.0, wait=True))
    start = anyio.current_time()
    breaker.record(some(await breaker.admit()), Outcome.FAILURE)
    entered: list[tuple[float, bool]] = []

    async with anyio.create_task_group() as tg:
        # The first probe fails (reopening for 10 s), the second succeeds.
        fail_next = [True, False]

        async def any_caller() -> None:
            admission = await breaker.admit()
            assert admission is not None
            entered.append((anyio.current_time() - start, admission.probe))
            await anyio.sleep(1.0)
            failing = admission.probe and fail_next.pop(0)
            breaker.record(admission, Outcome.FAILURE if failing else Outcome.SUCCESS)

        for _ in range(20):
            tg.start_soon(any_caller)
    probes = [t for t, probe in entered if probe]
    assert probes == [pytest.approx(10.0), pytest.approx(21.0)]
    assert len(entered) == 20
    assert min(t for t, probe in entered if not probe) == pytest.approx(22.0)
    assert breaker.statistics().waiting == 0
    assert breaker.statistics().rejected == 0


@pytest.mark.anyio
@pytest.mark.virtual_time
async def test_wait_true_is_bounded_by_the_callers_deadline() -> None:
    """A waiting caller can be cancelled by its own deadline, leaving no waiter behind."""
    breaker = Breaker(CircuitBreaker(failure_threshold=1, reset_timeout=100.0, wait=True))
    breaker.record(some(await breaker.admit()), Outcome.FAILURE)
    with anyio.move_on_after(5.0) as scope:
        await breaker.admit()
    assert scope.cancelled_caught
    assert breaker.statistics().waiting == 0


@pytest.mark.anyio
async def test_registry_keeps_one_circuit_per_endpoint() -> None:
    """Each endpoint gets its own lazily created circuit; failures of one leave others closed."""
    registry = BreakerRegistry(CircuitBreaker(failure_threshold=1))
    assert len(registry) == 0
    down = registry.get("https://a.example/v1")
    assert registry.get("https://a.example/v1") is down
    down.record(some(await down.admit()), Outcome.FAILURE)
    up = registry.get("https://b.example/v1")
    assert await up.admit() is not None
    stats = registry.statistics()
    assert stats["https://a.example/v1"].state is BreakerState.OPEN
    assert stats["https://b.example/v1"].state is BreakerState.CLOSED
    assert stats["https://a.example/v1"].time_until_half_open > 0
    assert "open" in repr(registry)
    assert "https://a.example/v1" in repr(down)


@pytest.mark.parametrize(
    ("kind", "outcome"),
    [
        (None, Outcome.SUCCESS),
        ("server_error", Outcome.FAILURE),
        ("overloaded", Outcome.FAILURE),
        ("timeout", Outcome.FAILURE),
        ("connection", Outcome.FAILURE),
        ("rate_limited", Outcome.IGNORED),
        ("quota_exhausted", Outcome.IGNORED),
        ("bad_request", Outcome.IGNORED),
        ("authentication", Outcome.IGNORED),
        ("not_found", Outcome.IGNORED),
        ("conflict", Outcome.IGNORED),
        ("budget_exhausted", Outcome.IGNORED),
    ],
)
def test_only_upstream_failures_count(kind: str | None, outcome: Outcome) -> None:
    """5xx, overload, timeouts and connection errors count; 4xx and 429 never do."""
    assert outcome_for_kind(kind) is outcome


@pytest.mark.parametrize(
    "kwargs",
    [
        {"failure_threshold": 0},
        {"failure_threshold": 2.5},
        {"failure_threshold": True},
        {"reset_timeout": 0},
        {"reset_timeout": float("nan")},
        {"reset_timeout": "30"},
        {"half_open_probes": 0},
    ],
)
def test_invalid_policies_are_refused(kwargs: dict[str, object]) -> None:
    """Nonsense thresholds and timeouts raise ConfigurationError at construction."""
    with pytest.raises(ConfigurationError):
        CircuitBreaker(**kwargs)  # type: ignore[arg-type]
