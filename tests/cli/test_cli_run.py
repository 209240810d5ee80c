"""``corral run`` in-process: exit codes, flags, files, summaries and bad input."""

from __future__ import annotations

import io
import json
import os
from contextlib import AsyncExitStack
from pathlib import Path

import pytest

import corral
from corral import _cli
from corral._cli import amain
from corral.testing._mock.config import MockConfig
from corral.testing._mock.server import MockServer
from corral.testing._serve import serve

from .clikit import EXAMPLE, batch_line, complete_records, ids_of, write_input

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True)
def _mock_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """Give the served mock server a key: it accepts any non-empty one."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")


async def run_cli(*args: str | Path) -> tuple[int, str, str]:
    """Run ``corral ARGS`` in this event loop; return the exit code, stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    code = await amain([str(a) for a in args], stdout=out, stderr=err, handle_signals=False)
    return code, out.getvalue(), err.getvalue()


async def test_the_example_runs_against_the_embedded_mock(tmp_path: Path) -> None:
    """The README's first command works: every example line answered, exit 0, summary JSON."""
    out = tmp_path / "out.jsonl"
    summary = tmp_path / "summary.json"
    code, stdout, stderr = await run_cli(
        "run", EXAMPLE, "-o", out, "--mock", "--summary-json", summary, "--no-progress"
    )
    assert (code, stderr) == (0, "")
    expected = [json.loads(line)["custom_id"] for line in EXAMPLE.read_text().splitlines()]
    assert len(expected) >= 200
    records = complete_records(out)
    assert sorted(r["custom_id"] for r in records) == sorted(expected)
    assert all(r["response"]["status_code"] == 200 and r["error"] is None for r in records)
    assert records[0]["id"].startswith("batch_req_")
    stats = corral.from_json(summary.read_text(), corral.BatchStatistics)
    assert (stats.total, stats.succeeded, stats.failed) == (len(expected), len(expected), 0)
    assert stats.usage.input_tokens > 0
    assert "succeeded" in stdout
    assert str(len(expected)) in stdout


async def test_a_rerun_resumes_and_sends_nothing_when_done(tmp_path: Path) -> None:
    """Running the same command again finds everything done: exit 0, nothing recorded."""
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_input(inp, 20)
    assert (await run_cli("run", inp, "-o", out, "--mock", "--no-progress"))[0] == 0
    before = out.read_bytes()
    code, stdout, _ = await run_cli("run", inp, "-o", out, "--mock", "--no-progress")
    assert code == 0
    assert out.read_bytes() == before
    assert "done before this run  20" in stdout


