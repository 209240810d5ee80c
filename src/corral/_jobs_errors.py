"""The exceptions of JSONL jobs: why a job refused to start, or had to stop.

They sit under :class:`corral.CorralError`::

    CorralError
    └── JobError                      a job cannot start or continue; nothing paid was lost
        ├── JobMismatchError          the output belongs to another input or other parameters
        ├── CorruptOutputError        a malformed record in the middle of an output file
        ├── JobLockedError            another run is writing the same output
        └── OutputWriteError          writing or syncing the output failed (disk full, EIO)

Bad input lines raise :class:`corral.InvalidInputError` instead, before anything is sent.
"""

from __future__ import annotations

from ._errors import CorralError

__all__ = [
    "CorruptOutputError",
    "JobError",
    "JobLockedError",
    "JobMismatchError",
    "OutputWriteError",
]


class JobError(CorralError):
    """A JSONL job cannot start or continue. Records already written stay valid."""


class JobMismatchError(JobError):
    """The existing output was made from another input or with other parameters.

    Args:
        output: The output file.
        differences: One human-readable line per difference.
    """

    def __init__(self, output: str, differences: list[str]) -> None:
        self.output = output
        self.differences = differences
        listed = "\n".join(f"  - {d}" for d in differences)
        super().__init__(
            f"{output} belongs to a different job, so it cannot be resumed:\n{listed}\n"
            f"Use another output file, or pass --restart (restart=True) to start over; the "
            f"existing files are then kept with a .bak suffix."
        )


class CorruptOutputError(JobError):
    """A record in the middle of an output or errors file is malformed.

    Only the last line of a file may be torn (a crash mid-write); it is repaired on resume. A bad
    line followed by good ones means the file was edited or damaged, and corral will not guess.

    Args:
        path: The damaged file.
        line: The bad line's number, from 1.
        reason: What is wrong with it.
    """

    def __init__(self, path: str, line: int, reason: str) -> None:
        self.path = path
        self.line = line
        self.reason = reason
        super().__init__(
            f"{path}, line {line}: {reason}. Only a torn last line is repaired automatically; "
            f"fix or remove this line (or pass --restart to start over)."
        )


class JobLockedError(JobError):
    """Another run is writing to the same output file.

    Args:
        output: The output file.
    """

    def __init__(self, output: str) -> None:
        self.output = output
        super().__init__(f"another corral run is writing {output}; wait for it to finish")


class OutputWriteError(JobError):
    """Writing or syncing an output file failed; the job stopped.

    Every record counted as done is complete on disk. Fix the cause (free space, a failing disk)
    and rerun the same command to resume.

    Args:
        path: The file that could not be written.
        error: The operating system's error.
    """

    def __init__(self, path: str, error: OSError) -> None:
        self.path = path
        self.error = error
        reason = error.strerror or str(error)
        super().__init__(
            f"could not write {path}: {reason}. Results counted as done are safe on disk; "
            f"fix the cause and rerun the same command to resume."
        )
