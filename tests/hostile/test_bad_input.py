"""Bad input that must fail one line, one request or the run cleanly, never crash it.

Piped inputs, lines nested deeper than the parser allows, headers that cannot be sent, a disk
already full when a job starts, and an output cut behind the manifest's back: each either runs
correctly or stops with a clear error and the documented exit code, on asyncio and trio.
"""

from __future__ import annotations

import errno
import io
import json
import os
import sys
import threading
from pathlib import Path
from typing import Any

import anyio
import pytest

import corral
from corral import jobs as corral_jobs
from corral._cli import amain
from corral.jobs import _manifest
from corral.jobs._input import MAX_NESTING
from corral.providers import OpenAI
from corral.testing._mock.server import MockServer
from corral.testing._serve import serve

from ..cli.clikit import child_env, corral_command
from ..jobs.jobkit import batch_line, hits_by_id, ids_of, mock_client, write_input, write_lines

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True)
def _mock_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """Give a served mock server a key: it accepts any non-empty one."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")


async def run_cli(*args: str | Path) -> tuple[int, str, str]:
    """Run ``corral ARGS`` in this event loop; return the exit code, stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    code = await amain([str(a) for a in args], stdout=out, stderr=err, handle_signals=False)
    return code, out.getvalue(), err.getvalue()


def _leftovers(directory: Path, *expected: Path) -> list[str]:
    """Return the names in *directory* other than *expected*."""
    keep = {p.name for p in expected}
    return sorted(p.name for p in directory.iterdir() if p.name not in keep)


# -- piped input ---------------------------------------------------------------------------------


def _feed_fifo(path: Path, data: bytes) -> threading.Thread:
    """Write *data* into the FIFO at *path* from a thread (opening it blocks until read)."""

    def write() -> None:
        with open(path, "wb") as f:
            f.write(data)

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    return thread


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
async def test_a_piped_input_is_read_and_a_rerun_of_the_same_data_resumes(tmp_path: Path) -> None:
    """A FIFO input runs every line (not 0 of them), leaves no spool, and the same data resumes."""
    source = tmp_path / "src.jsonl"
    ids = write_input(source, 25)
    data = source.read_bytes()
    work = tmp_path / "work"
    work.mkdir()
    fifo, out = tmp_path / "in.fifo", work / "out.jsonl"
    os.mkfifo(fifo)
    server = MockServer()
    async with mock_client(server) as client:
        feeder = _feed_fifo(fifo, data)
        first = await corral.run_jsonl(client, fifo, out)
        feeder.join()
    assert (first.total, first.succeeded, first.exit_code) == (25, 25, 0)
    assert sorted(ids_of(out)) == sorted(ids)
    assert _leftovers(work, out, work / "out.errors.jsonl", work / "out.jsonl.manifest.json") == []
    manifest = json.loads((work / "out.jsonl.manifest.json").read_text())
    assert "sha256" in manifest["identity"]["input_path"]

    async with mock_client(server) as client:
        feeder = _feed_fifo(fifo, data)
        again = await corral.run_jsonl(client, fifo, out)
        feeder.join()
    assert (again.skipped, again.recorded, again.exit_code) == (25, 0, 0)
    assert all(n == 1 for n in hits_by_id(server, ids).values()), "nothing is sent twice"

    other = data.replace(b'"q0"', b'"z0"')
    async with mock_client(server) as client:
        feeder = _feed_fifo(fifo, other)
        with pytest.raises(corral.JobMismatchError, match="sha256"):
            await corral.run_jsonl(client, fifo, out)
        feeder.join()
    assert _leftovers(work, out, work / "out.errors.jsonl", work / "out.jsonl.manifest.json") == []


