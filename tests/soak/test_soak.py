"""Soak: push many requests through ``Client.stream`` against a faulty mock server on a real port.

The mock (``corral.testing.MockServer`` served by ``serve()``) runs in a process of its own
(``soak_server.py``), so that on a 2-core machine the client and hypercorn each get a core. About
5% of attempts meet a fault, drawn per (request id, attempt) from a fixed seed, so a run is
reproducible whatever the interleaving:

- 1% 429 with a retry hint, 1% 500, 1% 503 with a retry hint;
- 1% connection reset (the mock drops the connection mid-response);
- 1% stall: the answer would come after 30 s, far past the client's ``request_timeout``.

Choices that keep the run short:

- The retry hint is 10 ms (``retry-after-ms: 10``; ``Retry-After`` itself can only say whole
  seconds). Each refused request waits out its hint, and a wave of 429s pauses *every* worker
  until it (the shared cooldown), so long hints would only make the run slower.
- ``request_timeout`` is 1 s, so a stall costs one slot for one second. Slots are not the
  bottleneck (the CPU is), so stalls cost almost no throughput. A spurious timeout on a loaded
  machine is only one more retry.
- Backoff is 10-100 ms, and 10 attempts make a request that meets only 5% faults succeed.
- stamina's retry hooks are off during the run: pytest keeps every log record it captures, which
  would count as memory the client never held.

Pass criteria, all asserted (after the summary is printed):

- every request succeeds and the result ids are exactly the input ids, each once;
- every fault kind was injected at least once, and each injected fault cost a retry;
- RSS grows less than 50 MB from the end of warm-up (the first 10% of results) to the end;
- open file descriptors while running stay within ``concurrency + 8`` of those before the
  client opened (the slack covers the event loop's own lazily opened fds), and are back to at
  most the count before once it closed;
- no ``ResourceWarning``, nor any other unraisable exception (warnings are errors; a leaked
  socket warns when collected, and ``gc.collect()`` runs at the end).

Parameters: ``CORRAL_SOAK_REQUESTS`` (required to collect this module, see ``conftest.py``;
``nox -s soak`` sets 100,000, ``nox -s soak_short`` 5,000), ``CORRAL_SOAK_CONCURRENCY``
(default 64) and ``CORRAL_SOAK_SEED`` (default 7).
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import anyio
import attrs
import pytest
import stamina.instrumentation

import corral
from corral.providers import OpenAI

REQUESTS = int(os.environ.get("CORRAL_SOAK_REQUESTS", "100000"))
CONCURRENCY = int(os.environ.get("CORRAL_SOAK_CONCURRENCY", "64"))
SEED = int(os.environ.get("CORRAL_SOAK_SEED", "7"))

REQUEST_TIMEOUT = 1.0
# Longer than any request can take (10 attempts of at most REQUEST_TIMEOUT, plus backoff).
PROGRESS_TIMEOUT = 60.0
WARM_UP = max(1, REQUESTS // 10)
SAMPLES = 200
RSS_GROWTH_LIMIT_MB = 50.0
FD_SLACK = 8
FAULT_KINDS = ("429", "500", "503", "drop", "stall")
MOCK_CONFIG: dict[str, Any] = {
    "error_rates": {"429": 0.01, "500": 0.01, "503": 0.01},
    "retry_after": 0.01,
    "drop_rate": 0.01,
    "stall_rate": 0.01,
    "stall_seconds": 30.0,
    "seed": SEED,
}
RETRY = corral.RetryPolicy(
    attempts=10,
    timeout=120.0,
    wait_initial=0.01,
    wait_max=0.1,
    wait_jitter=0.01,
    max_retry_after=1.0,
)
SERVER_SCRIPT = Path(__file__).with_name("soak_server.py")

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="reads /proc for RSS and fds"),
    # A last resort: a stuck run fails sooner, on PROGRESS_TIMEOUT. The bound is generous
    # because a machine shared with other work can run the soak several times slower.
    pytest.mark.timeout(300 + REQUESTS // 50),
]


class SoakServer:
    """The mock server's process: where it listens, and how to stop it and read its report."""

    __slots__ = ("_process", "_report", "port")

    def __init__(self, process: subprocess.Popen[str], port: int) -> None:
        self._process = process
        self._report: dict[str, Any] | None = None
        self.port = port

    def __repr__(self) -> str:
        return f"<SoakServer port={self.port} pid={self._process.pid}>"

    def stop(self) -> dict[str, Any]:
        """Stop the server gracefully and return what it saw (see ``soak_server.py``)."""
        if self._report is None:
            stdin, stdout = _pipes(self._process)
            stdin.write("stop\n")
            stdin.close()
            line = stdout.readline()
            self._process.wait(timeout=30)
            if not line:
                pytest.fail(f"the soak server exited with {self._process.returncode}, no report")
            self._report = json.loads(line)
        return self._report


