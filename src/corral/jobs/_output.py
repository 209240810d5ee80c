"""A job's output and errors files: tolerant reading on resume, and durable appending.

Both files hold OpenAI Batch output lines, one record per line, in completion order. Consumers
join them to the input on ``custom_id``. Records are appended with one ``write`` each and synced
with ``fsync`` in small groups; a record counts as done only once synced.

On resume a file is read tolerantly: the last line may be torn (cut mid-record, mid-UTF-8 or
before its newline) by a crash, and is then cut off before anything is appended. A malformed line
*followed by* other lines is damage corral will not guess about: it fails loudly, with the line
number.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Callable
from typing import Any, Final, Literal

import attrs

from .._errors import CorruptOutputError, OutputWriteError
from .._models import Completion, Result

__all__: list[str] = []  # internal: nothing here is public API

FileKind = Literal["output", "errors"]

_SEPARATORS: Final = (",", ":")


class _BadRecord(Exception):
    pass


@attrs.frozen
class ExistingFile:
    """What reading an existing output or errors file found.

    Args:
        path: The file.
        records: Complete, valid records.
        valid_bytes: Where the last valid record ends; everything after it is a torn tail.
        size: The file's size when read.
    """

    path: str
    records: int
    valid_bytes: int
    size: int

    @property
    def torn_bytes(self) -> int:
        """Bytes after the last valid record, to cut before appending."""
        return self.size - self.valid_bytes


def _check_record(raw: bytes, kind: FileKind) -> tuple[str, str | None]:
    """Return ``(custom_id, error_code)`` of a record line, or raise :class:`_BadRecord`."""
    try:
        obj = json.loads(raw)
    except ValueError as exc:
        raise _BadRecord(f"not valid JSON ({exc})") from None
    except RecursionError:
        raise _BadRecord("JSON nested too deeply") from None
    if not isinstance(obj, dict):
        raise _BadRecord("not a JSON object")
    custom_id = obj.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        raise _BadRecord("no custom_id")
    if kind == "output":
        response = obj.get("response")
        if not isinstance(response, dict) or not isinstance(response.get("status_code"), int):
            raise _BadRecord("not a Batch output record (no response.status_code)")
        return custom_id, None
    error = obj.get("error")
    if not isinstance(error, dict) or not isinstance(error.get("code"), str):
        raise _BadRecord("not a Batch error record (no error.code)")
    return custom_id, error["code"]


def read_records(
    path: str, kind: FileKind, visit: Callable[[int, str, str | None], None]
) -> ExistingFile:
    """Read an existing output or errors file, calling *visit* for each valid record.

    A missing file reads as empty. Raises :class:`CorruptOutputError` for a malformed line that
    other lines follow.

    Args:
        path: The file.
        kind: ``"output"`` (success records) or ``"errors"`` (failure records).
        visit: Called with ``(line_number, custom_id, error_code)``; the code is None for
            success records.
    """
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below, after the loop
    except FileNotFoundError:
        return ExistingFile(path, 0, 0, 0)
    offset = valid = records = 0
    bad: tuple[int, str] | None = None
    with f:
        for number, raw in enumerate(f, 1):
            offset += len(raw)
            if bad is not None:
                if raw.strip():
                    raise CorruptOutputError(path, bad[0], bad[1])
                continue
            if not raw.endswith(b"\n"):
                # The file's last bytes, without a newline: torn, whatever they hold.
                break
            if not raw.strip():
                valid = offset
                continue
            try:
                custom_id, code = _check_record(raw, kind)
            except _BadRecord as exc:
                bad = (number, str(exc))
                continue
            visit(number, custom_id, code)
            records += 1
            valid = offset
    return ExistingFile(path, records, valid, offset)


def _encode(record: dict[str, Any]) -> bytes:
    try:
        text = json.dumps(record, separators=_SEPARATORS, ensure_ascii=False)
        return text.encode("utf-8") + b"\n"
    except UnicodeEncodeError:
        # A lone surrogate (legal in JSON input, not in UTF-8): escape everything instead.
        return json.dumps(record, separators=_SEPARATORS).encode("ascii") + b"\n"


def success_record(record_id: str, completion: Completion) -> dict[str, Any]:
    """Return the OpenAI Batch output record of a completion.

    Args:
        record_id: The record's own id (``batch_req_...``).
        completion: The completion.
    """
    raw = completion.raw
    # The provider's own id for the answer (OpenAI and Anthropic "id", Gemini "responseId").
    request_id = raw.get("id") or raw.get("responseId")
    if not isinstance(request_id, str):
        request_id = None
    return {
        "id": record_id,
        "custom_id": completion.id,
        "response": {"status_code": 200, "request_id": request_id, "body": raw},
        "error": None,
    }


def failure_record(record_id: str, result: Result) -> dict[str, Any]:
    """Return the OpenAI Batch error record of a failure.

    Args:
        record_id: The record's own id (``batch_req_...``).
        result: The failure.
    """
    assert not result.ok
    error = result.error
    return {
        "id": record_id,
        "custom_id": result.id,
        "response": None,
        "error": {
            "code": error.kind.value,
            "message": error.message,
            "status_code": error.status_code,
            "retryable": error.retryable,
            "provider_code": error.provider_code,
            "attempts": result.attempts,
        },
    }


def write_all(fd: int, data: bytes) -> None:
    """Write all of *data* to *fd*, continuing after short writes.

    Args:
        fd: An open file descriptor.
        data: The bytes.
    """
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        if n <= 0:
            raise OSError(errno.EIO, "write() made no progress")
        view = view[n:]


class RecordWriter:
    """Append success records to the output file and failure records to the errors file.

    Writing happens in the calling thread and is fast (the page cache); :meth:`sync` is the slow
    part, meant to run in a worker thread on the files that :meth:`take_dirty` returns.

    Args:
        output_fd: The output file, opened for appending.
        output_path: Its path, for messages.
        errors_fd: The errors file, opened for appending.
        errors_path: Its path, for messages.
    """

    __slots__ = ("_appended", "_count", "_dirty", "_files", "_prefix")

    def __init__(self, output_fd: int, output_path: str, errors_fd: int, errors_path: str) -> None:
        self._files = ((output_fd, output_path), (errors_fd, errors_path))
        self._dirty = [False, False]
        # Record ids: a random prefix per session keeps them unique across resumes.
        self._prefix = "batch_req_" + os.urandom(8).hex()
        self._count = 0
        # Records and bytes appended to each file: (output records, bytes, errors records, bytes).
        self._appended = [0, 0, 0, 0]

    def __repr__(self) -> str:
        return (
            f"<RecordWriter output={self._files[0][1]!r} errors={self._files[1][1]!r} "
            f"written={self._count}>"
        )

    def write(self, result: Result) -> None:
        """Append *result*'s record to its file; raise :class:`OutputWriteError` on failure.

        Args:
            result: A completion (to the output) or a failure (to the errors file).
        """
        self._count += 1
        record_id = f"{self._prefix}{self._count:08x}"
        which = 0 if result.ok else 1
        if isinstance(result, Completion):
            data = _encode(success_record(record_id, result))
        else:
            data = _encode(failure_record(record_id, result))
        fd, path = self._files[which]
        self._dirty[which] = True
        try:
            write_all(fd, data)
        except OSError as exc:
            raise OutputWriteError(path, exc) from exc
        appended = self._appended
        appended[2 * which] += 1
        appended[2 * which + 1] += len(data)

    @property
    def appended(self) -> tuple[int, int, int, int]:
        """Records and bytes appended: ``(output records, bytes, errors records, bytes)``."""
        a = self._appended
        return a[0], a[1], a[2], a[3]

    def take_dirty(self) -> list[tuple[int, str]]:
        """Return the files written since the last call, and mark them clean."""
        dirty = [f for f, d in zip(self._files, self._dirty, strict=True) if d]
        self._dirty = [False, False]
        return dirty

    @staticmethod
    def sync(files: list[tuple[int, str]]) -> None:
        """Flush *files* to stable storage; raise :class:`OutputWriteError` on failure.

        Args:
            files: ``(fd, path)`` pairs from :meth:`take_dirty`.
        """
        for fd, path in files:
            try:
                os.fsync(fd)
            except OSError as exc:
                raise OutputWriteError(path, exc) from exc