@pytest.mark.skipif(sys.platform != "linux", reason="uses /proc/self/fd")
async def test_corral_run_reads_dev_stdin_from_a_pipe(tmp_path: Path) -> None:
    """``cat in.jsonl | corral run /dev/stdin`` answers every line; the same data piped resumes."""
    source = tmp_path / "in.jsonl"
    ids = write_input(source, 12)
    out = tmp_path / "out.jsonl"
    done = await anyio.run_process(
        corral_command("run", "/dev/stdin", "-o", out, "--mock", "--no-progress"),
        input=source.read_bytes(),
        env=child_env(),
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    assert sorted(ids_of(out)) == sorted(ids)
    # The same data through another pipe path (as a process substitution's /dev/fd/N varies)
    # resumes: nothing is sent again, nothing recorded.
    again = await anyio.run_process(
        corral_command("run", "/proc/self/fd/0", "-o", out, "--mock", "--no-progress"),
        input=source.read_bytes(),
        env=child_env(),
        check=False,
    )
    assert again.returncode == 0, again.stderr.decode()
    assert len(ids_of(out)) == len(ids)


# -- lines nested too deeply ---------------------------------------------------------------------


def _deep_line(custom_id: str, depth: int) -> str:
    line = json.loads(batch_line(custom_id, "hi"))
    body = json.dumps(line["body"])[:-1] + ', "metadata": ' + "[" * depth + "]" * depth + "}"
    return (
        json.dumps({k: v for k, v in line.items() if k != "body"})[:-1] + ', "body": ' + body + "}"
    )


@pytest.mark.parametrize("depth", [1_000, 100_000])
async def test_a_line_nested_too_deeply_is_a_bad_line_with_its_number(
    tmp_path: Path, depth: int
) -> None:
    """A line nested past the parser's limit is reported by line number; nothing is sent."""
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_lines(inp, [batch_line("a", "hi"), _deep_line("b", depth), batch_line("c", "hi")])
    server = MockServer()
    async with mock_client(server) as client:
        with pytest.raises(corral.InvalidInputError) as info:
            await corral.run_jsonl(client, inp, out)
    assert [n for n, _ in info.value.problems] == [2]
    assert "nested too deeply" in info.value.problems[0][1]
    assert server.statistics().total_hits == 0


async def test_corral_run_exits_2_for_a_line_nested_too_deeply(tmp_path: Path) -> None:
    """The CLI reports the deep line's number and exits 2, not a RecursionError traceback."""
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_lines(inp, [batch_line("a", "hi"), _deep_line("b", 5_000)])
    code, _, stderr = await run_cli("run", inp, "-o", out, "--mock", "--no-progress")
    assert code == 2
    assert "line 2" in stderr
    assert "Traceback" not in stderr


async def test_a_line_nested_to_the_limit_runs_and_one_level_more_is_refused(
    tmp_path: Path,
) -> None:
    """At the nesting limit a line is answered (both passes agree); one level deeper it is bad."""
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    # The line's object and its body add two levels to the metadata's own.
    at_limit = _deep_line("b", MAX_NESTING - 2)
    write_lines(inp, [batch_line("a", "hi"), at_limit, batch_line("c", "hi")])
    async with mock_client() as client:
        summary = await corral.run_jsonl(client, inp, out)
    assert (summary.succeeded, summary.exit_code) == (3, 0)

    write_lines(inp, [batch_line("a", "hi"), _deep_line("b", MAX_NESTING - 1)])
    async with mock_client() as client:
        with pytest.raises(corral.InvalidInputError) as info:
            await corral.run_jsonl(client, inp, tmp_path / "other.jsonl")
    assert [n for n, _ in info.value.problems] == [2]


async def test_brackets_inside_strings_do_not_count_as_nesting(tmp_path: Path) -> None:
    """A prompt full of brackets (code, escaped quotes) is not nesting: it is sent and answered."""
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    prompt = '[{"x": "' + "[{" * 2_000 + '\\"' + "]}" * 2_000
    write_lines(inp, [batch_line("a", prompt), batch_line("b", "hi")])
    async with mock_client() as client:
        summary = await corral.run_jsonl(client, inp, out)
    assert (summary.succeeded, summary.exit_code) == (2, 0)


# -- headers that cannot be sent -----------------------------------------------------------------


class _HeaderPerRequest(OpenAI):
    """An adapter that adds a per-request header, unsendable for one id."""

    def _headers(self, request_id: str) -> dict[str, str]:
        headers = super()._headers(request_id)
        if request_id == "bad-crlf":
            headers["x-trace"] = "a\r\nx-injected: 1"
        elif request_id == "bad-utf8":
            headers["x-trace"] = "caf\u00e9"
        return headers


async def test_an_unsendable_request_header_fails_only_that_request() -> None:
    """A header with CR/LF or non-ASCII fails its request as bad_request, unsent; others succeed."""
    async with serve(MockServer()) as running:
        provider = _HeaderPerRequest(running.url + "/v1", api_key="sk-test")
        requests = [
            corral.ChatRequest.from_openai(
                {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "What is 1+1?"}]},
                id=rid,
            )
            for rid in ("ok-1", "bad-crlf", "bad-utf8", "ok-2")
        ]
        async with corral.Client(provider, retry=corral.RetryPolicy(attempts=3)) as client:
            results = {r.id: r for r in await client.run(requests)}
    assert results["ok-1"].ok
    assert results["ok-2"].ok
    for rid in ("bad-crlf", "bad-utf8"):
        failure = results[rid]
        assert isinstance(failure, corral.Failure)
        assert failure.error.kind is corral.ErrorKind.BAD_REQUEST
        assert failure.attempts == 0, "refused before sending, never retried"
        assert "x-trace" in failure.error.message


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"base_url": "http://127.0.0.1:99999/v1"}, "base_url"),
        ({"headers": {"x-team": "\u00e9quipe"}}, "x-team"),
        ({"headers": {"x-team": "a\r\nx-injected: 1"}}, "x-team"),
    ],
)
async def test_run_never_starts_with_an_unsendable_configuration(
    kwargs: dict[str, Any], named: str
) -> None:
    """A bad port or header is refused when the provider is built, not by every request."""
    with pytest.raises(corral.ConfigurationError, match=named):
        OpenAI(**{"base_url": "http://127.0.0.1:9/v1", "api_key": "sk-test", **kwargs})


