"""OpenAI-Batch JSONL jobs: validate, resume, send and write durably, in constant memory.

:class:`JsonlJob` is the engine behind ``corral run`` and :func:`run_jsonl`. A job reads its input
twice: a first pass checks every line and keeps one 8-byte hash per ``custom_id``
(:mod:`corral.jobs._input`); a second pass feeds the lines not done yet to
:meth:`corral.Client.stream`. One writer (the consuming task) appends each result to the output
or errors file and a syncer task fsyncs them in small groups; a result counts as done only once
synced (:mod:`corral.jobs._output`). A manifest next to the output ties it to its input and keeps
the job's totals across resumes (:mod:`corral.jobs._manifest`).

At most ``max_concurrency`` requests are ever sent and not yet written: a job-level limiter token
is taken before a line is handed to the client and given back only once its record is written. A
crash (even ``kill -9``) therefore loses at most that many paid results, and a rerun never sends
again an id whose record is on disk.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import tempfile
from collections.abc import Callable
from typing import Any, Final, Literal

import anyio
import anyio.lowlevel
import attrs

from .._client import Client
from .._errors import (
    JobLockedError,
    JobMismatchError,
    OutputLostError,
    OutputWriteError,
    check_number,
)
from .._models import BatchStatistics, ChatRequest, Result, Usage
from ._ids import id_hash
from ._input import InputScan, ScanStopped, pending_requests, scan_input
from ._manifest import (
    FileMarks,
    JobIdentity,
    Ledger,
    load_manifest,
    manifest_path,
    save_manifest,
)
from ._output import ExistingFile, RecordWriter, read_records, write_all

try:
    import fcntl
except ImportError:  # pragma: no cover - not on POSIX
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "JobProgress",
    "JobSummary",
    "JsonlJob",
    "run_jsonl",
]

_DONE: Final = 1
_CHECKPOINT_EVERY: Final = 2.0  # seconds between ledger saves while a job runs

JobState = Literal["new", "preparing", "running", "stopping", "finished"]


def default_errors_path(output: str) -> str:
    """Return the errors file used when none is given: ``out.jsonl`` -> ``out.errors.jsonl``.

    Args:
        output: The output file's path.
    """
    stem = output[: -len(".jsonl")] if output.endswith(".jsonl") else output
    return stem + ".errors.jsonl"


@attrs.frozen
class JobProgress:
    """A snapshot of a running job, for progress displays.

    Args:
        state: ``"new"``, ``"preparing"`` (validating input, reading earlier output),
            ``"running"``, ``"stopping"`` (no new requests; in-flight ones finishing) or
            ``"finished"``.
        total: Requests in the input (0 until it is validated).
        done: Requests with a durable record: earlier runs' and this run's.
        succeeded: Success records in the output.
        failed: Failure records in the errors file.
        failures_by_kind: Those failures by kind.
        skipped: Requests already done when this run started.
        in_flight: Requests sent and not yet written.
        elapsed_s: Seconds since this run started sending.
        rate_rps: Records written per second by this run.
        eta_s: Estimated seconds left, or None before the rate is known.
        usage: Tokens used by the whole job so far.
        cost_usd: Known cost of the whole job so far.
    """

    state: str
    total: int
    done: int
    succeeded: int
    failed: int
    failures_by_kind: dict[str, int]
    skipped: int
    in_flight: int
    elapsed_s: float
    rate_rps: float
    eta_s: float | None
    usage: Usage
    cost_usd: float


@attrs.frozen
class JobSummary:
    """How a job run ended.

    Args:
        input: The input file.
        output: The output file (success records).
        errors: The errors file (failure records).
        total: Requests in the input.
        succeeded: Success records in the output, from every run.
        failed: Failure records in the errors file.
        skipped: Requests already done when this run started.
        recorded: Records this run wrote.
        interrupted: Whether the run was stopped before the end (rerun to resume).
        statistics: The whole job's statistics, across resumes.
        session: This run's statistics.

    Latency percentiles in both come from a histogram with 2 % wide buckets, which merges across
    resumes and stays small at any size.
    """

    input: str
    output: str
    errors: str
    total: int
    succeeded: int
    failed: int
    skipped: int
    recorded: int
    interrupted: bool
    statistics: BatchStatistics
    session: BatchStatistics

    @property
    def remaining(self) -> int:
        """Requests with no record yet."""
        return self.total - self.succeeded - self.failed

    @property
    def exit_code(self) -> int:
        """The exit code the CLI gives this outcome (0 all done, 1 some failed, 130 interrupted)."""
        if self.interrupted:
            return 130
        if self.failed or self.remaining:
            return 1
        return 0


class _PendingInput:
    """The requests not done yet, read lazily; each waits for a job token before it goes out."""

    __slots__ = ("_gate", "_job", "_lines")

    def __init__(self, job: JsonlJob, scan: InputScan, gate: anyio.CapacityLimiter) -> None:
        self._job = job
        self._gate = gate
        table = scan.table
        self._lines = pending_requests(scan, job._model, table.flag)  # noqa: SLF001

    def __repr__(self) -> str:
        return f"<_PendingInput of {self._job!r}>"

    def __aiter__(self) -> _PendingInput:
        return self

    async def __anext__(self) -> ChatRequest:
        job = self._job
        while True:
            if job._stop_requested:  # noqa: SLF001
                raise StopAsyncIteration
            try:
                item = next(self._lines)
            except StopIteration:
                raise StopAsyncIteration from None
            if item is None:
                await anyio.lowlevel.checkpoint()
                continue
            break
        with anyio.CancelScope() as scope:
            job._admission_scope = scope  # noqa: SLF001
            if job._stop_requested:  # noqa: SLF001
                scope.cancel()
            await self._gate.acquire_on_behalf_of(item.id)
        job._admission_scope = None  # noqa: SLF001
        if scope.cancelled_caught:
            raise StopAsyncIteration
        if job._stop_requested:  # noqa: SLF001
            self._gate.release_on_behalf_of(item.id)
            raise StopAsyncIteration
        return item

    async def aclose(self) -> None:
        """Close the input file."""
        self._lines.close()


class JsonlJob:
    """Run an OpenAI Batch JSONL file through a client, durably and resumably.

    The output gets one OpenAI Batch output record per success, the errors file one per
    failure, in completion order: join them to the input on ``custom_id``. Running the same job
    again resumes it: ids with a record in the output are never sent again; ids in the errors file
    are sent again unless *retry_failed* is False.

    Call :meth:`stop` for a graceful stop (no new requests; in-flight ones get *grace* seconds)
    and :meth:`abort` to cancel at once; both keep the files valid. Call them from the event
    loop the job runs in.

    Args:
        client: An open :class:`corral.Client`; its ``max_concurrency`` bounds the requests sent
            and not yet written.
        input: The input JSONL file.
        output: The output JSONL file (created, or resumed).
        errors: The errors JSONL file; ``<output stem>.errors.jsonl`` when not given.
        model: A model that replaces every body's model.
        retry_failed: Send again the ids recorded in the errors file by an earlier run.
        restart: Start over even if the output belongs to another job; existing files are
            renamed with a ``.bak`` suffix, never deleted.
        grace: Seconds that in-flight requests get after :meth:`stop`.
        params: Extra parameters that identify the job (they must match on resume); the
            provider's name and *model* are always included.
    """

    __slots__ = (
        "_abort_requested",
        "_admission_scope",
        "_base_marks",
        "_client",
        "_durable",
        "_durable_marks",
        "_error",
        "_errors_path",
        "_fds",
        "_gate",
        "_grace",
        "_identity",
        "_input",
        "_last_checkpoint",
        "_model",
        "_output",
        "_params",
        "_prev_ledger",
        "_prior",
        "_restart",
        "_retry_failed",
        "_run_scope",
        "_scan",
        "_send_t0",
        "_send_t1",
        "_session_ledger",
        "_spool",
        "_state",
        "_stop_event",
        "_stop_requested",
        "_wake",
        "_writer",
        "_written",
    )

    def __init__(
        self,
        client: Client,
        input: str | os.PathLike[str],
        output: str | os.PathLike[str],
        *,
        errors: str | os.PathLike[str] | None = None,
        model: str | None = None,
        retry_failed: bool = True,
        restart: bool = False,
        grace: float = 10.0,
        params: dict[str, Any] | None = None,
    ) -> None:
        if not isinstance(client, Client):
            raise TypeError(f"client must be a corral.Client, got {type(client).__name__}")
        check_number(grace, "grace", minimum=0)
        if model is not None and not isinstance(model, str):
            raise TypeError(f"model must be a model name or None, got {type(model).__name__}")
        if params is not None and not isinstance(params, dict):
            raise TypeError(f"params must be a dict or None, got {type(params).__name__}")
        for flag, value in (("retry_failed", retry_failed), ("restart", restart)):
            if not isinstance(value, bool):
                raise TypeError(f"{flag} must be True or False, got {value!r:.100}")
        self._client = client
        self._input = os.fspath(input)
        self._output = os.fspath(output)
        self._errors_path = (
            os.fspath(errors) if errors is not None else default_errors_path(self._output)
        )
        if os.path.abspath(self._errors_path) == os.path.abspath(self._output):
            raise ValueError("the errors file must differ from the output file")
        self._model = model
        self._retry_failed = retry_failed
        self._restart = restart
        self._grace = float(grace)
        self._params: dict[str, Any] = {"provider": client.provider.name, "model": model}
        self._params.update(params or {})
        self._state: JobState = "new"
        self._stop_requested = False
        self._abort_requested = False
        self._stop_event: anyio.Event | None = None
        self._wake: anyio.Event | None = None
        self._admission_scope: anyio.CancelScope | None = None
        self._run_scope: anyio.CancelScope | None = None
        self._gate: anyio.CapacityLimiter | None = None
        self._scan: InputScan | None = None
        self._identity: JobIdentity | None = None
        self._fds: list[int] = []
        self._writer: RecordWriter | None = None
        self._error: OutputWriteError | None = None
        self._prev_ledger = Ledger()
        self._session_ledger = Ledger()
        # Earlier runs' records: (successes, failures, failures by kind).
        self._prior: tuple[int, int, dict[str, int]] = (0, 0, {})
        # This run's records, written and then durable: (records, successes, failures by kind).
        self._written: tuple[int, int, dict[str, int]] = (0, 0, {})
        self._durable: tuple[int, int, dict[str, int]] = (0, 0, {})
        self._send_t0: float | None = None
        self._send_t1: float | None = None
        self._last_checkpoint = 0.0
        self._spool: str | None = None
        self._base_marks = self._durable_marks = FileMarks()

    def __repr__(self) -> str:
        return (
            f"<JsonlJob {self._state} input={self._input!r} output={self._output!r} "
            f"errors={self._errors_path!r}>"
        )

    # -- control ------------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop gracefully: send nothing new; in-flight requests get the grace period."""
        if self._stop_requested:
            return
        self._stop_requested = True
        if self._state == "running":
            self._state = "stopping"
        if self._stop_event is not None:
            self._stop_event.set()
        if self._admission_scope is not None:
            self._admission_scope.cancel()

    def abort(self) -> None:
        """Cancel at once: in-flight requests are dropped (and sent again on resume)."""
        self.stop()
        self._abort_requested = True
        if self._run_scope is not None:
            self._run_scope.cancel()

    # -- statistics ---------------------------------------------------------------------------

    def statistics(self) -> JobProgress:
        """Return a snapshot of the job's progress."""
        prior_ok, prior_failed, prior_kinds = self._prior
        n, ok, kinds = self._durable
        by_kind = dict(prior_kinds)
        for kind, count in kinds.items():
            by_kind[kind] = by_kind.get(kind, 0) + count
        total = self._scan.requests if self._scan is not None else 0
        done = prior_ok + prior_failed + n
        elapsed = 0.0
        if self._send_t0 is not None:
            end = self._send_t1 if self._send_t1 is not None else anyio.current_time()
            elapsed = max(end - self._send_t0, 0.0)
        rate = self._written[0] / elapsed if elapsed > 0 else 0.0
        eta = (total - done) / rate if rate > 0 else None
        prev, session = self._prev_ledger, self._session_ledger
        gate = self._gate
        return JobProgress(
            state=self._state,
            total=total,
            done=done,
            succeeded=prior_ok + ok,
            failed=prior_failed + (n - ok),
            failures_by_kind=dict(sorted(by_kind.items())),
            skipped=prior_ok + prior_failed,
            in_flight=int(gate.borrowed_tokens) if gate is not None else 0,
            elapsed_s=elapsed,
            rate_rps=rate,
            eta_s=eta,
            usage=prev.usage + session.usage,
            cost_usd=prev.cost_usd + session.cost_usd,
        )

    # -- running ------------------------------------------------------------------------------

    async def run(self) -> JobSummary:
        """Run the job to its end, or until stopped; return its summary.

        Raises :class:`corral.InvalidInputError` for bad input lines, and a
        :class:`corral.JobError` when the output belongs to another job, is damaged in the
        middle, is locked by another run, or cannot be written. Nothing is sent in the first
        three cases.
        """
        if self._state != "new":
            raise RuntimeError("a JsonlJob runs once; make a new one to resume")
        self._state = "preparing"
        self._stop_event = anyio.Event()
        self._wake = anyio.Event()
        if self._stop_requested:
            self._stop_event.set()
        try:
            await anyio.to_thread.run_sync(self._prepare)
        except ScanStopped:
            self._close()
            self._state = "finished"
            return self._summary(interrupted=True)
        except BaseException:
            self._close()
            self._state = "finished"
            raise
        try:
            if not self._stop_requested:
                await self._send()
        finally:
            with anyio.CancelScope(shield=True):
                await self._finish()
        if self._error is not None:
            raise self._error
        return self._summary(interrupted=self._stop_requested)

    def _prepare(self) -> None:
        """Validate the input, check the job's identity, open and repair the files (a thread)."""
        input_path, input_label = self._input, None
        if _is_stream(input_path):
            self._spool, input_label = _spool_input(
                input_path, self._output, lambda: self._stop_requested
            )
            input_path = self._spool
        scan = scan_input(input_path, model=self._model, should_stop=lambda: self._stop_requested)
        self._scan = scan
        identity = JobIdentity(
            # A pipe has no lasting path: its content's digest names it, so that piping the
            # same data again resumes the job.
            input_path=input_label or scan.path,
            input_size=scan.size,
            requests=scan.requests,
            ids_digest=scan.ids_digest,
            errors_path=os.path.abspath(self._errors_path),
            params={k: v for k, v in sorted(self._params.items()) if v is not None},
        )
        self._identity = identity
        created: list[str] = []
        try:
            self._prepare_files(scan, identity, created)
        except BaseException as exc:
            # Leave nothing behind: the files this run created are still empty.
            for path in created:
                with contextlib.suppress(OSError):
                    if os.stat(path).st_size == 0:
                        os.unlink(path)
            self._close()
            if isinstance(exc, OSError):
                # Every file touched here is the job's output: a full disk or a read-only
                # directory is an output error, not a problem with the input.
                raise OutputWriteError(exc.filename or self._output, exc) from exc
            raise

    def _prepare_files(self, scan: InputScan, identity: JobIdentity, created: list[str]) -> None:
        """Check the manifest, open and repair the output and errors files, save the manifest."""
        output = self._output
        errors = self._errors_path
        mpath = manifest_path(output)
        marks: FileMarks | None = None
        if self._restart:
            # Hold the old files' locks while moving them: never from under a running job.
            held = [_open_locked(p) for p in (output, errors) if os.path.exists(p)]
            try:
                for path in (output, errors, mpath):
                    _back_up(path)
            finally:
                for fd in held:
                    os.close(fd)
        else:
            loaded = load_manifest(mpath)
            if loaded is None:
                if _non_empty(output) or _non_empty(errors):
                    raise JobMismatchError(
                        output,
                        [
                            "the output or errors file exists without a manifest "
                            f"({mpath}), so corral cannot tell which job wrote it"
                        ],
                    )
            else:
                differences = loaded[0].differences(identity)
                if differences:
                    raise JobMismatchError(output, differences)
                self._prev_ledger = loaded[1]
                marks = loaded[2]
        for path in (output, errors):
            if not os.path.exists(path):
                created.append(path)
            self._fds.append(_open_locked(path))
        out_fd, err_fd = self._fds

        table = scan.table
        salt = scan.salt
        ok = failed = 0
        kinds: dict[str, int] = {}

        def visit(path: str, line: int, custom_id: str, code: str | None) -> bool:
            previous = table.set_flag(id_hash(custom_id, salt), _DONE)
            if previous < 0:
                raise JobMismatchError(
                    output,
                    [f"{path}, line {line}: custom_id {custom_id!r} is not in the input"],
                )
            return previous != _DONE

        def visit_output(line: int, custom_id: str, code: str | None) -> None:
            nonlocal ok
            if visit(output, line, custom_id, code):
                ok += 1

        def visit_errors(line: int, custom_id: str, code: str | None) -> None:
            nonlocal failed
            if visit(errors, line, custom_id, code):
                failed += 1
                key = code or "unknown"
                kinds[key] = kinds.get(key, 0) + 1

        existing = read_records(output, "output", visit_output)
        if marks is not None:
            _check_marks(existing, mpath, marks.output_records, marks.output_bytes)
        _cut(out_fd, existing.valid_bytes, existing.torn_bytes)
        base = FileMarks(existing.records, existing.valid_bytes)
        if not self._retry_failed:
            existing_errors = read_records(errors, "errors", visit_errors)
            if marks is not None:
                _check_marks(existing_errors, mpath, marks.errors_records, marks.errors_bytes)
            _cut(err_fd, existing_errors.valid_bytes, existing_errors.torn_bytes)
            errs = existing_errors
            base = FileMarks(base.output_records, base.output_bytes, errs.records, errs.valid_bytes)
        self._prior = (ok, failed, kinds)
        _sync_directory(output)
        _sync_directory(errors)
        try:
            save_manifest(mpath, identity, self._prev_ledger, base)
        except OSError as exc:
            # A failed write() names no file: say which one.
            raise OutputWriteError(mpath, exc) from exc
        if self._retry_failed:
            # Earlier failures are sent again; their old records would then be stale. Cut only
            # once the manifest no longer counts them, so that it never counts more than is there.
            _cut(err_fd, 0, os.fstat(err_fd).st_size)
        self._base_marks = self._durable_marks = base
        self._writer = RecordWriter(out_fd, output, err_fd, errors)

    async def _send(self) -> None:
        assert self._scan is not None
        self._state = "running"
        self._send_t0 = now = anyio.current_time()
        self._last_checkpoint = now
        concurrency = self._client.statistics().max_concurrency
        self._gate = gate = anyio.CapacityLimiter(concurrency)
        requests = _PendingInput(self, self._scan, gate)
        failure: Exception | None = None
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._syncer)
            tg.start_soon(self._grace_timer)
            try:
                with anyio.CancelScope() as scope:
                    self._run_scope = scope
                    if self._abort_requested:
                        scope.cancel()
                    async with self._client.stream(requests) as results:
                        async for result in results:
                            if not self._record(result):
                                break
            except Exception as exc:
                # The input changed under the job, or a bug: raised below, unwrapped, rather
                # than inside the task group's ExceptionGroup.
                failure = exc
            finally:
                self._send_t1 = anyio.current_time()
                tg.cancel_scope.cancel()
        if failure is not None:
            raise failure

    def _record(self, result: Result) -> bool:
        """Write one result's record (in this task: the one writer); False if writing failed."""
        assert self._writer is not None
        assert self._gate is not None
        try:
            self._writer.write(result)
        except OutputWriteError as exc:
            self._error = exc
            return False
        self._gate.release_on_behalf_of(result.id)
        self._session_ledger.add(result)
        n, ok, kinds = self._written
        if result.ok:
            ok += 1
        else:
            kind = result.error.kind.value
            kinds = {**kinds, kind: kinds.get(kind, 0) + 1}
        self._written = (n + 1, ok, kinds)
        assert self._wake is not None
        self._wake.set()
        return True

    async def _syncer(self) -> None:
        """Fsync what was written, in groups, and count it as done; save the ledger now and then."""
        assert self._writer is not None
        while True:
            assert self._wake is not None
            await self._wake.wait()
            self._wake = anyio.Event()
            written = self._written
            appended = self._writer.appended
            files = self._writer.take_dirty()
            if files:
                try:
                    await anyio.to_thread.run_sync(RecordWriter.sync, files)
                except OutputWriteError as exc:
                    self._fail(exc)
                    return
            self._durable = written
            self._durable_marks = self._base_marks.plus(appended)
            now = anyio.current_time()
            if now - self._last_checkpoint >= _CHECKPOINT_EVERY:
                self._last_checkpoint = now
                try:
                    await anyio.to_thread.run_sync(self._save_ledger, now)
                except OSError as exc:
                    self._fail(OutputWriteError(manifest_path(self._output), exc))
                    return

    def _fail(self, error: OutputWriteError) -> None:
        if self._error is None:
            self._error = error
        if self._run_scope is not None:
            self._run_scope.cancel()

    async def _grace_timer(self) -> None:
        assert self._stop_event is not None
        await self._stop_event.wait()
        await anyio.sleep(self._grace)
        if self._run_scope is not None:
            self._run_scope.cancel()

    async def _finish(self) -> None:
        """Sync everything written, save the ledger and close the files (shielded)."""
        try:
            if self._writer is not None:
                written = self._written
                appended = self._writer.appended
                if self._error is None:
                    paths = (self._output, self._errors_path)
                    files = list(zip(self._fds, paths, strict=True))
                    try:
                        await anyio.to_thread.run_sync(RecordWriter.sync, files)
                        self._writer.take_dirty()
                        self._durable = written
                        self._durable_marks = self._base_marks.plus(appended)
                    except OutputWriteError as exc:
                        self._error = exc
                try:
                    await anyio.to_thread.run_sync(self._save_ledger, anyio.current_time())
                except OSError as exc:
                    if self._error is None:
                        self._error = OutputWriteError(manifest_path(self._output), exc)
        finally:
            self._close()
            self._state = "finished"

    def _session_wall(self, now: float) -> float:
        if self._send_t0 is None:
            return 0.0
        end = self._send_t1 if self._send_t1 is not None else now
        return max(end - self._send_t0, 0.0)

    def _whole_ledger(self, now: float) -> Ledger:
        wall = self._session_wall(now)
        return self._prev_ledger.merged(self._session_ledger, wall_time_s=wall, sessions=1)

    def _save_ledger(self, now: float) -> None:
        assert self._identity is not None
        # Only synced records are counted: the manifest may lag behind the files, never lead.
        save_manifest(
            manifest_path(self._output),
            self._identity,
            self._whole_ledger(now),
            self._durable_marks,
        )

    def _close(self) -> None:
        fds, self._fds = self._fds, []
        for fd in fds:
            os.close(fd)
        spool, self._spool = self._spool, None
        if spool is not None:
            with contextlib.suppress(OSError):
                os.unlink(spool)

    def _summary(self, *, interrupted: bool) -> JobSummary:
        progress = self.statistics()
        now = self._send_t1 if self._send_t1 is not None else 0.0
        whole = self._whole_ledger(now).statistics(
            succeeded=progress.succeeded,
            failed=progress.failed,
            failures_by_kind=progress.failures_by_kind,
        )
        # From the ledger's histogram, like the whole job's: exact percentiles would sort one
        # Python float per result, tens of megabytes at a million lines.
        n, ok, kinds = self._durable
        session = (
            Ledger()
            .merged(self._session_ledger, wall_time_s=self._session_wall(now), sessions=1)
            .statistics(succeeded=ok, failed=n - ok, failures_by_kind=kinds)
        )
        return JobSummary(
            input=self._input,
            output=self._output,
            errors=self._errors_path,
            total=progress.total,
            succeeded=progress.succeeded,
            failed=progress.failed,
            skipped=progress.skipped,
            recorded=self._durable[0],
            # A stop that came after the last record changed nothing: the job is complete.
            interrupted=interrupted and (self._scan is None or progress.done < progress.total),
            statistics=whole,
            session=session,
        )


