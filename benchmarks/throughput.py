"""Throughput of corral's HTTP stack against its peers, on one loopback server.

Not a test: a script that prints requests per second, client CPU per request, and ratios
between clients measured in the same run. These machines are noisy: read medians and ratios.

What it runs:

- a zero-latency server answering OpenAI chat completions, in its own process (asyncio
  Protocol + httptools: no framework in the way), pinned to CPU 0 when there are two or more;
- each client in a fresh process pinned to CPU 1, for a bounded number of requests, after a
  warm-up round that is not timed:

  ``aiohttp``       raw aiohttp, ``asyncio.Semaphore`` + ``gather`` (asyncio only)
  ``openai``        the official openai SDK, ``max_retries=0`` (asyncio only)
  ``httpx2``        a raw ``httpx2.AsyncClient`` with its stock transport
  ``fast``          a raw ``httpx2.AsyncClient`` over ``corral.FastTransport``
  ``fast-direct``   ``FastTransport.handle_async_request`` with no client around it
  ``floor``         no HTTP library: one anyio TCP stream per worker, the request's bytes
                    written as they are, the answer parsed with httptools and decoded with
                    ``json.loads``; the least any Python client on anyio can do per request
  ``corral``        ``corral.Client.run``, the full pipeline (see CORRAL CLIENT HOOK below):
                    retries on, a rate limiter set far above the load, statistics collected
  ``corral-httpx``  the same with ``transport="httpx"``: httpx2's stock client and transport

The server's CPU use is sampled around every run and printed: near 100 % means the server,
not the client, was the limit and that row's figure is a floor.

The runs go in rounds (``--repeats`` of them): each round runs every client once, back to back.
A ratio between two clients is the median of their per-round ratios, so that each comparison
is between runs made under the same machine conditions. Within a round, the runs the targets
compare go side by side (aiohttp between corral on asyncio and on trio, in an order that flips
every other round), the other clients after them.

Usage::

    python benchmarks/throughput.py                          # the full matrix
    python benchmarks/throughput.py --quick                  # a smoke run
    python benchmarks/throughput.py --clients fast,aiohttp --concurrency 200,1000
    python benchmarks/throughput.py --latency-ms 50 --concurrency 50   # CPU per request
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

CLIENTS = (
    "aiohttp",
    "openai",
    "httpx2",
    "fast",
    "fast-direct",
    "floor",
    "corral",
    "corral-httpx",
)
ASYNCIO_ONLY = frozenset({"aiohttp", "openai"})
MODEL = "gpt-4o-mini"
PROMPT = [{"role": "user", "content": "What is 2 + 2? Answer with one number."}]
REQUEST_BODY = json.dumps({"model": MODEL, "messages": PROMPT, "max_tokens": 16}).encode()
COMPLETION = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "4"},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 17, "completion_tokens": 1, "total_tokens": 18},
        "system_fingerprint": "fp_bench",
    }
).encode()


def fast_transport(max_connections: int) -> Any:
    """Return a corral.FastTransport (from its private module until corral exports it)."""
    try:
        from corral import FastTransport
    except ImportError:
        from corral._transport.fast import FastTransport
    return FastTransport(max_connections=max_connections)


def raise_file_limit() -> None:
    """Allow a thousand sockets and more in this process."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def pin(cpu: int) -> None:
    """Keep this process on one CPU, when the machine has more than one."""
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, {cpu})


# The server.