async def test_bad_input_exits_2_with_line_numbers_and_sends_nothing(tmp_path: Path) -> None:
    """Invalid JSON, a duplicate id and a wrong url are listed by line; no output is created."""
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    lines = [
        batch_line("a", "1"),
        "not json",
        batch_line("a", "2"),
        batch_line("c", "3").replace("/v1/chat/completions", "/v1/completions"),
    ]
    inp.write_text("\n".join(lines) + "\n")
    code, _, stderr = await run_cli("run", inp, "-o", out, "--mock", "--no-progress")
    assert code == 2
    assert "line 2: invalid JSON" in stderr
    assert "line 3: duplicate custom_id 'a' (first on line 1)" in stderr
    assert "line 4: url must be" in stderr
    assert "Nothing was sent" in stderr
    assert not out.exists()


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["run", "in.jsonl"], id="missing-output"),
        pytest.param(["run", "in.jsonl", "-o", "o.jsonl", "--concurrency", "0"], id="concurrency"),
        pytest.param(["run", "in.jsonl", "-o", "o.jsonl", "--timeout", "-1"], id="timeout"),
        pytest.param(["run", "in.jsonl", "-o", "o.jsonl", "--provider", "x"], id="provider"),
        pytest.param(["bogus"], id="unknown-command"),
    ],
)
async def test_usage_errors_exit_2(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """Argument mistakes exit 2 before any file is touched, the usage on the caller's stderr."""
    code, stdout, stderr = await run_cli(*args)
    assert code == 2
    assert "usage:" in stderr
    assert stdout == ""
    # Nothing leaks to the process's own streams when the caller gave its own.
    assert capsys.readouterr() == ("", "")


async def test_help_goes_to_the_callers_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    """``--help`` through amain() exits 0 and prints to the stdout it was given."""
    code, stdout, stderr = await run_cli("run", "--help")
    assert code == 0
    assert "--max-cost" in stdout
    assert stderr == ""
    assert capsys.readouterr() == ("", "")


async def test_mock_with_a_base_url_is_a_usage_error(tmp_path: Path) -> None:
    """--mock answers in-process, so a --base-url with it is a mistake (exit 2)."""
    inp = tmp_path / "in.jsonl"
    write_input(inp, 1)
    code, _, stderr = await run_cli(
        "run", inp, "-o", tmp_path / "o.jsonl", "--mock", "--base-url", "http://127.0.0.1:1/v1"
    )
    assert code == 2
    assert "--mock" in stderr


async def test_errors_file_equal_to_the_output_is_a_usage_error(tmp_path: Path) -> None:
    """Successes and failures cannot share one file: exit 2 before anything is read."""
    inp = tmp_path / "in.jsonl"
    write_input(inp, 1)
    out = tmp_path / "o.jsonl"
    code, _, stderr = await run_cli("run", inp, "-o", out, "--errors", out, "--mock")
    assert code == 2
    assert "errors file" in stderr


async def test_an_unwritable_summary_is_reported_after_the_job(tmp_path: Path) -> None:
    """A summary path that cannot be written is an error (exit 1); the job's records stay."""
    inp = tmp_path / "in.jsonl"
    write_input(inp, 2)
    out = tmp_path / "o.jsonl"
    summary = tmp_path / "missing-dir" / "s.json"
    code, _, stderr = await run_cli(
        "run", inp, "-o", out, "--mock", "--no-progress", "--summary-json", summary
    )
    assert code == 1
    assert "s.json" in stderr
    assert len(ids_of(out)) == 2


async def test_a_missing_input_file_exits_2(tmp_path: Path) -> None:
    """A missing input is a usage error naming the file."""
    code, _, stderr = await run_cli(
        "run", tmp_path / "nope.jsonl", "-o", tmp_path / "o.jsonl", "--mock"
    )
    assert code == 2
    assert "nope.jsonl" in stderr


async def test_a_missing_key_exits_2_naming_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A remote API without its key variable set is a usage error; nothing is sent."""
    monkeypatch.delenv("CORRAL_TEST_UNSET_KEY", raising=False)
    inp = tmp_path / "in.jsonl"
    write_input(inp, 1)
    code, _, stderr = await run_cli(
        "run",
        inp,
        "-o",
        tmp_path / "o.jsonl",
        "--base-url",
        "https://api.example.invalid/v1",
        "--api-key-env",
        "CORRAL_TEST_UNSET_KEY",
    )
    assert code == 2
    assert "CORRAL_TEST_UNSET_KEY" in stderr
    assert not (tmp_path / "o.jsonl").exists()


async def test_a_changed_input_is_refused_with_exit_2(tmp_path: Path) -> None:
    """Resuming an output made from another input is refused; --restart starts over."""
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_input(inp, 3)
    assert (await run_cli("run", inp, "-o", out, "--mock", "--no-progress"))[0] == 0
    write_input(inp, 4)
    code, _, stderr = await run_cli("run", inp, "-o", out, "--mock", "--no-progress")
    assert code == 2
    assert "belongs to a different job" in stderr
    code, _, _ = await run_cli("run", inp, "-o", out, "--mock", "--no-progress", "--restart")
    assert code == 0
    assert len(ids_of(out)) == 4
    assert (tmp_path / "out.jsonl.bak").exists()


async def test_model_override_and_other_providers(tmp_path: Path) -> None:
    """--model replaces every body's model; --provider anthropic and gemini run on the mock."""
    inp = tmp_path / "in.jsonl"
    write_input(inp, 5)
    out = tmp_path / "o.jsonl"
    assert (
        await run_cli("run", inp, "-o", out, "--mock", "--model", "gpt-4.1-nano", "--no-progress")
    )[0] == 0
    assert {r["response"]["body"]["model"] for r in complete_records(out)} == {"gpt-4.1-nano"}
    for provider in ("anthropic", "gemini"):
        path = tmp_path / f"{provider}.jsonl"
        code, _, stderr = await run_cli(
            "run", inp, "-o", path, "--mock", "--provider", provider, "--no-progress"
        )
        assert (code, stderr) == (0, "")
        assert len(complete_records(path)) == 5


async def test_failures_exit_1_and_go_to_the_errors_file(tmp_path: Path) -> None:
    """Requests the API refuses are recorded in --errors with their kind, and the exit is 1."""
    inp, out, errors = tmp_path / "in.jsonl", tmp_path / "out.jsonl", tmp_path / "bad.jsonl"
    ids = write_input(inp, 10)
    async with serve(MockServer(MockConfig(error_rates={400: 1.0}))) as running:
        code, stdout, _ = await run_cli(
            "run",
            inp,
            "-o",
            out,
            "--errors",
            errors,
            "--base-url",
            running.url + "/v1",
            "--attempts",
            "1",
            "--no-progress",
        )
    assert code == 1
    assert complete_records(out) == []
    records = complete_records(errors)
    assert sorted(r["custom_id"] for r in records) == sorted(ids)
    assert {r["error"]["code"] for r in records} == {"bad_request"}
    assert all(r["response"] is None for r in records)
    assert "failed" in stdout
    assert str(errors) in stdout


def _texts(directory: Path) -> dict[str, str]:
    return {p.name: p.read_text(errors="replace") for p in directory.iterdir()}


async def test_the_api_key_never_reaches_files_or_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A canary key is sent to the server but appears in no output, errors, manifest or log."""
    canary = "sk-canary-5f1e2d3c4b5a69788796a5b4c3d2e1f0"
    monkeypatch.setenv("CORRAL_CANARY_KEY", canary)
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_input(inp, 6)
    server = MockServer(MockConfig(api_key=canary, error_rates={500: 0.5}, seed=2))
    async with serve(server) as running:
        code, stdout, stderr = await run_cli(
            "run",
            inp,
            "-o",
            out,
            "--base-url",
            running.url + "/v1",
            "--api-key-env",
            "CORRAL_CANARY_KEY",
            "--attempts",
            "1",
            "--summary-json",
            tmp_path / "s.json",
        )
    assert code in (0, 1)
    assert server.statistics().hits_by_status.get(401, 0) == 0
    for name, text in _texts(tmp_path).items():
        assert canary not in text, name
    assert canary not in stdout + stderr


async def test_plain_progress_lines_when_stdout_is_not_a_terminal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a terminal the progress degrades to periodic plain lines with the counts."""
    monkeypatch.setattr(_cli, "_PLAIN_EVERY", 0.01)
    inp = tmp_path / "in.jsonl"
    write_input(inp, 40)
    async with serve(MockServer(MockConfig(latency=0.02))) as running:
        code, stdout, _ = await run_cli(
            "run",
            inp,
            "-o",
            tmp_path / "o.jsonl",
            "--base-url",
            running.url + "/v1",
            "--concurrency",
            "4",
        )
    assert code == 0
    lines = [line for line in stdout.splitlines() if line.startswith("corral: ")]
    assert lines, stdout
    assert "/40 done" in lines[-1]
    assert "req/s" in lines[-1]
    assert "tokens" in lines[-1]


def test_resume_command_drops_restart(monkeypatch: pytest.MonkeyPatch) -> None:
    """The printed resume command repeats the run without --restart, quoted for a shell."""
    monkeypatch.setattr("sys.argv", ["/usr/bin/corral"])
    command = _cli._resume_command(["run", "my input.jsonl", "-o", "o.jsonl", "--restart"])
    assert command == "corral run 'my input.jsonl' -o o.jsonl"


def test_main_runs_the_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The console entry point runs a job on its own event loop and returns the exit code."""
    inp = tmp_path / "in.jsonl"
    write_input(inp, 3)
    code = _cli.main(
        [
            "run",
            str(inp),
            "-o",
            str(tmp_path / "o.jsonl"),
            "--mock",
            "--no-progress",
            "--backend",
            "asyncio",
        ]
    )
    assert code == 0
    assert os.path.exists(tmp_path / "o.jsonl.manifest.json")
    assert "succeeded" in capsys.readouterr().out


async def test_rich_progress_bar_and_summary_table_on_a_terminal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a terminal the progress is a rich bar (done/total, req/s) and the summary a table."""
    pytest.importorskip("rich")
    monkeypatch.setattr(_cli, "_RICH_EVERY", 0.01)
    inp = tmp_path / "in.jsonl"
    write_input(inp, 30)
    out, err = io.StringIO(), io.StringIO()
    async with serve(MockServer(MockConfig(latency=0.02))) as running:
        code = await amain(
            [
                "run",
                str(inp),
                "-o",
                str(tmp_path / "o.jsonl"),
                "--concurrency",
                "3",
                "--base-url",
                running.url + "/v1",
            ],
            stdout=out,
            stderr=err,
            handle_signals=False,
            terminal=True,
        )
    assert (code, err.getvalue()) == (0, "")
    screen = out.getvalue()
    assert "30/30" in screen
    assert "req/s" in screen
    assert "\x1b[" in screen, "rendered with terminal control codes"
    assert "corral run" in screen
    assert "succeeded" in screen


async def test_rpm_tpm_and_max_cost_reach_the_client(tmp_path: Path) -> None:
    """--rpm, --tpm and --max-cost configure the Client's rate limit and budget; none by default."""
    common = ["run", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "o.jsonl"), "--mock"]
    flags = ["--rpm", "600", "--tpm", "9000", "--max-cost", "5"]
    async with AsyncExitStack() as stack:
        client = await _cli._open_client(_cli.build_parser().parse_args(common + flags), stack)
        stats = client.statistics()
    assert stats.rate_limiter is not None
    assert dict(stats.rate_limiter.limits) == {"requests": 600.0, "tokens": 9000.0}
    assert stats.budget is not None
    assert stats.budget.max_cost_usd == 5.0
    async with AsyncExitStack() as stack:
        client = await _cli._open_client(_cli.build_parser().parse_args(common), stack)
        stats = client.statistics()
    assert stats.rate_limiter is not None
    assert dict(stats.rate_limiter.limits) == {}
    assert stats.budget is None