async def run_jsonl(
    client: Client,
    input: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    errors: str | os.PathLike[str] | None = None,
    model: str | None = None,
    retry_failed: bool = True,
    restart: bool = False,
) -> JobSummary:
    """Run an OpenAI Batch JSONL file through *client*; the engine of ``corral run``.

    Success records go to *output* and failure records to *errors*, as OpenAI Batch output
    lines in completion order: join them to the input on ``custom_id``. Calling it again with
    the same files resumes the job; see :class:`JsonlJob` for the details and for stopping a job
    gracefully. Cancelling the call stops at once and leaves the files valid.

    Args:
        client: An open :class:`corral.Client`.
        input: The input JSONL file.
        output: The output JSONL file.
        errors: The errors JSONL file; ``<output stem>.errors.jsonl`` when not given.
        model: A model that replaces every body's model.
        retry_failed: Send again the ids recorded in the errors file by an earlier run.
        restart: Start over even if the output belongs to another job (old files are kept
            with a ``.bak`` suffix).
    """
    job = JsonlJob(
        client,
        input,
        output,
        errors=errors,
        model=model,
        retry_failed=retry_failed,
        restart=restart,
    )
    return await job.run()


# -- file helpers -----------------------------------------------------------------------------


def _check_marks(existing: ExistingFile, manifest: str, records: int, size: int) -> None:
    """Raise :class:`OutputLostError` when a file holds fewer records or bytes than its mark."""
    if existing.records < records or existing.valid_bytes < size:
        raise OutputLostError(
            existing.path, manifest, (records, size), (existing.records, existing.valid_bytes)
        )


