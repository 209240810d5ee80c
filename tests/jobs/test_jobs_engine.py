"""The job engine end to end against the in-process mock server, on both backends."""

from __future__ import annotations

import errno
import json
import os
import random
from pathlib import Path

import anyio
import pytest

import corral
from corral._errors import (
    CorruptOutputError,
    JobLockedError,
    JobMismatchError,
    OutputWriteError,
)
from corral.jobs._engine import JsonlJob, default_errors_path, run_jsonl
from corral.jobs._manifest import manifest_path
from corral.testing._mock.config import MockConfig
from corral.testing._mock.server import MockServer

from .jobkit import (
    answers,
    batch_line,
    hits_by_id,
    ids_of,
    mock_client,
    read_jsonl,
    rewind_manifest,
    wait_until,
    write_input,
    write_lines,
)

pytestmark = pytest.mark.anyio


def _paths(tmp_path: Path) -> tuple[Path, Path, Path]:
    return tmp_path / "in.jsonl", tmp_path / "out.jsonl", tmp_path / "out.errors.jsonl"


def _names(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir()}


def _exactly_once(ids: list[str], out: Path, err: Path) -> None:
    recorded = ids_of(out) + ids_of(err)
    assert sorted(recorded) == sorted(ids)


async def test_a_job_writes_one_record_per_request(tmp_path: Path) -> None:
    """Every input line yields one Batch output record, each id sent exactly once."""
    inp, out, err = _paths(tmp_path)
    ids = write_input(inp, 40)
    server = MockServer()
    async with mock_client(server) as client:
        summary = await run_jsonl(client, inp, out)
    assert summary.exit_code == 0
    assert (summary.total, summary.succeeded, summary.failed, summary.recorded) == (40, 40, 0, 40)
    assert summary.statistics.total == 40
    assert summary.statistics.usage.output_tokens > 0
    assert sorted(ids_of(out)) == sorted(ids)
    assert read_jsonl(err) == []
    assert answers(out)["q3"] == "9"
    assert set(hits_by_id(server, ids).values()) == {1}
    assert Path(manifest_path(str(out))).name in _names(tmp_path)
    assert default_errors_path(str(out)) == str(err)


async def test_resume_never_resends_a_durable_success(tmp_path: Path) -> None:
    """A rerun sends only the ids without a record, and the totals cover both runs."""
    inp, out, _ = _paths(tmp_path)
    ids = write_input(inp, 30)
    async with mock_client() as client:
        await run_jsonl(client, inp, out)
    kept = out.read_bytes().splitlines(keepends=True)[:20]
    out.write_bytes(b"".join(kept))
    rewind_manifest(out, 20)
    done = set(ids_of(out))
    server = MockServer()
    async with mock_client(server) as client:
        summary = await run_jsonl(client, inp, out)
    assert summary.skipped == 20
    assert summary.recorded == 10
    assert summary.succeeded == 30
    assert summary.statistics.total == 30
    assert summary.statistics.attempts == 40, "the ledger adds both runs' attempts"
    assert summary.session.total == 10
    assert summary.session.attempts == 10
    assert summary.session.latency_p50_s is not None
    hits = hits_by_id(server, ids)
    assert all(hits[cid] == 0 for cid in done)
    assert all(hits[cid] == 1 for cid in ids if cid not in done)
    assert sorted(ids_of(out)) == sorted(ids)


async def test_identical_bodies_with_different_ids_are_both_sent(tmp_path: Path) -> None:
    """Two lines with the same body but different ids are two requests and two records."""
    inp, out, _ = _paths(tmp_path)
    write_lines(inp, [batch_line("a", "What is 1 + 1?"), batch_line("b", "What is 1 + 1?")])
    server = MockServer()
    async with mock_client(server) as client:
        await run_jsonl(client, inp, out)
    assert hits_by_id(server, ["a", "b"]) == {"a": 1, "b": 1}
    assert answers(out) == {"a": "2", "b": "2"}


async def test_failures_are_recorded_then_retried_on_rerun(tmp_path: Path) -> None:
    """Failures go to the errors file (exit 1); a rerun sends them again and clears them."""
    inp, out, err = _paths(tmp_path)
    ids = write_input(inp, 40)
    async with mock_client(error_rates={500: 0.5}, seed=3) as client:
        first = await run_jsonl(client, inp, out)
    assert first.failed > 0
    assert first.exit_code == 1
    assert first.statistics.failures_by_kind == {"server_error": first.failed}
    failed = set(ids_of(err))
    assert all(r["error"]["code"] == "server_error" for r in read_jsonl(err))
    _exactly_once(ids, out, err)

    server = MockServer()
    async with mock_client(server) as client:
        second = await run_jsonl(client, inp, out)
    assert second.exit_code == 0
    assert second.failed == 0
    assert read_jsonl(err) == []
    assert sorted(ids_of(out)) == sorted(ids)
    assert {cid for cid, n in hits_by_id(server, ids).items() if n} == failed
    assert second.statistics.attempts == 40 + len(failed)


