"""A job's manifest: the input's identity and the job's running totals, next to the output.

The manifest (``OUTPUT.manifest.json``) says which input and which parameters produced the
output, so that a rerun resumes only the same job, and carries a ledger of what every session
spent (attempts, tokens, cost, a latency histogram), so that the summary covers the whole job
across resumes. It is replaced atomically (write, fsync, rename).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from typing import Any, Final

import attrs

from .._errors import CorruptOutputError
from .._models import BatchStatistics, Completion, Result, Usage
from ._output import write_all

__all__: list[str] = []  # internal: nothing here is public API

FORMAT: Final = "corral.job/1"

# Latency histogram: 2 % wide geometric buckets from 0.1 ms; bucket 0 holds anything shorter.
_H_MIN: Final = 1e-4
_H_RATIO: Final = 1.02
_H_LOG: Final = math.log(_H_RATIO)


def manifest_path(output: str) -> str:
    """Return the manifest's path for an output file.

    Args:
        output: The output file's path.
    """
    return output + ".manifest.json"


@attrs.frozen
class JobIdentity:
    """What makes two runs the same job.

    Args:
        input_path: The input's absolute path.
        input_size: The input's size in bytes.
        requests: How many requests the input holds.
        ids_digest: The order-independent digest of the input's ``custom_id``\\ s.
        errors_path: The errors file's absolute path.
        params: The parameters that change results: provider, model override.
    """

    input_path: str
    input_size: int
    requests: int
    ids_digest: str
    errors_path: str
    params: dict[str, Any] = attrs.field(factory=dict)

    def differences(self, now: JobIdentity) -> list[str]:
        """Describe how *now* differs from this identity, one line per difference.

        Args:
            now: The identity of the run about to start.
        """
        out: list[str] = []
        if self.input_path != now.input_path:
            out.append(f"input file: was {self.input_path}, now {now.input_path}")
        if self.input_size != now.input_size:
            out.append(f"input size: was {self.input_size} bytes, now {now.input_size} bytes")
        if self.requests != now.requests:
            out.append(f"input requests: was {self.requests}, now {now.requests}")
        if self.ids_digest != now.ids_digest:
            out.append("input custom_ids: the set of ids is different")
        if self.errors_path != now.errors_path:
            out.append(f"errors file: was {self.errors_path}, now {now.errors_path}")
        for key in sorted(set(self.params) | set(now.params)):
            before, after = self.params.get(key), now.params.get(key)
            if before != after:
                out.append(f"{key}: was {before!r}, now {after!r}")
        return out


@attrs.frozen
class FileMarks:
    """How much of the output and errors files was written and synced, at a checkpoint.

    The manifest is saved only after the bytes it counts are synced, so a file may hold more than
    its mark (records written after the last checkpoint), never less, unless something else cut
    it.

    Args:
        output_records: Records in the output file.
        output_bytes: Its size up to the end of the last of them.
        errors_records: Records in the errors file.
        errors_bytes: Its size up to the end of the last of them.
    """

    output_records: int = 0
    output_bytes: int = 0
    errors_records: int = 0
    errors_bytes: int = 0

    def plus(self, records: tuple[int, int, int, int]) -> FileMarks:
        """Return these marks advanced by what was appended since.

        Args:
            records: ``(output_records, output_bytes, errors_records, errors_bytes)`` appended.
        """
        return FileMarks(
            self.output_records + records[0],
            self.output_bytes + records[1],
            self.errors_records + records[2],
            self.errors_bytes + records[3],
        )


class Ledger:
    """Running totals of a job across sessions; mergeable, and small whatever the job's size.

    Latency percentiles come from a histogram with 2 % wide buckets, so the whole-job figures
    are within about 1 % of the exact ones.
    """

    __slots__ = (
        "attempts",
        "cache_write_tokens",
        "cached_input_tokens",
        "cost_usd",
        "input_tokens",
        "latency",
        "output_tokens",
        "reasoning_tokens",
        "recorded",
        "retries",
        "sessions",
        "unpriced",
        "wall_time_s",
    )

    def __init__(self) -> None:
        self.sessions = 0
        self.recorded = 0
        self.attempts = 0
        self.retries = 0
        self.input_tokens = 0
        self.output_tokens = 0
        self.cached_input_tokens = 0
        self.cache_write_tokens = 0
        self.reasoning_tokens = 0
        self.cost_usd = 0.0
        self.unpriced = 0
        self.wall_time_s = 0.0
        self.latency: dict[int, int] = {}

    def __repr__(self) -> str:
        return (
            f"<Ledger sessions={self.sessions} recorded={self.recorded} "
            f"attempts={self.attempts} cost_usd={self.cost_usd:.4f}>"
        )

    def add(self, result: Result) -> None:
        """Count one recorded result.

        Args:
            result: A completion or failure that was written.
        """
        self.recorded += 1
        self.attempts += result.attempts
        if result.attempts > 1:
            self.retries += result.attempts - 1
        if isinstance(result, Completion):
            u = result.usage
            self.input_tokens += u.input_tokens
            self.output_tokens += u.output_tokens
            self.cached_input_tokens += u.cached_input_tokens
            self.cache_write_tokens += u.cache_write_tokens
            self.reasoning_tokens += u.reasoning_tokens
            if result.cost_usd is None:
                self.unpriced += 1
            else:
                self.cost_usd += result.cost_usd
            b = _bucket(result.latency_s)
            self.latency[b] = self.latency.get(b, 0) + 1

    @property
    def usage(self) -> Usage:
        """The summed token usage."""
        return Usage(
            self.input_tokens,
            self.output_tokens,
            self.cached_input_tokens,
            self.cache_write_tokens,
            self.reasoning_tokens,
        )

    def merged(self, other: Ledger, *, wall_time_s: float = 0.0, sessions: int = 0) -> Ledger:
        """Return the sum of this ledger and *other*, plus extra wall time and sessions.

        Args:
            other: Another ledger.
            wall_time_s: Wall time to add.
            sessions: Sessions to add.
        """
        out = Ledger()
        for name in Ledger.__slots__:
            if name == "latency":
                continue
            setattr(out, name, getattr(self, name) + getattr(other, name))
        out.wall_time_s += wall_time_s
        out.sessions += sessions
        out.latency = dict(self.latency)
        for b, n in other.latency.items():
            out.latency[b] = out.latency.get(b, 0) + n
        return out

    def latency_percentile(self, q: float) -> float | None:
        """Return the *q*-th latency percentile (0-100) from the histogram.

        Args:
            q: The percentile.
        """
        n = sum(self.latency.values())
        if n == 0:
            return None
        rank = (n - 1) * q / 100.0
        seen = 0
        for b in sorted(self.latency):
            seen += self.latency[b]
            if seen > rank:
                return _value(b)
        return _value(max(self.latency))  # pragma: no cover - rank < n always

    def statistics(
        self, *, succeeded: int, failed: int, failures_by_kind: dict[str, int]
    ) -> BatchStatistics:
        """Return the job's statistics, with counts taken from its files.

        Args:
            succeeded: Success records in the output.
            failed: Failure records in the errors file.
            failures_by_kind: Those failures by kind.
        """
        wall = self.wall_time_s
        return BatchStatistics(
            total=succeeded + failed,
            succeeded=succeeded,
            failed=failed,
            failures_by_kind=dict(sorted(failures_by_kind.items())),
            attempts=self.attempts,
            retries=self.retries,
            usage=self.usage,
            cost_usd=self.cost_usd,
            unpriced=self.unpriced,
            latency_p50_s=self.latency_percentile(50),
            latency_p90_s=self.latency_percentile(90),
            latency_p99_s=self.latency_percentile(99),
            wall_time_s=wall,
            throughput_rps=self.recorded / wall if wall > 0 else 0.0,
        )

    def to_dict(self) -> dict[str, Any]:
        """Return the ledger as JSON-ready data."""
        data: dict[str, Any] = {n: getattr(self, n) for n in Ledger.__slots__ if n != "latency"}
        data["latency"] = {str(b): n for b, n in sorted(self.latency.items())}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Ledger:
        """Read a ledger back from :meth:`to_dict`'s data; unknown or bad fields are ignored.

        Args:
            data: The data.
        """
        out = cls()
        for name in cls.__slots__:
            if name == "latency":
                continue
            value = data.get(name)
            default = getattr(out, name)
            if isinstance(value, int | float) and not isinstance(value, bool):
                setattr(out, name, type(default)(value))
        latency = data.get("latency")
        if isinstance(latency, dict):
            for b, n in latency.items():
                if isinstance(n, int) and str(b).isdigit():
                    out.latency[int(b)] = n
        return out


def _bucket(seconds: float) -> int:
    if not math.isfinite(seconds) or seconds < _H_MIN:
        return 0
    return 1 + int(math.log(seconds / _H_MIN) / _H_LOG)


def _value(bucket: int) -> float:
    if bucket == 0:
        return 0.0
    return float(_H_MIN * _H_RATIO ** (bucket - 0.5))


def load_manifest(path: str) -> tuple[JobIdentity, Ledger, FileMarks | None] | None:
    """Read a manifest; None if there is none.

    Its file marks are None in a manifest written before corral recorded them.

    Args:
        path: The manifest's path.
    """
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return None
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise CorruptOutputError(path, 1, f"unreadable job manifest ({exc})") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CorruptOutputError(path, 1, f"not a {FORMAT} manifest")
    try:
        ident = data["identity"]
        identity = JobIdentity(
            input_path=str(ident["input_path"]),
            input_size=int(ident["input_size"]),
            requests=int(ident["requests"]),
            ids_digest=str(ident["ids_digest"]),
            errors_path=str(ident["errors_path"]),
            params=dict(ident.get("params") or {}),
        )
        ledger = Ledger.from_dict(data.get("ledger") or {})
        files = data.get("files")
        marks = None
        if files is not None:
            marks = FileMarks(**{f.name: int(files[f.name]) for f in attrs.fields(FileMarks)})
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptOutputError(path, 1, f"unreadable job manifest ({exc})") from exc
    return identity, ledger, marks


def save_manifest(path: str, identity: JobIdentity, ledger: Ledger, marks: FileMarks) -> None:
    """Replace the manifest atomically: write a temporary file, fsync it, rename it over.

    On failure (a full disk) the temporary file is removed and the old manifest stays.

    Args:
        path: The manifest's path.
        identity: The job's identity.
        ledger: The job's totals so far.
        marks: How much of the output and errors files is synced.
    """
    data = {
        "format": FORMAT,
        "identity": attrs.asdict(identity),
        "ledger": ledger.to_dict(),
        "files": attrs.asdict(marks),
    }
    text = json.dumps(data, indent=1, sort_keys=True) + "\n"
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        try:
            write_all(fd, text.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
