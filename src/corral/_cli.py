"""The command line: ``corral run`` (durable, resumable JSONL jobs) and ``corral mock-server``.

Exit codes of ``corral run``: 0 every request succeeded; 1 some failed (see the errors file) or
the output could not be written; 2 bad input or usage (nothing was sent); 130 interrupted (rerun
the same command to resume).
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import shlex
import signal
import sys
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack, redirect_stderr, redirect_stdout
from typing import Any, Final, TextIO

import anyio
import httpx2

from ._client import Client
from ._errors import ConfigurationError, CorralError, InvalidInputError, JobError, OutputWriteError
from ._flow.budget import Budget
from ._flow.ratelimit import RateLimit
from ._flow.retry import RetryPolicy
from ._models import BatchStatistics
from ._serde import to_json
from ._version import __version__
from .jobs._engine import JobProgress, JobSummary, JsonlJob
from .providers._base import Provider

__all__ = ["main"]

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_INTERRUPTED: Final = 130

PROVIDERS: Final = ("openai", "anthropic", "gemini")
_KEY_ENV: Final = {
    "openai": "OPENAI_API_KEY",
    "anthropic": "ANTHROPIC_API_KEY",
    "gemini": "GEMINI_API_KEY",
}
_PLAIN_EVERY: Final = 5.0  # seconds between progress lines when stdout is not a terminal
_RICH_EVERY: Final = 0.25


class _UsageError(Exception):
    """A command-line mistake found after parsing; exit code 2."""


# -- argument parsing -------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _seconds(text: str, *, allow_zero: bool) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise argparse.ArgumentTypeError(f"must be {'>=' if allow_zero else '>'} 0, got {text}")
    return value


def _positive_seconds(text: str) -> float:
    return _seconds(text, allow_zero=False)


def _non_negative_seconds(text: str) -> float:
    return _seconds(text, allow_zero=True)


def _latency(text: str) -> float | tuple[float, float]:
    from .testing import parse_latency

    try:
        return parse_latency(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _error_rates(text: str) -> Any:
    from .testing import parse_error_rates

    try:
        return parse_error_rates(text)
    except (ValueError, TypeError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """Return the parser of the ``corral`` command."""
    parser = argparse.ArgumentParser(
        prog="corral",
        description="Run LLM API calls at volume: durable, resumable JSONL jobs.",
    )
    parser.add_argument("--version", action="version", version=f"corral {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = commands.add_parser(
        "run",
        help="run an OpenAI Batch JSONL file; rerun the same command to resume",
        description=(
            "Send every request of an OpenAI Batch input file and write OpenAI Batch output "
            "lines: successes to OUTPUT, failures to the errors file. Rerunning the same "
            "command resumes the job and never sends again a custom_id already in OUTPUT. "
            "Exit codes: 0 all succeeded, 1 some failed, 2 bad input or usage (nothing sent), "
            "130 interrupted (rerun to resume)."
        ),
    )
    run.add_argument("input", metavar="INPUT.jsonl", help="OpenAI Batch input lines")
    run.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="OUTPUT.jsonl",
        help="success records (created, or resumed)",
    )
    run.add_argument(
        "--errors",
        metavar="ERRORS.jsonl",
        help="failure records (default: OUTPUT's stem + .errors.jsonl)",
    )
    run.add_argument(
        "--provider",
        choices=PROVIDERS,
        default="openai",
        help="the API the bodies are sent to (default: openai)",
    )
    run.add_argument(
        "--base-url",
        metavar="URL",
        help="the API root, e.g. https://api.deepseek.com/v1 (default: the provider's)",
    )
    run.add_argument(
        "--api-key-env",
        metavar="VAR",
        help="the environment variable holding the key (default: OPENAI_API_KEY, "
        "ANTHROPIC_API_KEY or GEMINI_API_KEY)",
    )
    run.add_argument("--model", help="send every request to this model, whatever its body says")
    run.add_argument(
        "--concurrency",
        type=_positive_int,
        default=64,
        metavar="N",
        help="requests in flight at once (default: 64)",
    )
    run.add_argument(
        "--rpm",
        type=_positive_float,
        metavar="N",
        help="send at most N requests per minute (client-side rate limit)",
    )
    run.add_argument(
        "--tpm",
        type=_positive_float,
        metavar="N",
        help="use at most N tokens per minute, input and output (client-side rate limit)",
    )
    run.add_argument(
        "--max-cost",
        type=_positive_float,
        metavar="USD",
        help="stop sending once this run has spent this many US dollars",
    )
    run.add_argument(
        "--attempts",
        type=_positive_int,
        default=5,
        metavar="N",
        help="HTTP attempts per request, the first included (default: 5)",
    )
    run.add_argument(
        "--timeout",
        type=_positive_seconds,
        default=300.0,
        metavar="SECONDS",
        help="deadline of one request, every attempt and backoff included (default: 300)",
    )
    run.add_argument(
        "--mock",
        action="store_true",
        help="answer from the built-in mock server, in-process: no network, no key",
    )
    run.add_argument(
        "--summary-json",
        metavar="PATH",
        help="write the whole job's statistics (across resumes) as JSON",
    )
    run.add_argument("--no-progress", action="store_true", help="print no progress")
    run.add_argument(
        "--no-retry-failed",
        action="store_true",
        help="keep earlier failures as they are instead of sending them again",
    )
    run.add_argument(
        "--restart",
        action="store_true",
        help="start over even if OUTPUT belongs to another job or lost records "
        "(existing files are kept with a .bak suffix)",
    )
    run.add_argument(
        "--grace",
        type=_non_negative_seconds,
        default=10.0,
        metavar="SECONDS",
        help="after Ctrl-C, how long in-flight requests may finish (default: 10)",
    )
    run.add_argument(
        "--backend",
        choices=("asyncio", "trio"),
        default="asyncio",
        help="the event loop (default: asyncio; trio needs corral[trio])",
    )

    mock = commands.add_parser(
        "mock-server",
        help="serve the mock OpenAI, Anthropic and Gemini APIs on loopback",
        description=(
            "Serve deterministic OpenAI (/v1/chat/completions, /v1/embeddings, /v1/models), "
            "Anthropic (/v1/messages) and Gemini (/v1beta/models/...) APIs until Ctrl-C. "
            "Needs corral[server]."
        ),
    )
    mock.add_argument("--port", type=int, default=8000, help="0 picks a free port (default: 8000)")
    mock.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    mock.add_argument(
        "--latency",
        type=_latency,
        default=0.0,
        metavar="SECONDS|LOW-HIGH",
        help="seconds before each answer, fixed or uniform in a range (default: 0)",
    )
    mock.add_argument(
        "--error-rate",
        type=_error_rates,
        default={},
        metavar="STATUS=RATE,...",
        help="inject errors, e.g. 429=0.02,500=0.01",
    )
    mock.add_argument(
        "--retry-after",
        type=_non_negative_seconds,
        default=1.0,
        metavar="SECONDS",
        help="Retry-After sent with injected 429/503/529 (default: 1)",
    )
    mock.add_argument(
        "--rpm",
        type=_positive_int,
        metavar="N",
        help="emulate a requests-per-minute limit (429 once over)",
    )
    mock.add_argument(
        "--tpm",
        type=_positive_int,
        metavar="N",
        help="emulate a tokens-per-minute limit (429 once over)",
    )
    mock.add_argument("--seed", type=int, default=0, help="seed of every random choice")
    mock.add_argument(
        "--no-hit-log",
        action="store_true",
        help="keep no per-request log (constant memory for huge runs)",
    )
    mock.add_argument(
        "--backend",
        choices=("asyncio", "trio"),
        default="asyncio",
        help="the event loop (default: asyncio)",
    )
    return parser


# -- corral run -------------------------------------------------------------------------------


def _make_provider(args: argparse.Namespace, base_url: str | None, api_key: str | None) -> Provider:
    name: str = args.provider
    kwargs: dict[str, Any] = {}
    if base_url is not None:
        kwargs["base_url"] = base_url
    if api_key is not None:
        kwargs["api_key"] = api_key
    elif args.api_key_env:
        kwargs["api_key_env"] = args.api_key_env
    if name == "openai":
        from .providers import OpenAI

        return OpenAI(**kwargs)
    try:
        # Imported only when asked for: the adapters are optional pieces of the package.
        from . import providers

        cls = getattr(providers, name.capitalize())
    except AttributeError:
        raise _UsageError(f"the {name} provider is not available in this corral") from None
    provider: Provider = cls(**kwargs)
    return provider


def _mock_base_url(provider: str) -> str:
    # The host is never contacted: the in-process transport answers. Loopback keeps the
    # adapters from asking for a key.
    return "http://127.0.0.1/v1" if provider == "openai" else "http://127.0.0.1"


async def _open_client(args: argparse.Namespace, stack: AsyncExitStack) -> Client:
    retry = RetryPolicy(attempts=args.attempts, timeout=args.timeout)
    http_client: httpx2.AsyncClient | None = None
    if args.mock:
        if args.base_url:
            raise _UsageError("--mock answers in-process: drop --base-url, or drop --mock")
        from .testing import MockConfig, MockServer

        server = MockServer(MockConfig(record_hits=False))
        http_client = await stack.enter_async_context(
            httpx2.AsyncClient(
                transport=httpx2.ASGITransport(app=server),
                timeout=args.timeout,
                follow_redirects=False,
            )
        )
        provider = _make_provider(args, _mock_base_url(args.provider), "sk-mock")
    else:
        provider = _make_provider(args, args.base_url, None)
    policies: dict[str, Any] = {}
    if args.rpm is not None or args.tpm is not None:
        policies["rate_limit"] = RateLimit(requests_per_minute=args.rpm, tokens_per_minute=args.tpm)
    if args.max_cost is not None:
        policies["budget"] = Budget(max_cost_usd=args.max_cost)
    client = Client(
        provider,
        max_concurrency=args.concurrency,
        retry=retry,
        request_timeout=args.timeout,
        http_client=http_client,
        **policies,
    )
    return await stack.enter_async_context(client)


def _resume_command(argv: Sequence[str]) -> str:
    """Return the command that resumes this run: the same one, minus ``--restart``."""
    program = sys.argv[0] if sys.argv else "corral"
    module_run = os.path.basename(program) == "__main__.py"
    head = ["python", "-m", "corral"] if module_run else ["corral"]
    return shlex.join(head + [a for a in argv if a != "--restart"])


class _Output:
    """Where the CLI prints: rich when it is installed and stdout is a terminal, else plain."""

    __slots__ = ("console", "err", "out", "rich")

    def __init__(self, out: TextIO, err: TextIO, *, terminal: bool | None = None) -> None:
        self.out = out
        self.err = err
        self.console: Any = None
        self.rich = False
        if importlib.util.find_spec("rich") is not None:
            from rich.console import Console

            self.console = Console(file=out, highlight=False, force_terminal=terminal)
            self.rich = bool(self.console.is_terminal)

    def __repr__(self) -> str:
        return f"<_Output rich={self.rich}>"

    def line(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def error(self, text: str) -> None:
        print(f"corral: error: {text}", file=self.err, flush=True)


def _describe(progress: JobProgress) -> str:
    """Return one plain progress line."""
    parts = [f"{progress.done}/{progress.total} done"]
    if progress.total:
        parts[0] += f" ({100.0 * progress.done / progress.total:.1f}%)"
    parts.append(f"{progress.rate_rps:.1f} req/s")
    if progress.eta_s is not None:
        parts.append(f"ETA {_duration(progress.eta_s)}")
    parts.append(f"{progress.usage.total_tokens:,} tokens")
    parts.append(f"${progress.cost_usd:.4f}")
    if progress.failed:
        kinds = ", ".join(f"{k} {n}" for k, n in progress.failures_by_kind.items())
        parts.append(f"failed {progress.failed} ({kinds})")
    parts.append(f"in flight {progress.in_flight}")
    return "corral: " + ", ".join(parts)


def _duration(seconds: float) -> str:
    seconds = max(seconds, 0.0)
    if seconds < 60:
        return f"{seconds:.0f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


async def _plain_progress(job: JsonlJob, output: _Output) -> None:
    while True:
        await anyio.sleep(_PLAIN_EVERY)
        progress = job.statistics()
        if progress.state in ("running", "stopping"):
            output.line(_describe(progress))


async def _rich_progress(job: JsonlJob, output: _Output) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TextColumn("{task.fields[eta]}"),
        TextColumn("{task.fields[info]}"),
        console=output.console,
        auto_refresh=False,
        transient=False,
    )
    task = progress.add_task("validating", total=None, rate="", eta="", info="")
    progress.start()
    try:
        while True:
            snap = job.statistics()
            info = f"{snap.usage.total_tokens:,} tok  ${snap.cost_usd:.4f}"
            if snap.failed:
                kinds = " ".join(f"{k}={n}" for k, n in snap.failures_by_kind.items())
                info += f"  [red]failed {snap.failed}: {kinds}[/red]"
            description = {"preparing": "validating", "stopping": "stopping"}.get(
                snap.state, "running"
            )
            progress.update(
                task,
                description=description,
                total=snap.total or None,
                completed=snap.done,
                rate=f"{snap.rate_rps:.1f} req/s",
                eta=f"ETA {_duration(snap.eta_s)}" if snap.eta_s is not None else "",
                info=info,
            )
            progress.refresh()
            await anyio.sleep(_RICH_EVERY)
    finally:
        snap = job.statistics()
        progress.update(task, total=snap.total or None, completed=snap.done)
        progress.refresh()
        progress.stop()


async def _watch_signals(signals: Any, job: JsonlJob, grace: float, output: _Output) -> None:
    count = 0
    async for _signum in signals:
        count += 1
        if count == 1:
            in_flight = job.statistics().in_flight
            output.line(
                f"corral: stopping: no new requests; {in_flight} in flight get up to "
                f"{grace:g}s to finish (Ctrl-C again to cancel them now)"
            )
            job.stop()
        else:
            output.line("corral: cancelling the requests in flight now")
            job.abort()


def _write_summary_json(path: str, statistics: BatchStatistics) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(to_json(statistics) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _print_summary(summary: JobSummary, output: _Output) -> None:
    whole = summary.statistics
    session = summary.session
    rows: list[tuple[str, str]] = [
        ("requests", f"{summary.total:,}"),
        ("succeeded", f"{summary.succeeded:,}"),
        ("failed", f"{summary.failed:,}"),
    ]
    for kind, n in whole.failures_by_kind.items():
        rows.append((f"  {kind}", f"{n:,}"))
    if summary.skipped:
        rows.append(("done before this run", f"{summary.skipped:,}"))
    rows.append(("recorded this run", f"{summary.recorded:,}"))
    if summary.remaining:
        rows.append(("remaining", f"{summary.remaining:,}"))
    usage = whole.usage
    rows.append(
        (
            "tokens",
            f"{usage.total_tokens:,} ({usage.input_tokens:,} in, "
            f"{usage.output_tokens:,} out, {usage.cached_input_tokens:,} cached)",
        )
    )
    cost = f"${whole.cost_usd:.4f}"
    if whole.unpriced:
        cost += f" (+{whole.unpriced:,} unpriced)"
    rows.append(("cost", cost))
    rows.append(("attempts", f"{whole.attempts:,} ({whole.retries:,} retries)"))
    if session.latency_p50_s is not None:
        rows.append(
            (
                "latency p50/p90/p99",
                f"{session.latency_p50_s:.3f}s / {session.latency_p90_s or 0:.3f}s / "
                f"{session.latency_p99_s or 0:.3f}s",
            )
        )
    rows.append(
        ("throughput", f"{session.throughput_rps:.1f} req/s over {session.wall_time_s:.1f}s")
    )
    rows.append(("output", summary.output))
    rows.append(("errors", summary.errors))
    if output.rich:
        from rich.table import Table

        table = Table(title="corral run", show_header=False)
        table.add_column(style="bold")
        table.add_column()
        for name, value in rows:
            table.add_row(name, value)
        output.console.print(table)
    else:
        width = max(len(name) for name, _ in rows)
        for name, value in rows:
            output.line(f"{name.ljust(width)}  {value}")


async def _run_job(
    args: argparse.Namespace,
    argv: Sequence[str],
    output: _Output,
    handle_signals: bool,
) -> int:
    async with AsyncExitStack() as stack:
        try:
            client = await _open_client(args, stack)
        except _UsageError as exc:
            output.error(str(exc))
            return EXIT_USAGE
        except ConfigurationError as exc:
            output.error(str(exc))
            return EXIT_USAGE
        try:
            job = JsonlJob(
                client,
                args.input,
                args.output,
                errors=args.errors,
                model=args.model,
                retry_failed=not args.no_retry_failed,
                restart=args.restart,
                grace=args.grace,
            )
        except ValueError as exc:
            output.error(str(exc))
            return EXIT_USAGE
        summary: JobSummary | None = None
        failure: BaseException | None = None
        show: Callable[[JsonlJob, _Output], Any] | None = None
        if not args.no_progress:
            show = _rich_progress if output.rich else _plain_progress
        async with anyio.create_task_group() as tg:
            if handle_signals:
                signals = stack.enter_context(
                    anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM)
                )
                tg.start_soon(_watch_signals, signals, job, args.grace, output)
            if show is not None:
                tg.start_soon(show, job, output)
            try:
                summary = await job.run()
            except (CorralError, OSError) as exc:
                failure = exc
            finally:
                tg.cancel_scope.cancel()
    if failure is not None:
        return _report_failure(failure, job, output)
    assert summary is not None
    _print_summary(summary, output)
    code = summary.exit_code
    if args.summary_json:
        try:
            _write_summary_json(args.summary_json, summary.statistics)
        except OSError as exc:
            output.error(f"could not write {args.summary_json}: {exc.strerror or exc}")
            code = max(code, EXIT_FAILED)
    if summary.interrupted:
        output.line(
            f"corral: interrupted: {summary.succeeded + summary.failed:,} of {summary.total:,} "
            f"done, {summary.remaining:,} left. Resume with:"
        )
        output.line(f"  {_resume_command(argv)}")
    elif summary.failed:
        output.line(
            f"corral: {summary.failed:,} request(s) failed; see {summary.errors}. Rerun the same "
            f"command to retry them."
        )
    return code


def _report_failure(failure: BaseException, job: JsonlJob, output: _Output) -> int:
    if isinstance(failure, InvalidInputError):
        output.error(f"{failure}\nNothing was sent.")
        return EXIT_USAGE
    if isinstance(failure, OutputWriteError):
        progress = job.statistics()
        output.error(f"{failure} ({progress.done:,} of {progress.total:,} done)")
        return EXIT_FAILED
    if isinstance(failure, JobError):
        output.error(f"{failure}\nNothing was sent.")
        return EXIT_USAGE
    if isinstance(failure, OSError):
        output.error(f"{failure.filename or 'input'}: {failure.strerror or failure}")
        return EXIT_USAGE
    output.error(str(failure))
    return EXIT_USAGE


# -- corral mock-server -----------------------------------------------------------------------


async def _serve_mock(args: argparse.Namespace, output: _Output) -> int:
    from .testing import MockConfig, MockServer, serve

    config = MockConfig(
        latency=args.latency,
        error_rates=args.error_rate,
        retry_after=args.retry_after,
        seed=args.seed,
        requests_per_minute=args.rpm,
        tokens_per_minute=args.tpm,
        record_hits=not args.no_hit_log,
    )
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with serve(MockServer(config), host=args.host, port=args.port) as running:
            output.line(f"corral mock server listening on {running.url}")
            output.line(
                f"  OpenAI: {running.url}/v1  Anthropic: {running.url}  "
                f"Gemini: {running.url}/v1beta  (any non-empty API key)"
            )
            # Leaving the block (not cancelling it) lets the server shut down gracefully.
            async for _ in signals:
                break
    return EXIT_OK


# -- entry points -----------------------------------------------------------------------------


def _parse(argv: Sequence[str], out: TextIO, err: TextIO) -> argparse.Namespace | int:
    """Parse the command line; return the arguments, or the exit code of ``--help`` or a misuse.

    argparse prints to ``sys.stdout`` and ``sys.stderr``; they point at *out* and *err* while it
    parses, so that an embedding caller's streams get its help and usage errors too.

    Args:
        argv: The arguments, without the program name.
        out: Where help and ``--version`` go.
        err: Where usage errors go.
    """
    try:
        with redirect_stdout(out), redirect_stderr(err):
            return build_parser().parse_args(list(argv))
    except SystemExit as exc:
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE


async def amain(
    argv: Sequence[str],
    *,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    handle_signals: bool = True,
    terminal: bool | None = None,
) -> int:
    """Run the ``corral`` command inside a running event loop; return its exit code.

    Args:
        argv: The arguments, without the program name.
        stdout: Where to print results and progress (default: ``sys.stdout``).
        stderr: Where to print errors (default: ``sys.stderr``).
        handle_signals: Stop gracefully on SIGINT and SIGTERM (needs the main thread).
        terminal: Whether stdout is a terminal (rich progress and tables); None detects it.
    """
    output = _Output(stdout or sys.stdout, stderr or sys.stderr, terminal=terminal)
    args = _parse(argv, output.out, output.err)
    if isinstance(args, int):
        return args
    if args.command == "run":
        return await _run_job(args, argv, output, handle_signals)
    return await _serve_mock(args, output)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``corral`` command; return its exit code.

    Args:
        argv: The arguments, without the program name (default: ``sys.argv[1:]``).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parse(argv, sys.stdout, sys.stderr)
    if isinstance(args, int):
        return args
    backend: str = args.backend
    if backend == "trio" and importlib.util.find_spec("trio") is None:
        print(
            "corral: error: --backend trio needs trio: pip install 'corral[trio]'", file=sys.stderr
        )
        return EXIT_USAGE
    try:
        return anyio.run(amain, argv, backend=backend)
    except KeyboardInterrupt:
        # Ctrl-C before the signal handlers were in place: nothing was sent yet.
        print("corral: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except ImportError as exc:
        print(f"corral: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