async def test_no_retry_failed_keeps_earlier_failures(tmp_path: Path) -> None:
    """With retry_failed=False, ids in the errors file are done: nothing is sent again."""
    inp, out, err = _paths(tmp_path)
    ids = write_input(inp, 10)
    async with mock_client(error_rates={400: 1.0}) as client:
        await run_jsonl(client, inp, out)
    assert sorted(ids_of(err)) == sorted(ids)
    server = MockServer()
    async with mock_client(server) as client:
        summary = await run_jsonl(client, inp, out, retry_failed=False)
    assert server.statistics().total_hits == 0
    assert summary.failed == 10
    assert summary.statistics.failures_by_kind == {"bad_request": 10}
    assert summary.exit_code == 1
    assert sorted(ids_of(err)) == sorted(ids)


async def test_identity_guard_refuses_another_input_or_model(tmp_path: Path) -> None:
    """A changed input or model override is refused before anything is sent; restart backs up."""
    inp, out, err = _paths(tmp_path)
    write_input(inp, 5)
    async with mock_client() as client:
        await run_jsonl(client, inp, out)
    original = out.read_bytes()

    server = MockServer()
    async with mock_client(server) as client:
        with pytest.raises(JobMismatchError, match="model"):
            await run_jsonl(client, inp, out, model="gpt-4o")
        write_lines(inp, [*inp.read_text().splitlines(), batch_line("new", "What is 2 + 2?")])
        with pytest.raises(JobMismatchError) as info:
            await run_jsonl(client, inp, out)
        assert any("input size" in d for d in info.value.differences)
        assert any("custom_ids" in d for d in info.value.differences)
        assert "--restart" in str(info.value)
        assert server.statistics().total_hits == 0
        assert out.read_bytes() == original

        summary = await run_jsonl(client, inp, out, restart=True)
    assert summary.succeeded == 6
    assert server.statistics().total_hits == 6
    assert (tmp_path / "out.jsonl.bak").read_bytes() == original
    assert (tmp_path / "out.jsonl.manifest.json.bak").exists()
    assert err.exists()


async def test_an_output_without_manifest_is_not_adopted(tmp_path: Path) -> None:
    """An existing non-empty output with no manifest is refused: corral cannot tell its job."""
    inp, out, _ = _paths(tmp_path)
    write_input(inp, 3)
    out.write_text('{"custom_id": "q0", "response": {"status_code": 200}}\n')
    async with mock_client() as client:
        with pytest.raises(JobMismatchError, match="without a manifest"):
            await run_jsonl(client, inp, out)


async def test_shuffled_input_joins_to_identical_results(tmp_path: Path) -> None:
    """Output order follows completion; joined on custom_id, a shuffled input gives the same."""
    inp = tmp_path / "in.jsonl"
    ids = write_input(inp, 60)
    lines = inp.read_text().splitlines()
    random.Random(7).shuffle(lines)
    shuffled = write_lines(tmp_path / "shuffled.jsonl", lines)
    async with mock_client() as client:
        await run_jsonl(client, inp, tmp_path / "a.jsonl")
        await run_jsonl(client, shuffled, tmp_path / "b.jsonl")
    a, b = answers(tmp_path / "a.jsonl"), answers(tmp_path / "b.jsonl")
    assert sorted(a) == sorted(ids)
    assert a == b


