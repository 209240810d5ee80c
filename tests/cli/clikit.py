"""Helpers for the CLI tests: input files, record files and running ``corral`` in a subprocess."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import Process

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "questions.jsonl"


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


def write_input(path: Path, n: int, *, prefix: str = "q") -> list[str]:
    """Write an input of *n* arithmetic questions, synced; return their ids."""
    ids = [f"{prefix}{i}" for i in range(n)]
    with open(path, "w", encoding="utf-8") as f:
        for i, cid in enumerate(ids):
            f.write(batch_line(cid, f"What is {i} + {i}?") + "\n")
        f.flush()
        os.fsync(f.fileno())
    return ids


def complete_records(path: Path) -> list[dict[str, Any]]:
    """Parse the complete lines of a record file; a torn last line (no newline) is skipped."""
    if not path.exists():
        return []
    records = []
    for line in path.read_bytes().splitlines(keepends=True):
        if line.endswith(b"\n") and line.strip():
            records.append(json.loads(line))
    return records


def ids_of(path: Path) -> list[str]:
    """Return the custom_ids of the complete records of a file."""
    return [r["custom_id"] for r in complete_records(path)]


def child_env() -> dict[str, str]:
    """Return an environment for a corral subprocess: a fake key, unbuffered output."""
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    env["PYTHONUNBUFFERED"] = "1"
    env["OPENAI_API_KEY"] = "sk-test"  # the mock server accepts any non-empty key
    return env


def corral_command(*args: str | Path) -> list[str]:
    """Return the argv that runs ``python -m corral ARGS`` with this interpreter."""
    return [sys.executable, "-m", "corral", *map(str, args)]


async def start(*args: str | Path) -> Process:
    """Start ``corral ARGS`` in a subprocess with piped output."""
    return await anyio.open_process(corral_command(*args), env=child_env())


async def finish(process: Process, within: float = 60) -> tuple[int, str, str]:
    """Wait for a subprocess; return its exit code, stdout and stderr."""
    out: list[bytes] = []
    err: list[bytes] = []

    async def drain(stream: Any, into: list[bytes]) -> None:
        if stream is None:
            return
        async for chunk in stream:
            into.append(chunk)

    with anyio.fail_after(within):
        async with anyio.create_task_group() as tg:
            tg.start_soon(drain, process.stdout, out)
            tg.start_soon(drain, process.stderr, err)
            await process.wait()
    await process.aclose()
    assert process.returncode is not None
    return process.returncode, b"".join(out).decode(), b"".join(err).decode()


def count_lines(path: Path) -> int:
    """Count the newline-terminated lines of a file (0 if it does not exist)."""
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


async def wait_until(predicate: Callable[[], bool], within: float = 10) -> None:
    """Poll *predicate* until it holds; fail after *within* seconds."""
    with anyio.fail_after(within):
        # The state watched (a file, a server's counters) offers no event to wait on.
        while not predicate():  # noqa: ASYNC110
            await anyio.sleep(0.005)