def _is_stream(path: str) -> bool:
    """Whether *path* is a pipe, a socket or a device rather than a file that can be read twice."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False  # reported when the scan opens it
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def _spool_input(source: str, output: str, should_stop: Callable[[], bool]) -> tuple[str, str]:
    """Copy a piped input to a temporary file next to the output; return it and its label.

    A job reads its input twice, which a pipe allows only once. The label, which the manifest
    records as the input's path, carries the content's SHA-256, so that the same data piped
    again resumes the job.

    Args:
        source: The pipe (``/dev/stdin``, ``/dev/fd/63``, a FIFO).
        output: The job's output file, next to which the copy is made.
        should_stop: Polled between chunks; when it returns True the copy stops with
            :class:`ScanStopped`.
    """
    directory = os.path.dirname(os.path.abspath(output))
    name = os.path.basename(output)
    try:
        fd, spool = tempfile.mkstemp(prefix=f".{name}.", suffix=".input", dir=directory)
    except OSError as exc:
        raise OutputWriteError(exc.filename or directory, exc) from exc
    try:
        digest = _copy_to(source, fd, spool, should_stop)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(spool)
        raise
    os.close(fd)
    # Not the pipe's own path: /dev/fd/63 today may be /dev/fd/62 on the rerun.
    return spool, f"piped input (sha256 {digest})"


def _copy_to(source: str, fd: int, path: str, should_stop: Callable[[], bool]) -> str:
    """Copy *source* to *fd* (the file *path*); return the SHA-256 of what was copied."""
    digest = hashlib.sha256()
    with open(source, "rb") as src:
        while chunk := src.read(1 << 16):
            if should_stop():
                raise ScanStopped
            digest.update(chunk)
            try:
                write_all(fd, chunk)
            except OSError as exc:
                raise OutputWriteError(path, exc) from exc
    return digest.hexdigest()


def _non_empty(path: str) -> bool:
    try:
        return os.stat(path).st_size > 0
    except FileNotFoundError:
        return False


def _back_up(path: str) -> None:
    """Rename *path* to the first free ``path.bak``, ``path.2.bak``, ... if it exists."""
    if not os.path.exists(path):
        return
    for n in range(1, 10_000):
        candidate = f"{path}.bak" if n == 1 else f"{path}.{n}.bak"
        if not os.path.exists(candidate):
            os.replace(path, candidate)
            return
    raise FileExistsError(f"too many backups of {path}; remove some")


def _open_locked(path: str) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise JobLockedError(path) from None
    return fd


def _cut(fd: int, size: int, torn: int) -> None:
    """Cut a torn tail off an open file, durably."""
    if torn > 0:
        os.ftruncate(fd, size)
        os.fsync(fd)


def _sync_directory(path: str) -> None:
    """Fsync the directory holding *path*, so that a newly created file survives a power cut."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - a platform that cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse; the data files are synced
        pass
    finally:
        os.close(fd)
