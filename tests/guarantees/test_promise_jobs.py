"""Promise: job output is exactly-once per ``custom_id`` across crashes; sends are at-least-once
within the documented window (at most ``max_concurrency`` sent and not yet written).

``tests/cli/test_cli_kill_resume.py`` kills ``corral run`` with SIGKILL at random points. This
test does the same in process, on both backends and under faults, by cancelling ``run_jsonl`` at
random moments and resuming, and checks the window after every interruption.
"""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import httpx2
import pytest

import corral
from corral.jobs._engine import run_jsonl
from corral.providers import OpenAI
from corral.testing import MockConfig, MockServer

pytestmark = pytest.mark.anyio

CONCURRENCY = 8


def write_input(path: Path, count: int) -> list[str]:
    ids = [f"j{i}" for i in range(count)]
    with open(path, "w", encoding="utf-8") as f:
        for i, cid in enumerate(ids):
            body = {
                "model": "gpt-4o-mini",
                "messages": [{"role": "user", "content": f"What is {i} + {i}?"}],
                "max_tokens": 8,
            }
            line = {"custom_id": cid, "method": "POST", "url": "/v1/chat/completions", "body": body}
            f.write(json.dumps(line) + "\n")
    return ids


def lines_of(*paths: Path) -> list[bytes]:
    """Return the complete lines of record files."""
    found = []
    for path in paths:
        if path.exists():
            found += [
                line for line in path.read_bytes().splitlines(keepends=True) if line[-1:] == b"\n"
            ]
    return found


def ids_of(*paths: Path) -> list[str]:
    """Return the custom_ids of the complete lines of record files."""
    return [json.loads(line)["custom_id"] for line in lines_of(*paths)]


@asynccontextmanager
async def client_for(server: MockServer) -> AsyncIterator[corral.Client]:
    async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app=server)) as http:
        client = corral.Client(
            OpenAI("http://mock/v1", api_key="sk-test"),
            max_concurrency=CONCURRENCY,
            retry=corral.RetryPolicy.none(),
            http_client=http,
        )
        async with client:
            yield client


@pytest.mark.parametrize("seed", range(2))
async def test_cancelled_jobs_resume_to_exactly_one_record_per_id(
    tmp_path: Path, seed: int
) -> None:
    """A job cancelled at random moments and resumed ends with one record per id; no id with a
    success record is sent again, and each run leaves at most max_concurrency sent unrecorded."""
    rng = random.Random(seed)
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    err = tmp_path / "out.errors.jsonl"
    ids = write_input(inp, 300)
    server = MockServer(
        MockConfig(latency=(0.002, 0.03), error_rates={500: 0.05}, drop_rate=0.03, seed=seed)
    )
    interrupted = 0
    for point in range(8):
        succeeded = set(ids_of(out))
        lines_before = set(lines_of(out, err))
        hits_before = {cid: server.hits_for(cid) for cid in ids}
        async with client_for(server) as client:
            if point < 7:
                with anyio.move_on_after(rng.uniform(0.01, 0.25)) as scope:
                    await run_jsonl(client, inp, out)
                interrupted += scope.cancelled_caught
            else:
                summary = await run_jsonl(client, inp, out, retry_failed=False)
        sent = {cid for cid in ids if server.hits_for(cid) > hits_before[cid]}
        # Exactly-once: an id with a success record is never sent again.
        assert not sent & succeeded
        recorded = ids_of(out, err)
        assert len(recorded) == len(set(recorded)), "an id was recorded twice"
        # The window: what this run sent and did not record is at most max_concurrency.
        new = {json.loads(line)["custom_id"] for line in lines_of(out, err)} - {
            json.loads(line)["custom_id"] for line in lines_before & set(lines_of(out, err))
        }
        lost = sent - new
        assert len(lost) <= CONCURRENCY, sorted(lost)
    assert interrupted >= 3  # the cancellations did land mid-job
    assert summary.exit_code in (0, 1)
    assert sorted(ids_of(out, err)) == sorted(ids)
