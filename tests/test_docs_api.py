"""docs/api.md documents every public name, each where it is defined."""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

import pytest

API_PAGE = Path(__file__).parent.parent / "docs" / "api.md"
PUBLIC_MODULES = ("corral", "corral.providers", "corral.jobs", "corral.testing")

_MODULE = re.compile(r"^\.\. (?:current)?module:: (\S+)\s*$")
_OBJECT = re.compile(
    r"^\.\. (?:auto(?:class|exception|function|data)|py:(?:class|exception|function|data))"
    r":: (\S+?)(?:\(.*)?\s*$"
)


def _documented(page: str) -> list[str]:
    """Return the full names the page's directives document, in page order."""
    names: list[str] = []
    module = ""
    for line in page.splitlines():
        if match := _MODULE.match(line):
            module = match.group(1)
        elif match := _OBJECT.match(line):
            name = match.group(1)
            names.append(name if "." in name else f"{module}.{name}")
    return names


DOCUMENTED = _documented(API_PAGE.read_text(encoding="utf-8"))


def _home(module_name: str, name: str) -> str:
    """Return the full name an export is documented under: its defining public module's."""
    obj = getattr(importlib.import_module(module_name), name)
    defined_in = getattr(obj, "__module__", None)
    if (inspect.isclass(obj) or inspect.isfunction(obj)) and defined_in in PUBLIC_MODULES:
        return f"{defined_in}.{name}"
    return f"{module_name}.{name}"


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_every_export_is_documented(module_name: str) -> None:
    """A name added to a public ``__all__`` without an entry in docs/api.md fails here."""
    module = importlib.import_module(module_name)
    missing = [name for name in module.__all__ if _home(module_name, name) not in DOCUMENTED]
    assert not missing, f"docs/api.md does not document {module_name}: {missing}"


def test_every_documented_name_is_public_and_documented_once() -> None:
    """The page names no private module or stale name, and documents nothing twice."""
    assert len(DOCUMENTED) == len(set(DOCUMENTED)), sorted(
        {name for name in DOCUMENTED if DOCUMENTED.count(name) > 1}
    )
    for full_name in DOCUMENTED:
        module_name, _, name = full_name.rpartition(".")
        assert module_name in PUBLIC_MODULES, f"{full_name} is not in a public module"
        module = importlib.import_module(module_name)
        assert name in module.__all__, f"{full_name} is documented but not exported"