def _torn(record: bytes, how: str) -> bytes:
    if how == "mid-record":
        return record[: len(record) // 2]
    if how == "mid-utf8":
        obj = json.loads(record)
        obj["response"]["body"]["note"] = "caf\u00e9 \u2615\u2615"
        data = json.dumps(obj, ensure_ascii=False).encode()
        return data[: data.index("\u2615".encode()) + 1]
    if how == "no-newline":
        return record.rstrip(b"\n")
    return b"\x00" * 512


@pytest.mark.parametrize("how", ["mid-record", "mid-utf8", "no-newline", "zeros"])
async def test_resume_repairs_a_torn_tail_and_appends_readable_records(
    tmp_path: Path, how: str
) -> None:
    """A torn last record counts as not done: it is cut off, sent again, and the file reads."""
    inp, out, err = _paths(tmp_path)
    ids = write_input(inp, 12)
    async with mock_client() as client:
        await run_jsonl(client, inp, out)
    records = out.read_bytes().splitlines(keepends=True)
    out.write_bytes(b"".join(records[:9]) + _torn(records[9], how))
    rewind_manifest(out, 9)
    done = {json.loads(r)["custom_id"] for r in records[:9]}
    server = MockServer()
    async with mock_client(server) as client:
        summary = await run_jsonl(client, inp, out)
    assert summary.exit_code == 0
    _exactly_once(ids, out, err)
    hits = hits_by_id(server, ids)
    assert {cid for cid, n in hits.items() if n} == set(ids) - done
    assert all(n <= 1 for n in hits.values())


async def test_a_damaged_middle_line_stops_the_job_before_sending(tmp_path: Path) -> None:
    """A malformed line between good ones fails loudly with its line number; nothing is sent."""
    inp, out, _ = _paths(tmp_path)
    write_input(inp, 6)
    async with mock_client() as client:
        await run_jsonl(client, inp, out)
    lines = out.read_bytes().splitlines(keepends=True)
    lines[2] = b"{oops\n"
    out.write_bytes(b"".join(lines))
    server = MockServer()
    async with mock_client(server) as client:
        with pytest.raises(CorruptOutputError) as info:
            await run_jsonl(client, inp, out)
    assert info.value.line == 3
    assert server.statistics().total_hits == 0


async def test_a_second_run_on_the_same_output_is_locked_out(tmp_path: Path) -> None:
    """Two runs writing one output would interleave records: the second is refused, restart too."""
    inp, out, _ = _paths(tmp_path)
    write_input(inp, 20)
    async with mock_client(latency=0.05) as client:
        first = JsonlJob(client, inp, out)
        async with anyio.create_task_group() as tg:
            tg.start_soon(first.run)
            await wait_until(lambda: first.statistics().state == "running")
            with pytest.raises(JobLockedError):
                await run_jsonl(client, inp, out)
            with pytest.raises(JobLockedError):
                await run_jsonl(client, inp, out, restart=True)
    assert first.statistics().done == 20


def _fault_on(path: Path, real: object) -> object:
    def is_target(fd: int) -> bool:
        try:
            return os.readlink(f"/proc/self/fd/{fd}") == str(path)
        except OSError:
            return False

    return is_target


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc to find the file")
@pytest.mark.parametrize("fault", ["enospc-mid-record", "fsync-eio"])
async def test_io_faults_stop_the_job_without_counting_incomplete_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fault: str
) -> None:
    """A full disk or a failing fsync stops the job with a clear error; done never outruns disk."""
    inp, out, err = _paths(tmp_path)
    ids = write_input(inp, 40)
    real_write, real_fsync = os.write, os.fsync
    is_target = _fault_on(out.resolve(), None)
    writes = 0

    def faulty_write(fd: int, data: bytes | memoryview) -> int:
        nonlocal writes
        if not is_target(fd):  # type: ignore[operator]
            return real_write(fd, data)
        writes += 1
        if writes == 15:
            return real_write(fd, bytes(data[: len(data) // 2]))
        if writes > 15:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    def faulty_fsync(fd: int) -> None:
        # Fail once ten records are on the page: every earlier fsync covered fewer, so the job
        # cannot have made all 40 durable first, however fast it runs.
        if is_target(fd) and out.read_bytes().count(b"\n") >= 10:  # type: ignore[operator]
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_fsync(fd)

    async with mock_client(concurrency=4, latency=0.002) as client:
        job = JsonlJob(client, inp, out)
        if fault == "enospc-mid-record":
            monkeypatch.setattr(os, "write", faulty_write)
            expected = os.strerror(errno.ENOSPC)
        else:
            monkeypatch.setattr(os, "fsync", faulty_fsync)
            expected = os.strerror(errno.EIO)
        with pytest.raises(OutputWriteError, match=expected) as info:
            await job.run()
        monkeypatch.undo()
    assert info.value.path == str(out)
    complete = len(ids_of(err)) + sum(
        1 for line in out.read_bytes().splitlines(keepends=True) if line.endswith(b"\n")
    )
    assert job.statistics().done <= complete
    assert job.statistics().done < 40

    async with mock_client() as client:
        summary = await run_jsonl(client, inp, out)
    assert summary.exit_code == 0
    _exactly_once(ids, out, err)


async def test_graceful_stop_finishes_in_flight_requests_then_resumes(tmp_path: Path) -> None:
    """stop() admits nothing new, lets in-flight requests finish and record; a rerun completes."""
    inp, out, err = _paths(tmp_path)
    ids = write_input(inp, 40)
    server = MockServer(MockConfig(latency=0.05))
    async with mock_client(server, concurrency=4) as client:
        job = JsonlJob(client, inp, out, grace=10)
        async with anyio.create_task_group() as tg:

            async def stop_soon() -> None:
                await wait_until(lambda: job.statistics().done >= 8)
                job.stop()

            tg.start_soon(stop_soon)
            summary = await job.run()
    assert summary.interrupted
    assert summary.exit_code == 130
    assert 8 <= summary.succeeded < 40
    hit = {cid for cid, n in hits_by_id(server, ids).items() if n}
    assert hit == set(ids_of(out)), "every request sent during the grace period was recorded"

    async with mock_client() as client:
        final = await run_jsonl(client, inp, out)
    assert final.exit_code == 0
    _exactly_once(ids, out, err)
    assert final.statistics.total == 40
    assert final.statistics.attempts == 40
    assert final.statistics.latency_p50_s is not None


async def test_grace_expiry_cancels_in_flight_requests(tmp_path: Path) -> None:
    """After the grace period, in-flight requests are cancelled and leave no records."""
    inp, out, err = _paths(tmp_path)
    ids = write_input(inp, 10)
    server = MockServer(MockConfig(latency=60.0))
    async with mock_client(server, concurrency=4) as client:
        job = JsonlJob(client, inp, out, grace=0.05)
        async with anyio.create_task_group() as tg:

            async def stop_when_sent() -> None:
                await wait_until(lambda: server.statistics().in_flight >= 4)
                job.stop()

            tg.start_soon(stop_when_sent)
            with anyio.fail_after(10):
                summary = await job.run()
    assert summary.interrupted
    assert summary.recorded == 0
    assert read_jsonl(out) == []
    async with mock_client() as client:
        final = await run_jsonl(client, inp, out)
    _exactly_once(ids, out, err)
    assert final.exit_code == 0


async def test_abort_cancels_at_once_and_keeps_files_valid(tmp_path: Path) -> None:
    """abort() ends the run immediately, even with a long grace; the output stays readable."""
    inp, out, err = _paths(tmp_path)
    ids = write_input(inp, 30)
    server = MockServer(MockConfig(latency=(0.0, 0.3), seed=1))
    async with mock_client(server, concurrency=6) as client:
        job = JsonlJob(client, inp, out, grace=60)
        async with anyio.create_task_group() as tg:

            async def stop_then_abort() -> None:
                await wait_until(lambda: job.statistics().done >= 3)
                job.stop()
                await anyio.sleep(0.01)
                job.abort()

            tg.start_soon(stop_then_abort)
            with anyio.fail_after(5):
                summary = await job.run()
    assert summary.interrupted
    assert len(read_jsonl(out)) == summary.succeeded
    async with mock_client() as client:
        await run_jsonl(client, inp, out)
    _exactly_once(ids, out, err)


async def test_stop_before_run_sends_nothing(tmp_path: Path) -> None:
    """A job stopped before it starts validates nothing, sends nothing and reports interrupted."""
    inp, out, _ = _paths(tmp_path)
    write_input(inp, 5)
    server = MockServer()
    async with mock_client(server) as client:
        job = JsonlJob(client, inp, out)
        job.stop()
        summary = await job.run()
    assert summary.interrupted
    assert server.statistics().total_hits == 0
    assert "JsonlJob" in repr(job)


async def test_bad_input_is_reported_before_anything_is_sent(tmp_path: Path) -> None:
    """An input with bad lines raises InvalidInputError, creates no output and sends nothing."""
    inp, out, _ = _paths(tmp_path)
    write_lines(inp, [batch_line("a", "1"), "{", batch_line("a", "2")])
    server = MockServer()
    async with mock_client(server) as client:
        with pytest.raises(corral.InvalidInputError) as info:
            await run_jsonl(client, inp, out)
    assert [n for n, _ in info.value.problems] == [2, 3]
    assert not out.exists()
    assert server.statistics().total_hits == 0


async def test_an_input_rewritten_mid_run_stops_the_job_with_a_clear_error(tmp_path: Path) -> None:
    """If the input changes while the job runs, it stops with InvalidInputError, unwrapped."""
    inp, out, err = _paths(tmp_path)
    write_input(inp, 40)
    async with mock_client(concurrency=2, latency=0.01) as client:
        job = JsonlJob(client, inp, out)
        async with anyio.create_task_group() as tg:

            async def rewrite() -> None:
                await wait_until(lambda: job.statistics().done >= 2)
                write_input(inp, 40, prefix="other")

            tg.start_soon(rewrite)
            with pytest.raises(corral.InvalidInputError, match="changed while the job ran"):
                await job.run()
    recorded = ids_of(out) + ids_of(err)
    assert 2 <= len(recorded) < 40
    assert all(cid.startswith("q") for cid in recorded), "nothing from the new input was sent"
    assert job.statistics().done == len(recorded)
