"""The input's first pass: every bad line reported with its number, ids kept as hashes only."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import pytest

import corral
from corral.jobs import _input as _jobs_input
from corral.jobs._ids import id_hash
from corral.jobs._input import MAX_CUSTOM_ID, pending_requests, scan_input

from .jobkit import batch_line, write_input, write_lines


def _line(**fields: object) -> str:
    base: dict[str, object] = {
        "custom_id": "x",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
    }
    base.update(fields)
    return json.dumps({k: v for k, v in base.items() if v is not ...})


def test_scan_counts_requests_and_skips_blank_lines(tmp_path: Path) -> None:
    """Blank lines are not requests; the scan counts the rest and knows every id."""
    path = write_lines(
        tmp_path / "in.jsonl", [batch_line("a", "1"), "", "  ", batch_line("b", "2")]
    )
    scan = scan_input(str(path))
    assert scan.requests == 2
    assert scan.size == path.stat().st_size
    assert id_hash("a", scan.salt) in scan.table
    assert id_hash("b", scan.salt) in scan.table
    assert id_hash("c", scan.salt) not in scan.table


def test_scan_reports_every_bad_line_with_its_number(tmp_path: Path) -> None:
    """Each kind of bad line is reported, in file order, with its 1-based line number."""
    lines = [
        _line(custom_id="ok1"),
        "{not json",
        _line(custom_id=...),
        _line(custom_id=""),
        _line(custom_id="x" * (MAX_CUSTOM_ID + 1)),
        _line(custom_id="ok1"),
        _line(custom_id="m", method="GET"),
        _line(custom_id="u", url="/v1/embeddings"),
        _line(custom_id="b", body=...),
        _line(custom_id="nm", body={"messages": [{"role": "user", "content": "hi"}]}),
        _line(custom_id="nmsg", body={"model": "m"}),
        "[1, 2]",
        _line(custom_id=7),
        _line(custom_id="ok2"),
    ]
    path = write_lines(tmp_path / "in.jsonl", lines)
    with pytest.raises(corral.InvalidInputError) as info:
        scan_input(str(path))
    problems = dict(info.value.problems)
    assert sorted(problems) == [2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]
    assert "invalid JSON" in problems[2]
    assert "missing custom_id" in problems[3]
    assert "empty custom_id" in problems[4]
    assert "limit is 512" in problems[5]
    assert "duplicate custom_id 'ok1' (first on line 1)" in problems[6]
    assert "method" in problems[7]
    assert "url" in problems[8]
    assert "missing body" in problems[9]
    assert "no model" in problems[10]
    assert "messages" in problems[11]
    assert "JSON object" in problems[12]
    assert "string" in problems[13]
    assert "line 6" in str(info.value)


def test_model_override_allows_bodies_without_a_model(tmp_path: Path) -> None:
    """With a model override, a body without a model is valid and gets that model."""
    body = {"messages": [{"role": "user", "content": "hi"}]}
    path = write_lines(tmp_path / "in.jsonl", [_line(custom_id="a", body=body)])
    scan = scan_input(str(path), model="gpt-4o")
    requests = [r for r in pending_requests(scan, "gpt-4o", scan.table.flag) if r is not None]
    assert [(r.id, r.model) for r in requests] == [("a", "gpt-4o")]


def test_identical_bodies_with_different_ids_stay_two_requests(tmp_path: Path) -> None:
    """Two lines with the same body and different ids are two requests, not a duplicate."""
    path = write_lines(tmp_path / "in.jsonl", [batch_line("a", "same"), batch_line("b", "same")])
    scan = scan_input(str(path))
    requests = [r for r in pending_requests(scan, None, scan.table.flag) if r is not None]
    assert [r.id for r in requests] == ["a", "b"]


def test_a_true_hash_collision_is_escaped_with_another_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two distinct ids whose hashes collide are not a duplicate: the scan re-keys and passes."""
    real = _jobs_input.id_hash

    def colliding(custom_id: str, salt: int) -> int:
        return 42 if salt == 0 and custom_id in ("a", "b") else real(custom_id, salt)

    monkeypatch.setattr(_jobs_input, "id_hash", colliding)
    path = write_lines(tmp_path / "in.jsonl", [batch_line("a", "1"), batch_line("b", "2")])
    scan = scan_input(str(path))
    assert scan.salt == 1
    assert scan.requests == 2


def test_pending_requests_skips_done_ids(tmp_path: Path) -> None:
    """The second pass yields only the ids the caller does not mark as done, in file order."""
    ids = write_input(tmp_path / "in.jsonl", 10)
    scan = scan_input(str(tmp_path / "in.jsonl"))
    for cid in ids[::2]:
        scan.table.set_flag(id_hash(cid, scan.salt), 1)
    requests = [r for r in pending_requests(scan, None, scan.table.flag) if r is not None]
    assert [r.id for r in requests] == ids[1::2]


def test_a_changed_input_is_refused_by_the_second_pass(tmp_path: Path) -> None:
    """If the input changes between the passes, the job stops instead of sending other lines."""
    path = tmp_path / "in.jsonl"
    write_input(path, 3)
    scan = scan_input(str(path))
    with open(path, "a") as f:
        f.write(batch_line("late", "x") + "\n")
    with pytest.raises(corral.InvalidInputError, match="changed"):
        list(pending_requests(scan, None, scan.table.flag))


def test_a_line_rewritten_during_the_job_is_refused(tmp_path: Path) -> None:
    """A line whose id the first pass did not see stops the second pass: it is never sent."""
    path = tmp_path / "in.jsonl"
    write_lines(path, [batch_line("a", "1"), batch_line("b", "2")])
    scan = scan_input(str(path))
    write_lines(path, [batch_line("a", "1"), batch_line("z", "2")])
    lines = pending_requests(scan, None, scan.table.flag)
    assert next(lines) is not None
    with pytest.raises(corral.InvalidInputError, match="'z' is new"):
        next(lines)


def test_digest_is_the_same_for_a_shuffled_input(tmp_path: Path) -> None:
    """The input identity does not depend on line order, only on the set of ids."""
    lines = [batch_line(f"q{i}", str(i)) for i in range(20)]
    a = scan_input(str(write_lines(tmp_path / "a.jsonl", lines)))
    b = scan_input(str(write_lines(tmp_path / "b.jsonl", lines[::-1])))
    c = scan_input(str(write_lines(tmp_path / "c.jsonl", [*lines[:-1], batch_line("z", "19")])))
    assert a.ids_digest == b.ids_digest
    assert a.ids_digest != c.ids_digest


def _scan_peak(path: Path) -> int:
    tracemalloc.start()
    try:
        scan = scan_input(str(path))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert scan.requests > 0
    return peak


def test_the_first_pass_keeps_a_few_bytes_per_line(tmp_path: Path) -> None:
    """Validating 6x more lines costs under 40 more bytes per extra line: no object per line."""
    small, large = tmp_path / "small.jsonl", tmp_path / "large.jsonl"
    write_input(small, 1_000)
    write_input(large, 6_000)
    growth = _scan_peak(large) - _scan_peak(small)
    assert growth < 40 * 5_000, f"{growth / 5_000:.1f} bytes per extra line"