# -- a disk already full -------------------------------------------------------------------------


def _disk_full(*args: Any, **kwargs: Any) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


async def test_a_full_disk_at_start_is_an_output_error_leaving_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No space for the manifest: OutputWriteError, no request sent, no file left behind."""
    inp = tmp_path / "in.jsonl"
    write_input(inp, 5)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.setattr(_manifest, "write_all", _disk_full)
    server = MockServer()
    async with mock_client(server) as client:
        with pytest.raises(corral.OutputWriteError) as info:
            await corral.run_jsonl(client, inp, work / "out.jsonl")
    assert info.value.error.errno == errno.ENOSPC
    assert server.statistics().total_hits == 0
    assert _leftovers(work) == []


async def test_corral_run_exits_1_when_the_disk_is_full_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CLI names the output (not "input") and exits 1, leaving no .tmp manifest."""
    inp = tmp_path / "in.jsonl"
    write_input(inp, 5)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.setattr(_manifest, "write_all", _disk_full)
    code, _, stderr = await run_cli("run", inp, "-o", work / "out.jsonl", "--mock", "--no-progress")
    assert code == 1
    assert "No space left on device" in stderr
    assert "input:" not in stderr
    assert "out.jsonl.manifest.json" in stderr
    assert _leftovers(work) == []


@pytest.mark.skipif(
    sys.platform != "linux" or os.geteuid() != 0, reason="mounting a tmpfs needs root on Linux"
)
async def test_a_really_full_tmpfs_at_start_is_an_output_error(tmp_path: Path) -> None:
    """On a real, full 64 KiB tmpfs the job stops as an output error with nothing left behind."""
    inp = tmp_path / "in.jsonl"
    write_input(inp, 5)
    mount = tmp_path / "tiny"
    mount.mkdir()
    mounted = await anyio.run_process(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], check=False
    )
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        filler = mount / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
        try:
            with pytest.raises(OSError, match="No space"):
                while True:
                    os.write(fd, b"\0" * 4096)
        finally:
            os.close(fd)
        async with mock_client() as client:
            with pytest.raises(corral.OutputWriteError):
                await corral.run_jsonl(client, inp, mount / "out.jsonl")
        assert _leftovers(mount, filler) == []
    finally:
        await anyio.run_process(["umount", str(mount)], check=False)


# -- output lost behind the manifest's back ------------------------------------------------------


@pytest.mark.parametrize("how", ["truncated", "deleted", "emptied"])
async def test_an_output_that_lost_records_is_refused_unless_restart(
    tmp_path: Path, how: str
) -> None:
    """Records the manifest counts are gone: refuse (nothing resent) unless restart=True."""
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    ids = write_input(inp, 30)
    async with mock_client() as client:
        await corral.run_jsonl(client, inp, out)
    if how == "truncated":
        out.write_bytes(b"".join(out.read_bytes().splitlines(keepends=True)[:10]))
    elif how == "deleted":
        out.unlink()
    else:
        out.write_bytes(b"")
    server = MockServer()
    async with mock_client(server) as client:
        with pytest.raises(corral.OutputLostError) as info:
            await corral.run_jsonl(client, inp, out)
    assert server.statistics().total_hits == 0
    assert info.value.expected[0] == 30
    assert "--restart" in str(info.value)
    assert isinstance(info.value, corral_jobs.JobError)
    if how == "deleted":
        assert not out.exists(), "the refusal creates no empty output"
    async with mock_client(server) as client:
        summary = await corral.run_jsonl(client, inp, out, restart=True)
    assert (summary.succeeded, summary.exit_code) == (30, 0)
    assert sorted(ids_of(out)) == sorted(ids)