def _pipes(process: subprocess.Popen[str]) -> tuple[IO[str], IO[str]]:
    assert process.stdin is not None
    assert process.stdout is not None
    return process.stdin, process.stdout


@pytest.fixture
def soak_server() -> Iterator[SoakServer]:
    """Run the faulty mock server in its own process for one test."""
    command = [sys.executable, str(SERVER_SCRIPT), json.dumps(MOCK_CONFIG)]
    with subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as p:
        try:
            line = _pipes(p)[1].readline()
            if not line:
                pytest.fail(f"the soak server exited with {p.wait()} before listening")
            yield SoakServer(p, json.loads(line)["port"])
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()


def _rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS line in /proc/self/status")


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _requests(count: int) -> Iterator[corral.ChatRequest]:
    # A generator: the input is read lazily, never held whole.
    for index in range(count):
        yield corral.ChatRequest(
            model="gpt-4o-mini",
            messages=[corral.Message("user", f"What is {index} + {2 * index}?")],
            max_tokens=16,
            id=f"soak-{index}",
        )


@contextlib.contextmanager
def _strict_warnings() -> Iterator[list[str]]:
    """Turn warnings into errors and collect unraisable exceptions (a leaked socket's warning)."""
    caught: list[str] = []
    previous = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        what = f"{unraisable.exc_type.__name__}: {unraisable.exc_value}"
        caught.append(f"{what} ({unraisable.object!r})")

    sys.unraisablehook = hook
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            yield caught
            gc.collect()
    finally:
        sys.unraisablehook = previous


@contextlib.contextmanager
def _no_retry_hooks() -> Iterator[None]:
    hooks = stamina.instrumentation.get_on_retry_hooks()
    stamina.instrumentation.set_on_retry_hooks([])
    try:
        yield
    finally:
        stamina.instrumentation.set_on_retry_hooks(hooks)


@attrs.define
class Tally:
    """What the consumer saw: each id once, and samples of RSS and fds along the way."""

    seen: bytearray = attrs.field(repr=False)
    received: int = 0
    duplicates: list[str] = attrs.field(factory=list)
    foreign: list[str] = attrs.field(factory=list)
    failures: list[str] = attrs.field(factory=list)
    rss_warm: float = 0.0
    rss_peak_after_warm: float = 0.0
    fds_max: int = 0

    def add(self, result: corral.Result) -> None:
        """Count one result, checking its id against the inputs."""
        self.received += 1
        index = _index(result.id)
        if index is None or index >= len(self.seen):
            self.foreign.append(result.id)
        elif self.seen[index]:
            self.duplicates.append(result.id)
        else:
            self.seen[index] = 1
        if isinstance(result, corral.Failure) and len(self.failures) < 10:
            self.failures.append(f"{result.id}: {result.error.kind.value} {result.error.message}")

    def sample(self) -> None:
        """Record RSS and the fd count now."""
        self.fds_max = max(self.fds_max, _fds())
        rss = _rss_mb()
        if self.received >= WARM_UP:
            if not self.rss_warm:
                self.rss_warm = rss
            self.rss_peak_after_warm = max(self.rss_peak_after_warm, rss)


