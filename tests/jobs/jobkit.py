"""Helpers for the JSONL job tests: input files, record files and an in-process mock client."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2

import corral
from corral.providers import OpenAI
from corral.testing._mock.config import MockConfig
from corral.testing._mock.server import MockServer

BASE = "http://127.0.0.1/v1"


def batch_line(custom_id: str, content: str, *, model: str = "gpt-4o-mini") -> str:
    """Return one OpenAI Batch input line."""
    return json.dumps(
        {
            "custom_id": custom_id,
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": model,
                "messages": [{"role": "user", "content": content}],
                "max_tokens": 16,
            },
        }
    )


def write_lines(path: Path, lines: Iterable[str]) -> Path:
    """Write *lines* as a JSONL file, synced, and return its path."""
    with open(path, "w", encoding="utf-8") as f:
        for line in lines:
            f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())
    return path


def write_input(path: Path, n: int, *, prefix: str = "q") -> list[str]:
    """Write an input of *n* arithmetic questions; return their ids in file order."""
    ids = [f"{prefix}{i}" for i in range(n)]
    write_lines(path, (batch_line(cid, f"What is {i} + {2 * i}?") for i, cid in enumerate(ids)))
    return ids


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Read every line of a JSONL file (missing file: no lines)."""
    if not path.exists():
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def ids_of(path: Path) -> list[str]:
    """Return the custom_ids of a record file, in file order."""
    return [r["custom_id"] for r in read_jsonl(path)]


def answers(path: Path) -> dict[str, str]:
    """Join a record file on custom_id: id -> the answer's text."""
    return {
        r["custom_id"]: r["response"]["body"]["choices"][0]["message"]["content"]
        for r in read_jsonl(path)
    }


@asynccontextmanager
async def mock_client(
    server: MockServer | None = None,
    *,
    concurrency: int = 8,
    attempts: int = 1,
    **knobs: Any,
) -> AsyncIterator[corral.Client]:
    """Open a Client whose requests an in-process MockServer answers."""
    app = server if server is not None else MockServer(MockConfig(**knobs))
    async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app)) as http:
        client = corral.Client(
            OpenAI(BASE, api_key="sk-test"),
            max_concurrency=concurrency,
            retry=corral.RetryPolicy(attempts=attempts, timeout=30),
            http_client=http,
        )
        async with client:
            yield client


def hits_by_id(server: MockServer, ids: Sequence[str]) -> dict[str, int]:
    """Return the server's hit count for each id."""
    return {cid: server.hits_for(cid) for cid in ids}


async def wait_until(predicate: Callable[[], bool], within: float = 10) -> None:
    """Poll *predicate* until it holds; fail after *within* seconds."""
    with anyio.fail_after(within):
        # The state watched (a file, a server's counters) offers no event to wait on.
        while not predicate():  # noqa: ASYNC110
            await anyio.sleep(0.005)


def rewind_manifest(output: Path, records: int) -> None:
    """Make the manifest count only the first *records* output records, as a crash leaves it.

    A crash after syncing some records and before the next checkpoint leaves a manifest that
    counts fewer records than the output holds: simulate it after cutting the output by hand.
    """
    path = Path(str(output) + ".manifest.json")
    data = json.loads(path.read_text())
    kept = output.read_bytes().splitlines(keepends=True)[:records]
    data["files"]["output_records"] = records
    data["files"]["output_bytes"] = sum(len(line) for line in kept)
    path.write_text(json.dumps(data))
