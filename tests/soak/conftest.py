"""Keep the soak out of ordinary test sessions: it runs only when CORRAL_SOAK_REQUESTS is set.

``pytest`` (and nox's ``tests`` sessions) collect ``tests/``, which holds this folder; without the
variable the soak module is not even collected, so the usual sessions neither run nor list it.
``nox -s soak_short`` (5,000 requests per backend, part of the default ``nox`` run) and
``nox -s soak`` (100,000) set it; so can you: ``CORRAL_SOAK_REQUESTS=20000 pytest tests/soak``.
Naming the file itself (``pytest tests/soak/test_soak.py``) still collects it, since pytest
never ignores an explicit argument, and then runs the full 100,000.
"""

from __future__ import annotations

import os

collect_ignore = [] if os.environ.get("CORRAL_SOAK_REQUESTS") else ["test_soak.py"]
