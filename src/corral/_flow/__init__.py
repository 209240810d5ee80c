"""Flow control: what decides when, whether and how often a request is sent.

Each module holds one policy and the machinery that enforces it:

- ``ratelimit``: :class:`corral.RateLimit`, the sans-IO GCRA core, header learning and the shared
  429 cooldown.
- ``breaker``: :class:`corral.CircuitBreaker`, one per endpoint.
- ``budget``: :class:`corral.Budget` (reserve the worst case, then settle).
- ``pricing``: :class:`corral.Pricing` and the bundled ``prices.json``.
- ``adaptive``: AIMD concurrency for ``max_concurrency="auto"``.
- ``retry``: :class:`corral.RetryPolicy` and error classification.
"""