def serve(port: int, latency_ms: float) -> None:
    """Answer chat completions on 127.0.0.1:*port* until killed."""
    import httptools

    raise_file_limit()
    pin(0)
    ok = (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
        b"x-request-id: req_bench\r\ncontent-length: %d\r\n\r\n%b" % (len(COMPLETION), COMPLETION)
    )
    missing = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"
    delay = latency_ms / 1000

    class Protocol(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            assert isinstance(transport, asyncio.Transport)
            self.transport = transport
            self.parser = httptools.HttpRequestParser(self)
            self.url = b""

        def data_received(self, data: bytes) -> None:
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserError:
                self.transport.close()

        def on_url(self, url: bytes) -> None:
            self.url = url

        def on_message_complete(self) -> None:
            answer = ok if self.url.endswith(b"/chat/completions") else missing
            if delay:
                asyncio.get_running_loop().call_later(delay, self._write, answer)
            else:
                self.transport.write(answer)

        def _write(self, data: bytes) -> None:
            if not self.transport.is_closing():
                self.transport.write(data)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Protocol, "127.0.0.1", port, backlog=8192)
        bound = server.sockets[0].getsockname()[1]
        print(f"PORT {bound}", flush=True)
        await server.serve_forever()

    asyncio.run(main())


# The clients. Each returns the number of failed requests.


async def drive(call: Callable[[], Awaitable[None]], concurrency: int, total: int) -> int:
    """Make *total* calls with *concurrency* workers (anyio: both backends); count failures."""
    import anyio

    remaining = total
    failures = 0

    async def worker() -> None:
        nonlocal remaining, failures
        while remaining > 0:
            remaining -= 1
            try:
                await call()
            except Exception:
                failures += 1

    async with anyio.create_task_group() as tg:
        for _ in range(min(concurrency, total)):
            tg.start_soon(worker)
    return failures


async def bench_httpx2(
    base: str, concurrency: int, rounds: list[int], *, fast: bool
) -> list[tuple[float, float, int]]:
    import httpx2

    url = base + "/chat/completions"
    headers = {"content-type": "application/json", "authorization": "Bearer x"}
    transport = fast_transport(concurrency) if fast else None
    limits = httpx2.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx2.AsyncClient(transport=transport, limits=limits, timeout=60) as client:

        async def call() -> None:
            response = await client.post(url, content=REQUEST_BODY, headers=headers)
            response.raise_for_status()
            response.json()

        return [await timed(drive(call, concurrency, n)) for n in rounds]


async def bench_fast_direct(
    base: str, concurrency: int, rounds: list[int]
) -> list[tuple[float, float, int]]:
    import httpx2

    url = httpx2.URL(base + "/chat/completions")
    headers = {"content-type": "application/json", "authorization": "Bearer x"}
    timeout = {"timeout": {"connect": 60.0, "read": 60.0, "write": 60.0, "pool": 60.0}}
    async with fast_transport(concurrency) as transport:

        async def call() -> None:
            request = httpx2.Request(
                "POST", url, content=REQUEST_BODY, headers=headers, extensions=timeout
            )
            response = await transport.handle_async_request(request)
            json.loads(await response.aread())
            if response.status_code != 200:
                raise RuntimeError(response.status_code)

        return [await timed(drive(call, concurrency, n)) for n in rounds]


async def bench_floor(
    base: str, concurrency: int, rounds: list[int]
) -> list[tuple[float, float, int]]:
    import anyio
    import httptools

    url = httptools.parse_url((base + "/chat/completions").encode())
    host, port = url.host.decode(), url.port or 80
    request = b"".join(
        [
            b"POST %b HTTP/1.1\r\nHost: %b:%d\r\n" % (url.path, url.host, port),
            b"content-type: application/json\r\nauthorization: Bearer x\r\n",
            b"content-length: %d\r\n\r\n%b" % (len(REQUEST_BODY), REQUEST_BODY),
        ]
    )

    class Answer:
        """httptools callbacks: the body of one response, and whether it is complete."""

        __slots__ = ("body", "complete")

        def __init__(self) -> None:
            self.body: list[bytes] = []
            self.complete = False

        def on_body(self, body: bytes) -> None:
            self.body.append(body)

        def on_message_complete(self) -> None:
            self.complete = True

    async def batch(total: int) -> int:
        remaining = total
        failures = 0

        async def worker() -> None:
            nonlocal remaining, failures
            answer = Answer()
            parser = httptools.HttpResponseParser(answer)
            async with await anyio.connect_tcp(host, port) as stream:
                while remaining > 0:
                    remaining -= 1
                    await stream.send(request)
                    while not answer.complete:
                        parser.feed_data(await stream.receive())
                    json.loads(b"".join(answer.body))
                    if parser.get_status_code() != 200:
                        failures += 1
                    answer.body.clear()
                    answer.complete = False

        async with anyio.create_task_group() as tg:
            for _ in range(min(concurrency, total)):
                tg.start_soon(worker)
        return failures

    return [await timed(batch(n)) for n in rounds]


