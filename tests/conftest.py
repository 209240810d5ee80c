"""Shared test setup: which anyio backends run, and virtual time for tests that ask for it.

Every async test marked ``@pytest.mark.anyio`` runs once per backend in ``CORRAL_TEST_BACKENDS``
(comma-separated; nox sets ``asyncio`` or ``asyncio,trio``). Unset, it means asyncio and trio
when trio is importable, else asyncio alone.

A test (or class, or module through ``pytestmark``) marked ``@pytest.mark.virtual_time`` runs in
virtual time on both backends: trio's ``MockClock`` or corral's ``VirtualTimeEventLoop``, with
``autojump_threshold=0`` unless the marker passes another.

``anyio_backend`` is function-scoped, unlike the anyio plugin's default, so that each test gets
its own backend options (and so its own fresh clock): the plugin keeps one runner alive only while
some fixture holds it, and builds the next one from the next test's options. The price is that no
async fixture here can be wider than a function; a module that needs one overrides
``anyio_backend`` with a wider scope itself.
"""

from __future__ import annotations

import importlib.util
import os
import ssl
from typing import Any

import pytest
import trustme

from corral.testing import virtual_time_backend

_KNOWN_BACKENDS = ("asyncio", "trio")


def _selected_backends() -> list[str]:
    """Return the backends named by CORRAL_TEST_BACKENDS, or the installed ones."""
    raw = os.environ.get("CORRAL_TEST_BACKENDS", "").strip()
    if not raw:
        has_trio = importlib.util.find_spec("trio") is not None
        return ["asyncio", "trio"] if has_trio else ["asyncio"]
    names = [name.strip() for name in raw.replace("+", ",").split(",") if name.strip()]
    unknown = sorted(set(names) - set(_KNOWN_BACKENDS))
    if unknown:
        raise pytest.UsageError(
            f"CORRAL_TEST_BACKENDS names unknown backends {unknown}; known: {_KNOWN_BACKENDS}"
        )
    if "trio" in names and importlib.util.find_spec("trio") is None:
        raise pytest.UsageError("CORRAL_TEST_BACKENDS asks for trio, which is not installed")
    return list(dict.fromkeys(names))


BACKENDS = _selected_backends()


@pytest.fixture(params=BACKENDS)
def anyio_backend(request: pytest.FixtureRequest) -> str | tuple[str, dict[str, Any]]:
    """Run the test on each selected backend, in virtual time if it is marked so."""
    name: str = request.param
    marker = request.node.get_closest_marker("virtual_time")
    if marker is None:
        return name
    return virtual_time_backend(name, **marker.kwargs)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    """A throwaway certificate authority, for tests against TLS servers on loopback."""
    return trustme.CA()


@pytest.fixture(scope="module")
def server_context(ca: trustme.CA) -> ssl.SSLContext:
    """A server context with a certificate for 127.0.0.1, signed by the throwaway CA."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return context
