"""Every test the docs cite as proof exists, so a renamed test cannot leave a promise unproven."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_CITED = re.compile(r"(tests/[\w/]+\.py)::(\w+)")
_FILES = re.compile(r"(tests/[\w/]+\.py)")


def test_every_cited_test_exists() -> None:
    """Each ``tests/...py`` and ``tests/...py::name`` in docs/ and the README exists."""
    missing = []
    pages = [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]
    cited = 0
    for page in pages:
        for path, name in _CITED.findall(page.read_text("utf-8")):
            cited += 1
            source = ROOT / path
            pattern = re.compile(rf"^\s*(async\s+def|def|class)\s+{name}\b", re.M)
            if not source.is_file() or not pattern.search(source.read_text("utf-8")):
                missing.append(f"{page.name}: {path}::{name}")
        for path in _FILES.findall(page.read_text("utf-8")):
            if not (ROOT / path).is_file():
                missing.append(f"{page.name}: {path}")
    assert cited > 25, "the guarantees page should cite its tests"
    assert not missing, missing
