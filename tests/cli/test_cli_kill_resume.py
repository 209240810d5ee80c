"""Kill ``corral run`` with SIGKILL at random points and resume: nothing lost, nothing paid twice.

A job runs in a subprocess against a mock server served by this test (so the server's hit log
sees every request), and is killed at random moments, by time and by record count. Each kill is
followed by a resume of the same job; the last resume runs to completion. Then:

- every input ``custom_id`` appears exactly once across the output and errors files;
- no id that had a durable record when a run started was requested again by that run;
- the server saw at most ``N + kills * concurrency`` requests in all.

``CORRAL_KILL_POINTS`` sets the number of kill points (default 6; the ``kill_resume`` nox session
runs 50), split into jobs of at most six kills, one test each. ``CORRAL_KILL_SEED`` replays a
particular sequence. The children alternate between the
asyncio and trio backends when trio is installed.
"""

from __future__ import annotations

import importlib.util
import math
import os
import random
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest
from anyio.abc import Process

from corral.testing._mock.config import MockConfig
from corral.testing._mock.server import MockServer
from corral.testing._serve import serve

from .clikit import count_lines, finish, ids_of, start, wait_until, write_input

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals"),
]

KILL_POINTS = int(os.environ.get("CORRAL_KILL_POINTS", "6"))
SEED = int(os.environ.get("CORRAL_KILL_SEED", "20261127"))
KILLS_PER_JOB = 6
CONCURRENCY = 8
REQUESTS = 240
CHILD_BACKENDS = ["asyncio", "trio"] if importlib.util.find_spec("trio") else ["asyncio"]


@pytest.fixture
def anyio_backend() -> str:
    """Serve from asyncio only: the children already cover both backends."""
    return "asyncio"


def _written_or_exited(out: Path, target: int, process: Process) -> Callable[[], bool]:
    return lambda: count_lines(out) >= target or process.returncode is not None


def _recorded(out: Path, err: Path) -> list[str]:
    return ids_of(out) + ids_of(err)


async def _run_chain(tmp_path: Path, job: int, kill_points: int, rng: random.Random) -> None:
    inp, out, err = tmp_path / "in.jsonl", tmp_path / "out.jsonl", tmp_path / "out.errors.jsonl"
    ids = write_input(inp, REQUESTS, prefix=f"j{job}-")
    server = MockServer(MockConfig(latency=(0.005, 0.02), seed=job))
    kills = 0
    async with serve(server) as running:
        args = [
            "run",
            inp,
            "-o",
            out,
            "--base-url",
            running.url + "/v1",
            "--attempts",
            "1",
            "--concurrency",
            str(CONCURRENCY),
            "--no-progress",
        ]
        for point in range(kill_points + 1):
            durable = _recorded(out, err)
            before = {cid: server.hits_for(cid) for cid in durable}
            backend = CHILD_BACKENDS[(job + point) % len(CHILD_BACKENDS)]
            process = await start(*args, "--backend", backend)
            if point < kill_points:
                with anyio.fail_after(60):
                    if point % 2 == 0:
                        # By time: anywhere from interpreter start-up to mid-run.
                        await anyio.sleep(rng.uniform(0.2, 2.0))
                    else:
                        # By record count: soon after some more records are written.
                        target = count_lines(out) + rng.randint(1, 30)
                        await wait_until(_written_or_exited(out, target, process), within=60)
                if process.returncode is None:
                    process.send_signal(signal.SIGKILL)
                    kills += 1
            code, _, stderr = await finish(process)
            if point == kill_points:
                assert code == 0, stderr
            else:
                assert code in (0, -signal.SIGKILL), stderr
            after = {cid: server.hits_for(cid) for cid in durable}
            assert after == before, f"run {point} sent again an id that had a durable record"
            recorded = _recorded(out, err)
            assert len(recorded) == len(set(recorded)), "an id was recorded twice"
    assert sorted(_recorded(out, err)) == sorted(ids)
    total = server.statistics().total_hits
    assert total <= REQUESTS + kills * CONCURRENCY, (total, kills)


JOBS = math.ceil(KILL_POINTS / KILLS_PER_JOB)


@pytest.mark.parametrize("job", range(JOBS))
async def test_sigkill_at_random_points_then_resume(tmp_path: Path, job: int) -> None:
    """A job killed with SIGKILL at random points resumes to exactly one record per id."""
    points = min(KILLS_PER_JOB, KILL_POINTS - job * KILLS_PER_JOB)
    await _run_chain(tmp_path, job, points, random.Random(SEED + job))
