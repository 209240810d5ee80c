"""Test helpers: a mock LLM server, ``serve()``, virtual time, and the provider conformance kit.

This package is public but is never imported by ``corral`` itself.

General layout:

- ``_mock*``: :class:`MockServer`, an ASGI app speaking the OpenAI, Anthropic and Gemini APIs,
  configured by :class:`MockConfig`.
- ``_serve``: :func:`serve` (any ASGI app on a loopback port, asyncio or trio) and
  :func:`run_mock_server` (the ``corral mock-server`` command), with the parsers of its options
  (:func:`parse_latency`, :func:`parse_error_rates`) that the ``corral`` command also uses.
- ``_clock``: virtual time on both backends (:func:`virtual_time_backend`).
- ``_conformance``: :func:`check_provider`, the same assertions for any provider adapter.
"""

from .._exports import publish
from ._clock import VirtualTimeEventLoop, VirtualTimeStatistics, virtual_time_backend
from ._conformance import (
    Case,
    CaseOutcome,
    ConformanceReport,
    Expected,
    RecordedResponse,
    check_provider,
    load_cases,
    render_events,
)
from ._mock.config import LatencySpec, MockConfig, MockHit, MockStatistics, RateLimitAlgorithm
from ._mock.server import MockServer
from ._mock.text import count_mock_tokens, mock_answer
from ._serve import RunningServer, parse_error_rates, parse_latency, run_mock_server, serve

__all__ = [
    "Case",
    "CaseOutcome",
    "ConformanceReport",
    "Expected",
    "LatencySpec",
    "MockConfig",
    "MockHit",
    "MockServer",
    "MockStatistics",
    "RateLimitAlgorithm",
    "RecordedResponse",
    "RunningServer",
    "VirtualTimeEventLoop",
    "VirtualTimeStatistics",
    "check_provider",
    "count_mock_tokens",
    "load_cases",
    "mock_answer",
    "parse_error_rates",
    "parse_latency",
    "render_events",
    "run_mock_server",
    "serve",
    "virtual_time_backend",
]

publish(globals(), __name__)
