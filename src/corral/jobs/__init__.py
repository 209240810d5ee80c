"""Durable, resumable OpenAI Batch JSONL jobs: the engine behind ``corral run``.

A job validates its whole input before sending anything, writes every result once to an output
or errors file (fsynced before it counts as done), and resumes after any stop without sending an
id twice.

Layout:

- ``_engine``: :class:`JsonlJob` and :func:`run_jsonl`.
- ``_input``: the first pass over the input (validation, one hash per ``custom_id``).
- ``_output``: the fsynced record writer and reader.
- ``_manifest``: the manifest that ties an output to its input and parameters.
- ``_ids``: the compact table of ``custom_id`` hashes.

Its exceptions (:class:`corral.JobError` and subclasses) live in corral's one exception tree and
are re-exported here.
"""

from .._errors import (
    CorruptOutputError,
    InvalidInputError,
    JobError,
    JobLockedError,
    JobMismatchError,
    OutputLostError,
    OutputWriteError,
)
from .._exports import publish
from ._engine import JobProgress, JobSummary, JsonlJob, run_jsonl

__all__ = [
    "CorruptOutputError",
    "InvalidInputError",
    "JobError",
    "JobLockedError",
    "JobMismatchError",
    "JobProgress",
    "JobSummary",
    "JsonlJob",
    "OutputLostError",
    "OutputWriteError",
    "run_jsonl",
]

publish(globals(), __name__)
