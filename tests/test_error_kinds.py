"""The one table of error kinds: every ErrorKind has a row, and everything agrees with it."""

from __future__ import annotations

import re

import httpx2
import pytest

import corral
from corral import ErrorInfo, ErrorKind, RequestFailed
from corral._errors import KIND_POLICIES, default_retryable, exception_for
from corral._flow.adaptive import Signal, signal_for_kind
from corral._flow.breaker import Outcome, outcome_for_kind
from corral._flow.retry import RetryPolicy, classify_exception
from corral.providers import _anthropic, _gemini, _openai
from corral.providers._headers import classify_status

KINDS = list(ErrorKind)


def _tree() -> dict[str, tuple[str | None, list[str]]]:
    """Read the tree drawn in corral._errors' docstring: class -> (drawn parent, kinds listed)."""
    doc = corral._errors.__doc__
    assert doc is not None
    drawing = doc.split("The tree::", 1)[1].split("\n\n", 2)[1]
    found: dict[str, tuple[str | None, list[str]]] = {}
    stack: list[tuple[int, str]] = []
    for line in drawing.splitlines():
        # Each level indents the class name by four more columns, whatever the drawing's glyphs.
        match = re.match(r"^[ │├└─]*?(\w+)(?: \(also \w+\))?\s*(.*)$", line)
        assert match, f"cannot read the tree line {line!r}"
        depth = match.start(1) // 4
        name, text = match.group(1), match.group(2)
        while stack and stack[-1][0] >= depth:
            stack.pop()
        parent = stack[-1][1] if stack else None
        stack.append((depth, name))
        kinds = re.findall(r"\b[a-z]+(?:_[a-z]+)*\b", text)
        found[name] = (parent, [k for k in kinds if k in set(ErrorKind)])
    return found


def test_every_kind_has_a_row() -> None:
    """No ErrorKind lacks a policy (the import-time check, asserted once more here)."""
    assert set(KIND_POLICIES) == set(ErrorKind)


def test_the_drawn_tree_is_the_class_tree() -> None:
    """Every class drawn in corral._errors' docstring exists, under the parent drawn for it."""
    for name, (parent, _) in _tree().items():
        cls = getattr(corral, name)
        assert isinstance(cls, type)
        assert issubclass(cls, corral.CorralError)
        if parent is not None:
            assert cls.__bases__[0] is getattr(corral, parent), f"{name} is not under {parent}"
    drawn = set(_tree())
    public = {
        name
        for name in corral.__all__
        if isinstance(getattr(corral, name), type)
        and issubclass(getattr(corral, name), corral.CorralError)
    }
    assert drawn == public, "every public exception is drawn in the tree, and only those"


@pytest.mark.parametrize("kind", KINDS, ids=str)
def test_the_exception_is_the_one_drawn_for_the_kind(kind: ErrorKind) -> None:
    """Client.complete raises the class the table names, which the tree lists for the kind."""
    policy = KIND_POLICIES[kind]
    info = ErrorInfo(kind, "boom")
    raised = exception_for(info, request_id="r", attempts=1)
    assert type(raised) is policy.exception
    assert isinstance(raised, RequestFailed)
    assert raised.kind is kind
    assert kind.value in _tree()[policy.exception.__name__][1]
    drawn_for = [name for name, (_, kinds) in _tree().items() if kind.value in kinds]
    assert drawn_for == [policy.exception.__name__]


@pytest.mark.parametrize("kind", KINDS, ids=str)
def test_breaker_and_adaptive_follow_the_table(kind: ErrorKind) -> None:
    """The breaker counts, and adaptive concurrency backs off on, exactly the kinds marked so."""
    policy = KIND_POLICIES[kind]
    for key in (kind, kind.value):
        assert outcome_for_kind(key) is (Outcome.FAILURE if policy.breaker else Outcome.IGNORED)
        assert signal_for_kind(key) is (Signal.OVERLOAD if policy.overload else Signal.NEUTRAL)


def test_the_retry_policy_documents_the_retryable_kinds() -> None:
    """RetryPolicy's docstring names exactly the kinds the table retries by default."""
    doc = RetryPolicy.__doc__ or ""
    sentence = doc.split("Only the retryable kinds are retried:", 1)[1].split("(", 1)[0]
    named = set(re.findall(r"``(\w+)``", sentence))
    assert named == {kind.value for kind in KINDS if default_retryable(kind)}


@pytest.mark.parametrize("status", [*range(300, 309), *range(400, 432), *range(500, 600)])
def test_statuses_take_their_kinds_retry_default(status: int) -> None:
    """A status's retry decision is its kind's default, never a second opinion."""
    kind, retryable = classify_status(status)
    assert retryable is KIND_POLICIES[kind].retryable


@pytest.mark.parametrize(
    "exc",
    [
        httpx2.ReadTimeout("slow"),
        TimeoutError("slow"),
        httpx2.TooManyRedirects("loop"),
        httpx2.DecodingError("gzip"),
        httpx2.ConnectError("refused"),
        ConnectionResetError("reset"),
    ],
    ids=lambda exc: type(exc).__name__,
)
def test_transport_failures_take_their_kinds_retry_default(exc: BaseException) -> None:
    """A transport failure's retry decision is its kind's default."""
    info = classify_exception(exc)
    assert info.retryable is KIND_POLICIES[info.kind].retryable


@pytest.mark.parametrize(
    "table",
    [_anthropic._ERROR_TYPES, _gemini._STATUS_KINDS, _openai._STREAM_ERROR_KINDS],
    ids=["anthropic error types", "gemini statuses", "openai stream errors"],
)
def test_provider_vocabularies_agree_with_the_table(
    table: dict[str, tuple[ErrorKind, bool]],
) -> None:
    """A provider's own error names map to a kind and that kind's default retry decision."""
    for name, (kind, retryable) in table.items():
        assert retryable is KIND_POLICIES[kind].retryable, name
