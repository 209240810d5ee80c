"""``corral run`` in a subprocess: Ctrl-C stops gracefully (exit 130) and a rerun resumes.

The mock server runs in the test's event loop on a loopback port, so its hit log shows exactly
what each run sent. The subprocess runs on the same anyio backend as the test.
"""

from __future__ import annotations

import shlex
import signal
import sys
from pathlib import Path

import anyio
import pytest

from corral.testing._mock.config import MockConfig
from corral.testing._mock.server import MockServer
from corral.testing._serve import serve

from .clikit import (
    child_env,
    corral_command,
    count_lines,
    finish,
    ids_of,
    start,
    wait_until,
    write_input,
)

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals"),
]


async def _wait_for_lines(path: Path, n: int) -> None:
    await wait_until(lambda: count_lines(path) >= n, within=30)


def _resume_argv(stdout: str) -> list[str]:
    """Return the resume command the CLI printed, as argv for this interpreter."""
    lines = stdout.splitlines()
    index = next(i for i, line in enumerate(lines) if line.endswith("Resume with:"))
    argv = shlex.split(lines[index + 1])
    head = 3 if argv[:3] == ["python", "-m", "corral"] else 1
    return corral_command(*argv[head:])


async def test_sigint_stops_gracefully_then_the_printed_command_resumes(
    tmp_path: Path, anyio_backend_name: str
) -> None:
    """Ctrl-C: no new requests, in-flight ones recorded, exit 130; the resume command finishes."""
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    ids = write_input(inp, 40)
    server = MockServer(MockConfig(latency=(0.02, 0.06), seed=5))
    async with serve(server) as running:
        process = await start(
            "run",
            inp,
            "-o",
            out,
            "--base-url",
            running.url + "/v1",
            "--concurrency",
            "6",
            "--no-progress",
            "--backend",
            anyio_backend_name,
        )
        await _wait_for_lines(out, 5)
        process.send_signal(signal.SIGINT)
        code, stdout, stderr = await finish(process)
        assert code == 130, stderr
        assert "stopping" in stdout
        first = set(ids_of(out))
        assert 5 <= len(first) < 40
        sent = {cid for cid in ids if server.hits_for(cid)}
        assert sent == first, "requests in flight at Ctrl-C finished and were recorded"

        process = await anyio.open_process(_resume_argv(stdout), env=child_env())
        code, stdout, stderr = await finish(process)
        assert code == 0, stderr
    assert sorted(ids_of(out)) == sorted(ids)
    assert all(server.hits_for(cid) == 1 for cid in ids)


async def test_a_second_signal_cancels_at_once_and_keeps_the_output_valid(
    tmp_path: Path, anyio_backend_name: str
) -> None:
    """SIGTERM then Ctrl-C: in-flight requests are cancelled without waiting for the grace."""
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    ids = write_input(inp, 40)
    slow = MockServer(MockConfig(latency=lambda rng: 0.01 if rng.random() < 0.5 else 60.0))
    async with serve(slow) as running:
        process = await start(
            "run",
            inp,
            "-o",
            out,
            "--base-url",
            running.url + "/v1",
            "--concurrency",
            "8",
            "--no-progress",
            "--grace",
            "120",
            "--backend",
            anyio_backend_name,
        )
        await _wait_for_lines(out, 3)
        await wait_until(lambda: slow.statistics().in_flight >= 8, within=30)
        process.send_signal(signal.SIGTERM)
        await anyio.sleep(0.2)
        process.send_signal(signal.SIGINT)
        with anyio.fail_after(20):
            code, stdout, stderr = await finish(process)
    assert code == 130, stderr
    assert "stopping" in stdout, "SIGTERM is a graceful stop like the first Ctrl-C"
    assert "cancelling" in stdout
    partial = ids_of(out)
    assert len(partial) == len(set(partial)) < 40
    async with serve(MockServer()) as running:
        process = await start(
            "run", inp, "-o", out, "--base-url", running.url + "/v1", "--no-progress"
        )
        code, _, stderr = await finish(process)
    assert code == 0, stderr
    assert sorted(ids_of(out)) == sorted(ids)