@pytest.mark.parametrize("flag", ["--rpm", "--tpm", "--max-cost"])
async def test_a_flow_flag_that_is_not_positive_is_refused_by_name(
    tmp_path: Path, flag: str
) -> None:
    """A zero or negative --rpm, --tpm or --max-cost exits 2 with a message naming the flag."""
    inp = tmp_path / "in.jsonl"
    write_input(inp, 1)
    code, _, stderr = await run_cli("run", inp, "-o", tmp_path / "o.jsonl", "--mock", flag, "0")
    assert code == 2
    assert flag in stderr
    assert "must be > 0" in stderr
    assert not (tmp_path / "o.jsonl").exists()


async def test_max_cost_stops_spending_and_a_rerun_finishes(tmp_path: Path) -> None:
    """Past --max-cost the rest is recorded as budget_exhausted (exit 1); a rerun sends it."""
    inp, out = tmp_path / "in.jsonl", tmp_path / "o.jsonl"
    ids = write_input(inp, 40)
    common = ["run", inp, "-o", out, "--mock", "--no-progress", "--concurrency", "2"]
    code, _, _ = await run_cli(*common, "--max-cost", "0.00002")
    assert code == 1
    failures = complete_records(tmp_path / "o.errors.jsonl")
    assert failures
    assert {r["error"]["code"] for r in failures} == {"budget_exhausted"}
    assert sorted(ids_of(out) + [r["custom_id"] for r in failures]) == sorted(ids)
    code, _, _ = await run_cli(*common)
    assert code == 0
    assert sorted(ids_of(out)) == sorted(ids)
