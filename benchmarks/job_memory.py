"""Peak memory and throughput of ``corral run`` over 10k, 100k and 1M lines.

A zero-latency server runs in its own process: by default a minimal keep-alive HTTP/1.1 server
that answers every request with the same chat completion (fast enough that the client is what is
measured), or with ``--server mock`` corral's own mock server (``corral mock-server --latency 0
--no-hit-log``), which is more faithful but much slower per request. Each job runs ``corral run``
in a fresh process, whose peak RSS is read from the kernel (``os.wait4``).

For scale, the same inputs also go through a naive client in the style most scripts use: read
every line, ``asyncio.gather`` one coroutine per request behind a semaphore, and write the
results at the end. Its memory grows with the input; corral's should not.

Usage::

    python benchmarks/job_memory.py                       # 10k and 100k lines
    python benchmarks/job_memory.py --sizes 10000,100000,1000000 --no-peer

Machines are noisy: compare the ratios printed at the end, not the absolute figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# The peer: what a hand-written batch script typically does (all coroutines created up front).
NAIVE_CLIENT = r"""
import asyncio, json, sys
import httpx2

async def main(path, out, base_url, concurrency):
    lines = [json.loads(line) for line in open(path)]
    semaphore = asyncio.Semaphore(concurrency)
    async with httpx2.AsyncClient(limits=httpx2.Limits(max_connections=concurrency)) as client:
        async def one(line):
            async with semaphore:
                response = await client.post(
                    base_url + "/chat/completions", json=line["body"],
                    headers={"authorization": "Bearer sk-bench"},
                )
                return {"custom_id": line["custom_id"], "response": response.json()}
        results = await asyncio.gather(*(one(line) for line in lines))
    with open(out, "w") as f:
        for result in results:
            f.write(json.dumps(result) + "\n")

asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
"""


# A zero-latency server: one canned OpenAI chat completion for every request, keep-alive.
RAW_SERVER = r"""
import asyncio, json, sys

BODY = json.dumps({
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 0, "model": "gpt-4o-mini",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "42"},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10},
}).encode()
RESPONSE = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
            + str(len(BODY)).encode() + b"\r\n\r\n" + BODY)

class Http(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
        self.buffer = b""

    def data_received(self, data):
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            length = 0
            for line in self.buffer[:end].split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(self.buffer) < end + 4 + length:
                return
            self.buffer = self.buffer[end + 4 + length:]
            self.transport.write(RESPONSE)

async def main():
    server = await asyncio.get_running_loop().create_server(Http, "127.0.0.1", 0, backlog=1024)
    port = server.sockets[0].getsockname()[1]
    print(f"listening on http://127.0.0.1:{port}", flush=True)
    await server.serve_forever()

asyncio.run(main())
"""


def write_input(path: Path, n: int) -> None:
    """Write *n* OpenAI Batch lines of small arithmetic questions."""
    with open(path, "w") as f:
        for i in range(n):
            body = {
                "model": "gpt-4o-mini",
                "messages": [{"role": "user", "content": f"What is {i} + {2 * i}?"}],
                "max_tokens": 16,
            }
            line = {
                "custom_id": f"q{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": body,
            }
            f.write(json.dumps(line, separators=(",", ":")) + "\n")


def start_server(kind: str) -> tuple[subprocess.Popen[str], str]:
    """Start a zero-latency server on a free port; return the process and its URL."""
    if kind == "raw":
        argv = [sys.executable, "-c", RAW_SERVER]
    else:
        argv = [
            sys.executable,
            "-m",
            "corral",
            "mock-server",
            "--port",
            "0",
            "--latency",
            "0",
            "--no-hit-log",
        ]
    server = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None
    line = server.stdout.readline()
    if "listening on " not in line:
        server.kill()
        raise RuntimeError(f"the server did not start: {line!r}")
    return server, line.split("listening on ", 1)[1].split()[0]


def measure(argv: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    """Run *argv*; return (wall seconds, peak RSS in MB, exit status)."""
    started = time.perf_counter()
    process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    # ru_maxrss is in kilobytes on Linux.
    return wall, usage.ru_maxrss / 1024, process.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument(
        "--server",
        choices=("raw", "mock"),
        default="raw",
        help="the zero-latency server: canned answers (raw) or corral's mock",
    )
    parser.add_argument("--no-peer", action="store_true", help="skip the naive gather client")
    parser.add_argument(
        "--peer-max",
        type=int,
        default=100_000,
        help="largest input given to the naive client (default 100000)",
    )
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    env = dict(os.environ, OPENAI_API_KEY="sk-bench")
    server, url = start_server(args.server)
    rows: list[tuple[str, int, float, float, float, int]] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for n in sizes:
                inp = Path(tmp) / f"in-{n}.jsonl"
                write_input(inp, n)
                out = Path(tmp) / f"out-{n}.jsonl"
                summary = Path(tmp) / f"summary-{n}.json"
                wall, rss, code = measure(
                    [
                        sys.executable,
                        "-m",
                        "corral",
                        "run",
                        str(inp),
                        "-o",
                        str(out),
                        "--base-url",
                        url + "/v1",
                        "--concurrency",
                        str(args.concurrency),
                        "--no-progress",
                        "--summary-json",
                        str(summary),
                    ],
                    env,
                )
                sending = json.loads(summary.read_text())["throughput_rps"] if code == 0 else 0.0
                rows.append(("corral run", n, rss, wall, sending, code))
                print(
                    f"corral run  {n:>9,} lines: peak RSS {rss:7.1f} MB, {wall:7.1f} s, "
                    f"{n / wall:7.0f} req/s overall, {sending:7.0f} req/s sending, exit {code}",
                    flush=True,
                )
                if not args.no_peer and n <= args.peer_max:
                    peer_out = Path(tmp) / f"peer-{n}.jsonl"
                    wall, rss, code = measure(
                        [
                            sys.executable,
                            "-c",
                            NAIVE_CLIENT,
                            str(inp),
                            str(peer_out),
                            url + "/v1",
                            str(args.concurrency),
                        ],
                        env,
                    )
                    rows.append(("naive gather", n, rss, wall, n / wall, code))
                    print(
                        f"naive gather {n:>8,} lines: peak RSS {rss:7.1f} MB, {wall:7.1f} s, "
                        f"{n / wall:7.0f} req/s overall, exit {code}",
                        flush=True,
                    )
                for path in (inp, out, summary):
                    path.unlink(missing_ok=True)
    finally:
        server.terminate()
        server.wait()
    print()
    print(f"{'client':<14}{'lines':>10}{'peak RSS MB':>13}{'vs smallest':>13}{'req/s':>9}")
    for client in ("corral run", "naive gather"):
        mine = [r for r in rows if r[0] == client]
        if not mine:
            continue
        base = mine[0][2]
        for _, n, rss, wall, _sending, _code in mine:
            print(f"{client:<14}{n:>10,}{rss:>13.1f}{rss / base:>12.2f}x{n / wall:>9.0f}")


if __name__ == "__main__":
    main()
