"""Read a job's OpenAI Batch input: a validating first pass that keeps only id hashes, then lazily.

The first pass (:func:`scan_input`) checks every line and reports every bad one with its line
number before anything is sent; it keeps one 8-byte hash per id, never a line's body. The second
pass (:func:`pending_requests`) reads the file again, one line at a time, and turns the lines not
yet done into requests.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Generator, Iterator
from typing import Final

import attrs

from .._errors import InvalidInputError
from .._models import ChatRequest
from ._ids import IdDigest, IdTable, id_hash

__all__: list[str] = []  # internal: nothing here is public API

CHAT_URL: Final = "/v1/chat/completions"
MAX_CUSTOM_ID: Final = 512
"""The longest ``custom_id`` accepted, in characters (OpenAI's Batch API uses the same bound)."""

_BOM: Final = b"\xef\xbb\xbf"
MAX_NESTING: Final = 256
"""The deepest nesting of arrays and objects accepted in an input line.

Far above any real request, and far enough below the interpreter's recursion limit that a line
parses, converts and encodes the same way in a worker thread, in the event loop and on the wire.
"""
_TOO_DEEP: Final = (
    f"JSON nested too deeply (more than {MAX_NESTING} arrays or objects inside each other)"
)
# A string, or an unterminated one up to the end: every match that starts succeeds, so the scan
# stays linear whatever the line holds.
_STRING: Final = re.compile(rb'"(?:[^"\\]|\\.)*(?:"|\\?\Z)', re.DOTALL)
_BRACKET: Final = re.compile(rb"[\[\]{}]")
_MAX_SALTS: Final = 4
# How often the slow loops look at the stop flag and, in the event loop, yield to other tasks.
CHECK_EVERY: Final = 4096


class ScanStopped(Exception):
    """The scan noticed a stop request and gave up early."""


class BadLine(Exception):
    """One input line is invalid; the message says why."""


@attrs.frozen
class InputScan:
    """What the first pass learned about an input file.

    Args:
        path: The input's absolute path.
        size: Its size in bytes when scanned.
        requests: How many requests (non-blank lines) it holds.
        ids_digest: The order-independent digest of its ids.
        salt: The hash key under which its ids have distinct hashes.
        table: The id hashes, for the job's bookkeeping.
    """

    path: str
    size: int
    requests: int
    ids_digest: str
    salt: int
    table: IdTable = attrs.field(eq=False, repr=False)


def parse_line(raw: bytes, model: str | None) -> ChatRequest:
    """Parse and check one input line; raise :class:`BadLine` with the reason if it is invalid.

    Args:
        raw: The line's bytes.
        model: A model that replaces every body's model, or None.
    """
    if raw.count(b"[") + raw.count(b"{") > MAX_NESTING and _nesting(raw) > MAX_NESTING:
        raise BadLine(_TOO_DEEP)
    try:
        obj = json.loads(raw)
    except ValueError as exc:  # UnicodeDecodeError is a ValueError too
        raise BadLine(f"invalid JSON: {exc}") from None
    except RecursionError:  # pragma: no cover - the depth is checked above
        raise BadLine(_TOO_DEEP) from None
    if not isinstance(obj, dict):
        raise BadLine(f"a line must be a JSON object, got {type(obj).__name__}")
    custom_id = obj.get("custom_id")
    if custom_id is None:
        raise BadLine("missing custom_id")
    if not isinstance(custom_id, str):
        raise BadLine(f"custom_id must be a string, got {type(custom_id).__name__}")
    if not custom_id.strip():
        raise BadLine("empty custom_id")
    if len(custom_id) > MAX_CUSTOM_ID:
        raise BadLine(
            f"custom_id is {len(custom_id)} characters long; the limit is {MAX_CUSTOM_ID}"
        )
    method = obj.get("method")
    if method != "POST":
        raise BadLine(f'method must be "POST", got {method!r}')
    url = obj.get("url")
    if url != CHAT_URL:
        raise BadLine(f"url must be {CHAT_URL!r}, got {url!r}")
    body = obj.get("body")
    if body is None:
        raise BadLine("missing body")
    if not isinstance(body, dict):
        raise BadLine(f"body must be a JSON object, got {type(body).__name__}")
    if model is not None:
        body["model"] = model
    else:
        body_model = body.get("model")
        if body_model is None:
            raise BadLine("body has no model (give one, or pass --model)")
        if not isinstance(body_model, str) or not body_model:
            raise BadLine(f"body.model must be a non-empty string, got {body_model!r}")
    if body.get("stream"):
        raise BadLine('"stream": true is not supported in a job; remove it')
    try:
        return ChatRequest.from_openai(body, id=custom_id)
    except (TypeError, ValueError) as exc:
        raise BadLine(f"invalid body: {exc}") from None
    except RecursionError:
        # Converting a value nested almost as deep as json.loads allows may recurse further.
        raise BadLine(_TOO_DEEP) from None


def _nesting(raw: bytes) -> int:
    """Return how deeply arrays and objects nest in a JSON text (brackets in strings ignored).

    Only lines with many brackets get here, so the slow loop runs rarely.
    """
    depth = deepest = 0
    for match in _BRACKET.finditer(_STRING.sub(b"", raw)):
        if match.group() in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def _count_lines(path: str) -> int:
    """Count the lines of *path*, fast: newlines counted in large binary chunks."""
    count = 0
    last = b"\n"
    with open(path, "rb") as f:
        while chunk := f.read(1 << 16):
            count += chunk.count(b"\n")
            last = chunk[-1:]
    return count + (last != b"\n")


def _lines(path: str) -> Iterator[tuple[int, bytes]]:
    """Yield ``(line_number, bytes)`` for every non-blank line of *path*."""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            if number == 1 and raw.startswith(_BOM):
                raw = raw[len(_BOM) :]
            if raw.strip():
                yield number, raw


def scan_input(
    path: str,
    *,
    model: str | None = None,
    max_problems: int = 1000,
    should_stop: Callable[[], bool] | None = None,
) -> InputScan:
    """Check every line of a job's input; return its identity and id hashes.

    Raises :class:`corral.InvalidInputError` listing every bad line (up to *max_problems*):
    invalid JSON, a missing, empty, over-long or duplicate ``custom_id``, a wrong ``method`` or
    ``url``, a missing ``body`` or model, or a body that is not a valid chat request.

    Args:
        path: The input file.
        model: A model that replaces every body's model, or None.
        max_problems: The most bad lines listed in the error.
        should_stop: Polled now and then; when it returns True the scan raises
            :class:`ScanStopped`.
    """
    path = os.path.abspath(path)
    size = os.stat(path).st_size
    # Sized once from a cheap newline count, the table never grows (and never holds two
    # copies of itself) during the scan.
    expected = _count_lines(path)
    for salt in range(_MAX_SALTS):
        scan = _scan_once(path, size, salt, model, max_problems, should_stop, expected)
        if scan is not None:
            return scan
    # Four keys each giving a 64-bit collision between distinct ids cannot happen by chance.
    raise AssertionError("could not find a hash key without collisions")  # pragma: no cover


def _scan_once(
    path: str,
    size: int,
    salt: int,
    model: str | None,
    max_problems: int,
    should_stop: Callable[[], bool] | None,
    expected: int,
) -> InputScan | None:
    table = IdTable(expected)
    digest = IdDigest()
    problems: list[tuple[int, str]] = []
    extra_problems = 0
    repeated: set[int] = set()
    requests = 0
    for number, raw in _lines(path):
        if should_stop is not None and number % CHECK_EVERY == 0 and should_stop():
            raise ScanStopped
        try:
            custom_id = parse_line(raw, model).id
        except BadLine as exc:
            if len(problems) < max_problems:
                problems.append((number, str(exc)))
            else:
                extra_problems += 1
            continue
        requests += 1
        h = id_hash(custom_id, salt)
        if not table.add(h):
            # Equal hashes: a duplicate id, or (very rarely) a collision. Sorted out below.
            if len(repeated) < max_problems:
                repeated.add(h)
            else:
                extra_problems += 1
            continue
        digest.add(custom_id)
    if repeated:
        duplicates = _find_duplicates(path, salt, model, repeated)
        if duplicates is None:
            return None
        problems.extend(duplicates)
    if problems or extra_problems:
        problems.sort()
        if len(problems) > max_problems:
            extra_problems += len(problems) - max_problems
            del problems[max_problems:]
        if extra_problems:
            problems.append(
                (problems[-1][0], f"... and {extra_problems} more bad line(s), not listed")
            )
        raise InvalidInputError(problems)
    return InputScan(path, size, requests, digest.hexdigest(), salt, table)


def _find_duplicates(
    path: str, salt: int, model: str | None, repeated: set[int]
) -> list[tuple[int, str]] | None:
    """Report the lines whose id repeats an earlier one; None if two distinct ids collided."""
    first: dict[int, tuple[int, str]] = {}
    problems: list[tuple[int, str]] = []
    for number, raw in _lines(path):
        try:
            custom_id = parse_line(raw, model).id
        except BadLine:
            continue
        h = id_hash(custom_id, salt)
        if h not in repeated:
            continue
        seen = first.get(h)
        if seen is None:
            first[h] = (number, custom_id)
        elif seen[1] == custom_id:
            problems.append(
                (number, f"duplicate custom_id {custom_id!r} (first on line {seen[0]})")
            )
        else:
            return None
    return problems


def pending_requests(
    scan: InputScan, model: str | None, state: Callable[[int], int]
) -> Generator[ChatRequest | None, None, None]:
    """Read the input again and yield the requests not done yet, one at a time.

    Yields None every few thousand skipped lines, so that an async caller can let other tasks
    run during a long skip over work that is already done.

    Args:
        scan: The first pass's result.
        model: A model that replaces every body's model, or None.
        state: Returns an id hash's state: 0 to send, -1 for an id the first pass did not see
            (the input changed), anything else for done.
    """
    _check_unchanged(scan, 0)
    skipped = 0
    for number, raw in _lines(scan.path):
        try:
            request = parse_line(raw, model)
        except BadLine as exc:
            raise _changed(number, str(exc)) from None
        flag = state(id_hash(request.id, scan.salt))
        if flag < 0:
            raise _changed(number, f"custom_id {request.id!r} is new")
        if flag:
            skipped += 1
            if skipped % CHECK_EVERY == 0:
                yield None
            continue
        yield request
    _check_unchanged(scan, 0)


def _changed(line: int, detail: str) -> InvalidInputError:
    return InvalidInputError([(line, f"the input changed while the job ran: {detail}")])


def _check_unchanged(scan: InputScan, line: int) -> None:
    size = os.stat(scan.path).st_size
    if size != scan.size:
        raise _changed(line, f"{scan.size} bytes when checked, {size} now")
