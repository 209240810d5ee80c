"""The flat public API is complete, sorted and documented."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import corral
import corral.providers


def _private_modules() -> list[str]:
    names = []
    for info in pkgutil.iter_modules(corral.__path__):
        if info.name.startswith("_") and info.name != "__main__":
            names.append(f"corral.{info.name}")
    return names


def test_all_is_sorted_and_unique() -> None:
    """corral.__all__ is sorted and has no duplicates."""
    assert list(corral.__all__) == sorted(set(corral.__all__))
    assert list(corral.providers.__all__) == sorted(set(corral.providers.__all__))


def test_every_private_module_export_is_reexported() -> None:
    """Every name a private module lists in its __all__ and that is public API is in corral."""
    missing = []
    for name in _private_modules():
        module = importlib.import_module(name)
        for export in getattr(module, "__all__", []):
            if export.startswith("_") or name in ("corral._runner", "corral._cli"):
                continue
            obj = getattr(module, export)
            if inspect.ismodule(obj):
                continue
            if export not in corral.__all__:
                missing.append(f"{name}.{export}")
    assert not missing, f"not exported from corral: {missing}"


def test_every_export_exists_and_is_documented() -> None:
    """Every name in __all__ resolves, and every class and function has a docstring."""
    for name in corral.__all__:
        obj = getattr(corral, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert inspect.getdoc(obj), f"corral.{name} has no docstring"
    for name in corral.providers.__all__:
        assert inspect.getdoc(getattr(corral.providers, name)), name
