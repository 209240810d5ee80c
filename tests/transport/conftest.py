"""Fixtures for the FastTransport tests."""

from __future__ import annotations

import pytest

from corral._transport.http11 import HAS_HTTPTOOLS, ParserName

from .attempt_paths import PATHS, AttemptPath

PARSERS: list[ParserName] = ["httptools", "h11"] if HAS_HTTPTOOLS else ["h11"]

_ENVIRONMENT = [
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
]


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the machine's proxy and CA settings out of tests that rely on their absence."""
    for name in _ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


@pytest.fixture(params=PARSERS)
def parser(request: pytest.FixtureRequest) -> ParserName:
    """Run the test with each response parser."""
    name: ParserName = request.param
    return name


@pytest.fixture(params=PATHS, ids=str)
def path(request: pytest.FixtureRequest) -> AttemptPath:
    """Run the test on each path an attempt can take through the transport."""
    chosen: AttemptPath = request.param
    return chosen