async def bench_openai(
    base: str, concurrency: int, rounds: list[int]
) -> list[tuple[float, float, int]]:
    import openai

    client = openai.AsyncOpenAI(base_url=base, api_key="x", max_retries=0)
    try:

        async def call() -> None:
            await client.chat.completions.create(
                model=MODEL,
                messages=PROMPT,  # type: ignore[arg-type]
                max_tokens=16,
            )

        return [await timed(drive(call, concurrency, n)) for n in rounds]
    finally:
        await client.close()


async def bench_aiohttp(
    base: str, concurrency: int, rounds: list[int]
) -> list[tuple[float, float, int]]:
    import aiohttp

    url = base + "/chat/completions"
    headers = {"content-type": "application/json", "authorization": "Bearer x"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        semaphore = asyncio.Semaphore(concurrency)

        async def one() -> bool:
            async with semaphore:
                try:
                    async with session.post(url, data=REQUEST_BODY, headers=headers) as response:
                        response.raise_for_status()
                        await response.json()
                except Exception:
                    return False
            return True

        async def batch(n: int) -> int:
            # The usual aiohttp pattern: every coroutine created up front, a semaphore inside.
            done = await asyncio.gather(*(one() for _ in range(n)))
            return done.count(False)

        return [await timed(batch(n)) for n in rounds]


async def bench_corral(
    base: str, concurrency: int, rounds: list[int], *, stock: bool
) -> list[tuple[float, float, int]]:
    # ---- CORRAL CLIENT HOOK ------------------------------------------------------------------
    # The full pipeline: corral.Client.run over the OpenAI provider, retries on (the default
    # policy), a rate limiter configured far above the load (so it is consulted on every
    # request but never waits), and the batch statistics that run() always collects.
    import corral
    from corral.providers import OpenAI

    options: dict[str, Any] = {
        "max_concurrency": concurrency,
        "retry": corral.RetryPolicy(attempts=3),
        "rate_limit": corral.RateLimit(requests_per_minute=1e9, tokens_per_minute=1e12),
    }
    if stock:
        options["transport"] = "httpx"
    async with corral.Client(OpenAI(base_url=base, api_key="x"), **options) as client:

        async def batch(n: int) -> int:
            requests = (
                corral.ChatRequest(model=MODEL, messages=PROMPT, max_tokens=16) for _ in range(n)
            )
            result = await client.run(requests)
            return result.statistics.failed

        return [await timed(batch(n)) for n in rounds]
    # ---- END CORRAL CLIENT HOOK --------------------------------------------------------------


async def timed(work: Awaitable[int]) -> tuple[float, float, int]:
    """Return wall seconds, CPU seconds and failures of *work*."""
    wall, cpu = time.perf_counter(), time.process_time()
    failures = await work
    return time.perf_counter() - wall, time.process_time() - cpu, failures


def run_client(name: str, backend: str, base: str, concurrency: int, requests: int) -> None:
    """Run one client in this process and print its result as one JSON line."""
    import anyio

    raise_file_limit()
    pin(1)
    # Warm-up first (connections, imports, caches), then the timed round.
    rounds = [min(concurrency, requests), requests]

    async def main() -> list[tuple[float, float, int]]:
        if name == "aiohttp":
            return await bench_aiohttp(base, concurrency, rounds)
        if name == "openai":
            return await bench_openai(base, concurrency, rounds)
        if name in ("httpx2", "fast"):
            return await bench_httpx2(base, concurrency, rounds, fast=name == "fast")
        if name == "fast-direct":
            return await bench_fast_direct(base, concurrency, rounds)
        if name == "floor":
            return await bench_floor(base, concurrency, rounds)
        return await bench_corral(base, concurrency, rounds, stock=name == "corral-httpx")

    results = anyio.run(main, backend=backend)
    wall, cpu, failures = results[-1]
    print(json.dumps({"wall": wall, "cpu": cpu, "failures": failures, "requests": requests}))


# The orchestra.


def process_cpu(pid: int) -> float:
    """Return the CPU seconds a process has used so far (Linux), or NaN."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def round_order(plan: list[tuple[int, str, str]], round_number: int) -> list[tuple[int, str, str]]:
    """Return one round's runs: per concurrency, the target ratios' runs first, side by side.

    The machine drifts over seconds too, so the runs that the issue's targets compare go back
    to back: aiohttp between corral on asyncio and corral on trio, the pair's order flipping
    every other round so that neither always runs first. The other clients follow.
    """
    ordered: list[tuple[int, str, str]] = []
    for concurrency in dict.fromkeys(level for level, _, _ in plan):
        level = [run for run in plan if run[0] == concurrency]
        group = [
            run
            for key in (("asyncio", "corral"), ("asyncio", "aiohttp"), ("trio", "corral"))
            for run in level
            if run[1:] == key
        ]
        if round_number % 2 == 0:
            group.reverse()
        ordered += group + [run for run in level if run not in group]
    return ordered


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", default=",".join(CLIENTS))
    parser.add_argument("--backends", default="asyncio,trio")
    parser.add_argument("--concurrency", default="50,200,1000")
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--quick", action="store_true", help="2000 requests, one repeat")
    parser.add_argument("--json", help="also write the raw results to this file")
    sub = parser.add_subparsers(dest="role")
    serve_cmd = sub.add_parser("serve")
    serve_cmd.add_argument("--port", type=int, default=0)
    serve_cmd.add_argument("--latency-ms", type=float, default=0.0)
    client_cmd = sub.add_parser("client")
    client_cmd.add_argument("name", choices=CLIENTS)
    client_cmd.add_argument("backend")
    client_cmd.add_argument("base")
    client_cmd.add_argument("concurrency", type=int)
    client_cmd.add_argument("requests", type=int)
    args = parser.parse_args()

    if args.role == "serve":
        serve(args.port, args.latency_ms)
        return
    if args.role == "client":
        run_client(args.name, args.backend, args.base, args.concurrency, args.requests)
        return

    if args.quick:
        args.requests, args.repeats = 2000, 1
    clients = [c for c in args.clients.split(",") if c]
    backends = [b for b in args.backends.split(",") if b]
    levels = [int(c) for c in args.concurrency.split(",") if c]
    unknown = set(clients) - set(CLIENTS)
    if unknown:
        parser.error(f"unknown clients {sorted(unknown)}; known: {', '.join(CLIENTS)}")

    server = subprocess.Popen(
        [sys.executable, __file__, "serve", "--latency-ms", str(args.latency_ms)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline().split()[1])
        base = f"http://127.0.0.1:{port}/v1"
        print(
            f"{args.requests} requests per run after a warm-up, median of {args.repeats}; "
            f"server latency {args.latency_ms:g} ms; {os.cpu_count()} CPUs "
            f"(server on CPU 0, clients on CPU 1 when there are two)"
        )
        # Rounds, not blocks: each round runs every client once, back to back, so that a
        # ratio compares runs made under the same machine conditions; these machines drift
        # over minutes. Ratios are then the medians of the per-round ratios.
        plan = [
            (concurrency, backend, name)
            for concurrency in levels
            for backend in backends
            for name in clients
            if backend == "asyncio" or name not in ASYNCIO_ONLY
        ]
        runs: dict[tuple[int, str, str], list[dict[str, Any]]] = {key: [] for key in plan}
        for round_number in range(1, args.repeats + 1):
            for concurrency, backend, name in round_order(plan, round_number):
                before, start = process_cpu(server.pid), time.perf_counter()
                command = [sys.executable, __file__, "client", name, backend, base]
                done = subprocess.run(
                    [*command, str(concurrency), str(args.requests)],
                    capture_output=True,
                    text=True,
                    timeout=600,
                    check=False,
                )
                elapsed = time.perf_counter() - start
                if done.returncode != 0:
                    print(f"  {name}/{backend}/{concurrency} crashed:\n{done.stderr}")
                    continue
                run = json.loads(done.stdout.strip().splitlines()[-1])
                run["server_share"] = (process_cpu(server.pid) - before) / elapsed
                run["round"] = round_number
                runs[(concurrency, backend, name)].append(run)
                print(
                    f"  round {round_number}: {name:12s} {backend:8s} c={concurrency:<5d} "
                    f"{run['requests'] / run['wall']:8.0f} req/s "
                    f"{run['cpu'] / run['requests'] * 1e6:7.0f} us CPU/req  "
                    f"failures={run['failures']}",
                    flush=True,
                )
        rows: list[dict[str, Any]] = []
        for (concurrency, backend, name), taken in runs.items():
            if not taken:
                continue
            rows.append(
                {
                    "client": name,
                    "backend": backend,
                    "concurrency": concurrency,
                    "rps": statistics.median(r["requests"] / r["wall"] for r in taken),
                    "cpu_us": statistics.median(r["cpu"] / r["requests"] * 1e6 for r in taken),
                    "failures": sum(r["failures"] for r in taken),
                    "server_share": statistics.median(r["server_share"] for r in taken),
                    "runs": taken,
                }
            )
        report(rows)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(rows, f, indent=2)
    finally:
        server.terminate()
        server.wait()


def report(rows: list[dict[str, Any]]) -> None:
    """Print the table and the ratios that issue 6 sets targets for: medians of per-round ratios."""

    def find(client: str, backend: str, concurrency: int) -> dict[str, Any] | None:
        for row in rows:
            if (row["client"], row["backend"], row["concurrency"]) == (
                client,
                backend,
                concurrency,
            ):
                return row
        return None

    def ratio(row: dict[str, Any], other: dict[str, Any] | None) -> float | None:
        # Each run against the peer's run of the same round, then the median of those.
        if other is None:
            return None
        theirs = {r["round"]: r["requests"] / r["wall"] for r in other["runs"]}
        ours = [
            (r["requests"] / r["wall"]) / theirs[r["round"]]
            for r in row["runs"]
            if r["round"] in theirs
        ]
        return statistics.median(ours) if ours else None

    print()
    header = (
        f"{'client':12s} {'backend':8s} {'conc':>5s} {'req/s':>8s} {'CPU us/req':>10s} "
        f"{'server CPU':>10s} {'vs aiohttp':>10s} {'vs openai':>9s}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        vs_aiohttp = ratio(row, find("aiohttp", "asyncio", row["concurrency"]))
        vs_openai = ratio(row, find("openai", "asyncio", row["concurrency"]))
        print(
            f"{row['client']:12s} {row['backend']:8s} {row['concurrency']:5d} "
            f"{row['rps']:8.0f} {row['cpu_us']:10.0f} {row['server_share']:9.0%} "
            + (f"{vs_aiohttp:10.2f} " if vs_aiohttp is not None else " " * 11)
            + (f"{vs_openai:9.1f}" if vs_openai is not None else " " * 9)
            + ("  FAILURES" if row["failures"] else "")
        )
    print("\nRatios are medians of per-round ratios: each run against the peer's run of its round.")


if __name__ == "__main__":
    main()
