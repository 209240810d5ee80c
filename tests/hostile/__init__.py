"""The hostile test server: servers written to break corral's written promises.

Each module adds one family of attacks to the kit, over real sockets on loopback (built on
``tests/transport/transport_helpers.raw_server`` for byte-level misbehaviour, or an ASGI app served
by :func:`corral.testing.serve` for API-level lies), and the ``test_*`` modules beside them hold
the tests that prove each promise of ``docs/guarantees.md`` holds against them, on asyncio and
trio.
"""
