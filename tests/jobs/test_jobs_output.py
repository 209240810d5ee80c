"""Record files: tolerant reading of torn tails, loud failure on damage, complete writes."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

import corral
from corral._errors import CorruptOutputError, OutputWriteError
from corral.jobs._output import RecordWriter, read_records


def _record(custom_id: str, text: str = "ok") -> bytes:
    record = {
        "id": f"batch_req_{custom_id}",
        "custom_id": custom_id,
        "response": {"status_code": 200, "request_id": None, "body": {"text": text}},
        "error": None,
    }
    return json.dumps(record, ensure_ascii=False).encode() + b"\n"


def _read(path: Path) -> tuple[list[str], int, int]:
    seen: list[str] = []
    existing = read_records(str(path), "output", lambda line, cid, code: seen.append(cid))
    return seen, existing.valid_bytes, existing.torn_bytes


GOOD = _record("a") + _record("b")


@pytest.mark.parametrize(
    "tail",
    [
        pytest.param(_record("c")[:25], id="cut-mid-record"),
        pytest.param(_record("c", "café ☕")[:-5], id="cut-mid-utf8"),
        pytest.param(_record("c")[:-1], id="missing-newline"),
        pytest.param(b"\x00" * 4096, id="zero-filled-block"),
        pytest.param(b'{"custom_id": "c", "resp\n', id="malformed-last-line"),
        pytest.param(_record("c")[:30] + b"\n\n", id="malformed-then-blank"),
    ],
)
def test_a_torn_last_line_is_not_a_record(tmp_path: Path, tail: bytes) -> None:
    """Whatever way the last line is torn, it is not counted and is marked to be cut off."""
    path = tmp_path / "out.jsonl"
    path.write_bytes(GOOD + tail)
    seen, valid, torn = _read(path)
    assert seen == ["a", "b"]
    assert valid == len(GOOD)
    assert torn == len(tail)


def test_a_cut_inside_a_multibyte_character_is_torn(tmp_path: Path) -> None:
    """A cut that splits a UTF-8 sequence (invalid UTF-8 at the end) is a torn tail too."""
    line = _record("c", "☕☕☕")
    cut = line.index("☕".encode()) + 1
    path = tmp_path / "out.jsonl"
    path.write_bytes(GOOD + line[:cut])
    seen, valid, _ = _read(path)
    assert seen == ["a", "b"]
    assert valid == len(GOOD)


def test_a_malformed_line_in_the_middle_fails_loudly(tmp_path: Path) -> None:
    """A bad line followed by good ones is damage: the error names the file and the line."""
    path = tmp_path / "out.jsonl"
    path.write_bytes(_record("a") + b"garbage\n" + _record("b"))
    with pytest.raises(CorruptOutputError) as info:
        _read(path)
    assert info.value.line == 2
    assert "line 2" in str(info.value)
    assert isinstance(info.value, corral.CorralError)


def test_a_record_of_the_wrong_shape_in_the_middle_fails_loudly(tmp_path: Path) -> None:
    """Valid JSON that is not a Batch record is not silently skipped."""
    path = tmp_path / "out.jsonl"
    path.write_bytes(_record("a") + b'{"custom_id": "x"}\n' + _record("b"))
    with pytest.raises(CorruptOutputError, match="line 2"):
        _read(path)


def test_a_missing_file_reads_as_empty(tmp_path: Path) -> None:
    """No file yet means no records and nothing to cut."""
    assert _read(tmp_path / "none.jsonl") == ([], 0, 0)


def _failure(custom_id: str) -> corral.Failure:
    info = corral.ErrorInfo(corral.ErrorKind.SERVER_ERROR, "boom", status_code=500, retryable=True)
    return corral.Failure(custom_id, info, attempts=3)


def _completion(custom_id: str) -> corral.Completion:
    return corral.Completion(custom_id, "m", "hi", "stop", corral.Usage(3, 1), raw={"id": "c1"})


def _open(path: Path) -> int:
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)


def test_writer_routes_successes_and_failures(tmp_path: Path) -> None:
    """Completions become output records, failures error records with their kind as code."""
    out, err = tmp_path / "out.jsonl", tmp_path / "err.jsonl"
    out_fd, err_fd = _open(out), _open(err)
    try:
        writer = RecordWriter(out_fd, str(out), err_fd, str(err))
        writer.write(_completion("a"))
        writer.write(_failure("b"))
        RecordWriter.sync(writer.take_dirty())
        assert writer.take_dirty() == []
    finally:
        os.close(out_fd)
        os.close(err_fd)
    [ok] = [json.loads(x) for x in out.read_text().splitlines()]
    [bad] = [json.loads(x) for x in err.read_text().splitlines()]
    assert ok["custom_id"] == "a"
    assert ok["error"] is None
    assert ok["response"] == {"status_code": 200, "request_id": "c1", "body": {"id": "c1"}}
    assert ok["id"].startswith("batch_req_")
    assert bad["custom_id"] == "b"
    assert bad["response"] is None
    assert bad["error"]["code"] == "server_error"
    assert bad["error"]["status_code"] == 500
    assert bad["error"]["attempts"] == 3


def test_short_writes_still_produce_complete_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write() that takes a few bytes at a time is continued until the record is whole."""
    out, err = tmp_path / "out.jsonl", tmp_path / "err.jsonl"
    out_fd, err_fd = _open(out), _open(err)
    real_write = os.write
    calls = 0

    def short_write(fd: int, data: bytes | memoryview) -> int:
        nonlocal calls
        if fd == out_fd:
            calls += 1
            return real_write(fd, bytes(data[:7]))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", short_write)
    try:
        writer = RecordWriter(out_fd, str(out), err_fd, str(err))
        for i in range(3):
            writer.write(_completion(f"c{i}"))
    finally:
        monkeypatch.undo()
        os.close(out_fd)
        os.close(err_fd)
    assert calls > 30
    assert [json.loads(x)["custom_id"] for x in out.read_text().splitlines()] == ["c0", "c1", "c2"]


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO])
def test_write_and_fsync_errors_name_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    """An OS error from write() or fsync() becomes OutputWriteError naming the file and cause."""
    out, err = tmp_path / "out.jsonl", tmp_path / "err.jsonl"
    out_fd, err_fd = _open(out), _open(err)

    def failing(fd: int, *args: object) -> int:
        raise OSError(code, os.strerror(code))

    try:
        writer = RecordWriter(out_fd, str(out), err_fd, str(err))
        monkeypatch.setattr(os, "write", failing)
        with pytest.raises(OutputWriteError) as info:
            writer.write(_completion("a"))
        monkeypatch.undo()
        assert str(out) in str(info.value)
        assert os.strerror(code) in str(info.value)
        monkeypatch.setattr(os, "fsync", failing)
        with pytest.raises(OutputWriteError, match=os.strerror(code)):
            RecordWriter.sync(writer.take_dirty())
    finally:
        monkeypatch.undo()
        os.close(out_fd)
        os.close(err_fd)
