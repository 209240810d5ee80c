"""Shared test setup: which anyio backends run, and virtual time for tests that ask for it.

Every async test marked ``@pytest.mark.anyio`` runs once per backend in ``CORRAL_TEST_BACKENDS``
(comma-separated; nox sets ``asyncio`` or ``asyncio,trio``). Unset, it means asyncio and trio
when trio is importable, else asyncio alone.

A test (or class, or module through ``pytestmark``) marked ``@pytest.mark.virtual_time`` runs in
virtual time on both backends: trio's ``MockClock`` or corral's ``VirtualTimeEventLoop``, with
``autojump_threshold=0`` unless the marker passes another.

``CORRAL_ASYNCIO_MODE`` changes how asyncio runs, for every asyncio test (virtual time included):
``debug`` turns on asyncio's debug mode (calls from another thread raise; never-awaited
coroutines and unclosed resources warn, which ``filterwarnings = error`` makes failures; slow
callbacks are only logged, as they depend on the machine's load), ``eager`` (Python 3.12+) installs
``asyncio.eager_task_factory``, so that a new task runs up to its first suspension before
``create_task`` returns; unset or ``default``, asyncio runs as it does in production. nox sets it
per session (see noxfile.py).

``anyio_backend`` is function-scoped, unlike the anyio plugin's default, so that each test gets
its own backend options (and so its own fresh clock): the plugin keeps one runner alive only while
some fixture holds it, and builds the next one from the next test's options. The price is that no
async fixture here can be wider than a function; a module that needs one overrides
``anyio_backend`` with a wider scope itself.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import ssl
import sys
from collections.abc import Callable
from typing import Any

import pytest
import trustme
from hypothesis import HealthCheck, settings

from corral.testing import virtual_time_backend

_KNOWN_BACKENDS = ("asyncio", "trio")

# Under coverage, xdist and a loaded machine, drawing inputs is slow for reasons unrelated to the
# strategies; that health check would fail tests at random.
settings.register_profile("corral", suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("corral")


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

_ASYNCIO_MODES = ("default", "debug", "eager")


def _selected_asyncio_mode() -> str:
    """Return the asyncio mode named by CORRAL_ASYNCIO_MODE (``default`` when unset)."""
    mode = os.environ.get("CORRAL_ASYNCIO_MODE", "").strip() or "default"
    if mode not in _ASYNCIO_MODES:
        raise pytest.UsageError(
            f"CORRAL_ASYNCIO_MODE is {mode!r}; known: {', '.join(_ASYNCIO_MODES)}"
        )
    if mode == "eager" and sys.version_info < (3, 12):
        raise pytest.UsageError("CORRAL_ASYNCIO_MODE=eager needs Python 3.12 or newer")
    return mode


ASYNCIO_MODE = _selected_asyncio_mode()


def _eager(
    factory: Callable[[], asyncio.AbstractEventLoop],
) -> Callable[[], asyncio.AbstractEventLoop]:
    """Wrap a loop factory so that its loops start tasks eagerly."""

    def eager_loop() -> asyncio.AbstractEventLoop:
        loop = factory()
        loop.set_task_factory(asyncio.eager_task_factory)  # type: ignore[attr-defined,unused-ignore]
        return loop

    return eager_loop


def _with_asyncio_mode(name: str, options: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Add the selected asyncio mode to an asyncio backend's options."""
    if name != "asyncio" or ASYNCIO_MODE == "default":
        return name, options
    if ASYNCIO_MODE == "debug":
        return name, {**options, "debug": True}
    factory = options.get("loop_factory", asyncio.new_event_loop)
    return name, {**options, "loop_factory": _eager(factory)}


@pytest.fixture(params=BACKENDS)
def anyio_backend(request: pytest.FixtureRequest) -> str | tuple[str, dict[str, Any]]:
    """Run the test on each selected backend, in virtual time if it is marked so."""
    name: str = request.param
    marker = request.node.get_closest_marker("virtual_time")
    if marker is None:
        backend, options = name, {}
    else:
        backend, options = virtual_time_backend(name, **marker.kwargs)
    backend, options = _with_asyncio_mode(backend, options)
    return (backend, options) if options else backend


def pytest_report_header() -> str:
    """Say which backends and asyncio mode this run uses, so a failure's log shows it."""
    return f"corral: backends {','.join(BACKENDS)}; asyncio mode {ASYNCIO_MODE}"


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