async def test_an_errors_file_that_lost_records_is_refused_when_not_retrying(
    tmp_path: Path,
) -> None:
    """With retry_failed=False the errors file is checked too: cut, it is refused."""
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    errors = tmp_path / "out.errors.jsonl"
    write_input(inp, 30)
    async with mock_client(error_rates={500: 0.5}, seed=3) as client:
        first = await corral.run_jsonl(client, inp, out)
    assert first.failed > 1
    errors.write_bytes(errors.read_bytes().splitlines(keepends=True)[0])
    server = MockServer()
    async with mock_client(server) as client:
        with pytest.raises(corral.OutputLostError, match="errors"):
            await corral.run_jsonl(client, inp, out, retry_failed=False)
        # Retrying failures sends them again anyway: a cut errors file loses nothing.
        summary = await corral.run_jsonl(client, inp, out)
    assert summary.exit_code == 0
    assert server.statistics().total_hits == first.failed


async def test_corral_run_refuses_a_truncated_output_and_restart_overrides(
    tmp_path: Path,
) -> None:
    """The CLI says what it found and the fix (exit 2); ``--restart`` starts over."""
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_input(inp, 8)
    args = ("run", inp, "-o", out, "--mock", "--no-progress")
    assert (await run_cli(*args))[0] == 0
    out.write_bytes(b"".join(out.read_bytes().splitlines(keepends=True)[:3]))
    code, _, stderr = await run_cli(*args)
    assert code == 2
    assert "3 record(s)" in stderr
    assert "8 record(s)" in stderr
    assert "--restart" in stderr
    code, _, _ = await run_cli(*args, "--restart")
    assert code == 0
    assert len(ids_of(out)) == 8


async def test_a_manifest_behind_the_output_resumes_normally(tmp_path: Path) -> None:
    """A crash between syncing records and the next checkpoint leaves the manifest behind: fine."""
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    ids = write_input(inp, 20)
    async with mock_client() as client:
        await corral.run_jsonl(client, inp, out)
    mpath = anyio.Path(str(out) + ".manifest.json")
    data = json.loads(await mpath.read_text())
    assert data["files"]["output_records"] == 20
    assert data["files"]["output_bytes"] == out.stat().st_size
    data["files"].update(output_records=0, output_bytes=0)
    await mpath.write_text(json.dumps(data))
    server = MockServer()
    async with mock_client(server) as client:
        summary = await corral.run_jsonl(client, inp, out)
    assert (summary.skipped, summary.recorded) == (20, 0)
    assert server.statistics().total_hits == 0
    assert sorted(ids_of(out)) == sorted(ids)


async def test_the_manifest_never_counts_records_that_are_not_synced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every manifest saved while a job runs counts at most what the output holds on disk."""
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    # Long enough (300 lines at 10 ms, four at a time) that a loaded machine's slow fsync cannot
    # let the whole job finish between two wakes of the syncer.
    write_input(inp, 300)
    seen: list[tuple[int, int]] = []
    save = _manifest.save_manifest

    def checked(path: str, identity: Any, ledger: Any, marks: Any) -> None:
        on_disk = out.stat().st_size if out.exists() else 0
        seen.append((marks.output_bytes, on_disk))
        save(path, identity, ledger, marks)

    from corral.jobs import _engine

    monkeypatch.setattr(_engine, "save_manifest", checked)
    monkeypatch.setattr(_engine, "_CHECKPOINT_EVERY", 0.0)
    async with mock_client(concurrency=4, latency=0.01) as client:
        await corral.run_jsonl(client, inp, out)
    assert len(seen) >= 3, "saved at the start, at least once while running, and at the end"
    assert all(mark <= size for mark, size in seen)
    assert seen[-1][0] == out.stat().st_size
