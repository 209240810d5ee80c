"""The public API is complete, sorted, documented and shown under public module names."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from pathlib import Path
from types import ModuleType

import pytest

import corral
import corral.jobs
import corral.providers
import corral.testing

PUBLIC: tuple[ModuleType, ...] = (corral, corral.jobs, corral.providers, corral.testing)
# Private modules whose __all__ names machinery for other modules, not users.
INTERNAL = {"corral._runner", "corral._cli", "corral._exports"}


def _public_home(name: str) -> str:
    """Return the public package a private module's names are exported from."""
    parts = name.split(".")
    while any(part.startswith("_") for part in parts[1:]):
        parts.pop()
    return ".".join(parts)


def _private_modules() -> list[str]:
    names = []
    for info in pkgutil.walk_packages(corral.__path__, "corral."):
        parts = info.name.split(".")
        if parts[1] in ("__main__", "testing") or not any(p.startswith("_") for p in parts[1:]):
            continue
        names.append(info.name)
    return names


@pytest.mark.parametrize("package", PUBLIC, ids=lambda m: m.__name__)
def test_all_is_sorted_and_unique(package: ModuleType) -> None:
    """Each public package's __all__ is sorted and has no duplicates."""
    assert list(package.__all__) == sorted(set(package.__all__))


def test_every_private_module_export_is_reexported() -> None:
    """Every name a private module lists in its __all__ is exported by its public package."""
    missing = []
    for name in _private_modules():
        if name in INTERNAL:
            continue
        module = importlib.import_module(name)
        home = importlib.import_module(_public_home(name))
        for export in getattr(module, "__all__", []):
            if export.startswith("_") or inspect.ismodule(getattr(module, export)):
                continue
            if export not in home.__all__:
                missing.append(f"{name}.{export} (not in {home.__name__})")
    assert not missing, f"not exported: {missing}"


@pytest.mark.parametrize("package", PUBLIC, ids=lambda m: m.__name__)
def test_every_export_exists_and_is_documented(package: ModuleType) -> None:
    """Every name in __all__ resolves, and every class and function has a docstring."""
    for name in package.__all__:
        obj = getattr(package, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert inspect.getdoc(obj), f"{package.__name__}.{name} has no docstring"


@pytest.mark.parametrize("package", PUBLIC, ids=lambda m: m.__name__)
def test_every_export_carries_a_public_module(package: ModuleType) -> None:
    """Tracebacks and reprs name exports by a public module, never a private one."""
    private = []
    for name in package.__all__:
        obj = getattr(package, name)
        if not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue
        module = obj.__module__
        if module.startswith("corral") and any(p.startswith("_") for p in module.split(".")):
            private.append(f"{package.__name__}.{name}: {module}")
        elif module.startswith("corral"):
            assert getattr(importlib.import_module(module), obj.__name__) is obj
    assert not private, private


def test_public_names_still_round_trip_through_cattrs() -> None:
    """Renaming modules leaves the converter able to structure every result value."""
    usage = corral.Usage(input_tokens=3, output_tokens=2)
    done = corral.Completion(
        id="a",
        model="m",
        content="hi",
        finish_reason="stop",
        usage=usage,
        cost_usd=0.5,
        latency_s=0.1,
        attempts=1,
        raw={},
    )
    assert corral.from_json(corral.to_json(done), corral.Completion) == done


def test_the_version_comes_from_the_source() -> None:
    """``corral.__version__`` is read from ``_version.py``, never from installed metadata."""
    from corral import _version

    assert corral.__version__ == _version.__version__
    src = Path(corral.__file__).parent
    readers = [p for p in src.rglob("*.py") if "importlib.metadata" in p.read_text("utf-8")]
    assert readers == []