def _index(request_id: str) -> int | None:
    prefix, _, number = request_id.partition("-")
    return int(number) if prefix == "soak" and number.isdigit() else None


async def test_soak_stream_under_faults(
    soak_server: SoakServer, anyio_backend: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each request succeeds once through 5% faults, in bounded memory and fds, without leaks."""
    every = max(1, REQUESTS // SAMPLES)
    tally = Tally(bytearray(REQUESTS))
    provider = OpenAI(base_url=f"http://127.0.0.1:{soak_server.port}/v1", api_key="sk-soak")
    with _strict_warnings() as unraisable, _no_retry_hooks():
        gc.collect()
        fds_before = _fds()
        rss_start = _rss_mb()
        began = time.perf_counter()
        cpu_began = time.process_time()
        stuck = ""
        client = corral.Client(
            provider, max_concurrency=CONCURRENCY, request_timeout=REQUEST_TIMEOUT, retry=RETRY
        )
        async with client, client.stream(_requests(REQUESTS)) as results:
            while True:
                with anyio.move_on_after(PROGRESS_TIMEOUT) as waiting:
                    try:
                        result = await anext(results)
                    except StopAsyncIteration:
                        break
                if waiting.cancelled_caught:
                    stuck = f"{tally.received} results, then none for {PROGRESS_TIMEOUT:g} s:"
                    stuck += f" {client.statistics()!r}"
                    break
                tally.add(result)
                if tally.received % every == 0 or tally.received == WARM_UP:
                    tally.sample()
            statistics = results.statistics()
        wall = time.perf_counter() - began
        cpu = time.process_time() - cpu_began
        del client, results
        gc.collect()
        fds_after = _fds()
        rss_end = _rss_mb()
    report = soak_server.stop()
    if stuck:
        pytest.fail(stuck)
    faults = report["outcomes"]
    missing = tally.seen.count(0)
    growth = tally.rss_peak_after_warm - tally.rss_warm
    with capsys.disabled():
        print(
            f"\ncorral soak [{anyio_backend}]: {REQUESTS} requests, concurrency {CONCURRENCY},"
            f" seed {SEED}\n"
            f"  results: {statistics.succeeded} ok, {statistics.failed} failed,"
            f" {len(tally.duplicates)} duplicated, {missing} missing;"
            f" retries {statistics.retries}, attempts {statistics.attempts}\n"
            f"  faults seen by the server: "
            + " ".join(f"{kind}={faults.get(kind, 0)}" for kind in FAULT_KINDS)
            + f"; server hits {report['hits']}, 200s {faults.get('200', 0)}\n"
            f"  wall {wall:.1f} s ({REQUESTS / wall:.0f} requests/s); CPU: client {cpu:.1f} s"
            f" ({cpu / REQUESTS * 1e3:.2f} ms/request), server process {report['cpu_s']:.1f} s\n"
            f"  RSS MB: start {rss_start:.1f}, after warm-up {tally.rss_warm:.1f},"
            f" peak after warm-up {tally.rss_peak_after_warm:.1f}, end {rss_end:.1f}"
            f" (growth {growth:.1f})\n"
            f"  fds: before {fds_before}, max during {tally.fds_max}, after {fds_after}"
        )

    assert not tally.failures, tally.failures
    assert not tally.duplicates, tally.duplicates[:10]
    assert not tally.foreign, tally.foreign[:10]
    assert missing == 0, f"{missing} inputs got no result"
    assert tally.received == statistics.succeeded == REQUESTS
    assert all(faults.get(kind, 0) > 0 for kind in FAULT_KINDS), f"a fault never happened: {faults}"
    assert statistics.retries >= sum(faults.get(kind, 0) for kind in FAULT_KINDS), faults
    assert growth < RSS_GROWTH_LIMIT_MB
    assert tally.fds_max <= fds_before + CONCURRENCY + FD_SLACK
    assert fds_after <= fds_before
    assert not unraisable, unraisable
