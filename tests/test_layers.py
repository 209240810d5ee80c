"""The layers of src/corral, read from the imports: a lower layer never imports a higher one.

The order (DESIGN.md): values and errors < transport, flow control < providers < client < jobs
< CLI. Transport and flow control are peers that know nothing of each other. ``corral.testing``
sits beside the library: it may use any of it, but no library module imports it, and the CLI
(which serves the mock server) imports only its public names.

Every import counts, at module level or inside a function (a lazy import is still a
dependency), except those under ``if TYPE_CHECKING:``: they never run, so they create no
import-time dependency, and an annotation may name a type from a higher layer. They must still
not reach ``corral.testing``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = SRC / "corral"

# Module (dotted, under corral) or package prefix -> layer. A new module must be listed here;
# the longest matching entry wins.
LAYER_OF: dict[str, str] = {
    "corral._models": "values",
    "corral._errors": "values",
    "corral._serde": "values",
    "corral._secret": "values",
    "corral._exports": "values",
    "corral._version": "values",
    "corral._transport": "transport",
    "corral._flow": "flow",
    "corral.providers": "providers",
    "corral._client": "client",
    "corral._attempt": "client",
    "corral._exchange": "client",
    "corral._runner": "client",
    "corral._streaming": "client",
    "corral.jobs": "jobs",
    "corral._cli": "cli",
    "corral.__main__": "cli",
    "corral.testing": "testing",
    # The package itself re-exports every layer: exempt as an importer, top when imported.
    "corral": "package",
}

# Layer -> the layers it may import.
MAY_IMPORT: dict[str, frozenset[str]] = {
    "values": frozenset({"values"}),
    "transport": frozenset({"values", "transport"}),
    "flow": frozenset({"values", "flow"}),
    "providers": frozenset({"values", "transport", "flow", "providers"}),
    "client": frozenset({"values", "transport", "flow", "providers", "client"}),
    "jobs": frozenset({"values", "transport", "flow", "providers", "client", "jobs"}),
    "cli": frozenset({"values", "transport", "flow", "providers", "client", "jobs", "cli"}),
}


def module_name(path: Path) -> str:
    """Return the dotted name of the module at *path* under src/."""
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = sorted(module_name(path) for path in PACKAGE.rglob("*.py"))


def layer_of(module: str) -> str | None:
    """Return the layer of a corral module, or None when no entry of LAYER_OF covers it."""
    candidates = [
        prefix for prefix in LAYER_OF if module == prefix or module.startswith(prefix + ".")
    ]
    if not candidates or (candidates == ["corral"] and module != "corral"):
        return None
    return LAYER_OF[max(candidates, key=len)]


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(module: str, added: str = "") -> list[tuple[int, str, bool]]:
    """Return ``(line, imported corral module, under TYPE_CHECKING)`` for each corral import.

    Args:
        module: The dotted module name.
        added: Source appended to the module's own, to check the checker.
    """
    path = SRC / Path(*module.split("."))
    is_package = path.is_dir()
    path = path / "__init__.py" if is_package else path.with_suffix(".py")
    tree = ast.parse(path.read_text(encoding="utf-8") + "\n" + added, str(path))
    package = module if is_package else module.rpartition(".")[0]
    found: list[tuple[int, str, bool]] = []

    def visit(node: ast.AST, typing_only: bool) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, True)
            for child in node.orelse:
                visit(child, typing_only)
            return
        if isinstance(node, ast.Import):
            found.extend(
                (node.lineno, alias.name, typing_only)
                for alias in node.names
                if alias.name.split(".")[0] == "corral"
            )
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            if target.split(".")[0] == "corral":
                for alias in node.names:
                    # `from . import providers` imports a module; `from ._x import y` a name.
                    sub = f"{target}.{alias.name}"
                    found.append((node.lineno, sub if sub in MODULES else target, typing_only))
        for child in ast.iter_child_nodes(node):
            visit(child, typing_only)

    visit(tree, False)
    return found


def violations(module: str, added: str = "") -> list[str]:
    """Return one line per import of *module* (plus *added* source) that breaks the layers."""
    importer = layer_of(module)
    problems: list[str] = []
    for line, target, typing_only in imports_of(module, added):
        where = f"{module}:{line} imports {target}"
        if target.startswith("corral.testing") and importer != "testing":
            if importer != "cli" or typing_only:
                problems.append(f"{where}: the library never imports corral.testing")
            elif target != "corral.testing":
                problems.append(f"{where}: the CLI imports only corral.testing's public names")
            continue
        if typing_only or importer in ("package", "testing"):
            continue
        assert importer is not None
        imported = layer_of(target)
        if imported is None:
            problems.append(f"{where}: {target} has no layer in tests/test_layers.py's LAYER_OF")
        elif imported not in MAY_IMPORT[importer] and target != "corral.testing":
            problems.append(f"{where}: layer {importer} may not import layer {imported}")
    return problems


def test_every_module_has_a_layer() -> None:
    """A new module is placed in a layer before the layer rules can pass."""
    unknown = [module for module in MODULES if layer_of(module) is None]
    assert not unknown, (
        f"modules without a layer: {unknown}; add them to LAYER_OF in tests/test_layers.py"
    )


@pytest.mark.parametrize("module", MODULES)
def test_no_module_imports_a_higher_layer(module: str) -> None:
    """Each module imports only its own layer and those below it, and never corral.testing."""
    assert violations(module) == []


def test_the_checker_sees_what_it_must() -> None:
    """The reader finds lazy, relative and TYPE_CHECKING imports (else the rules check nothing)."""
    cli = imports_of("corral._cli")
    assert any(target == "corral.testing" and not typing_only for _, target, typing_only in cli)
    assert any(target == "corral.providers" for _, target, _ in cli)
    errors = imports_of("corral._errors")
    assert any(target == "corral._models" and typing_only for _, target, typing_only in errors)
    fast = imports_of("corral._transport.fast")
    assert any(target == "corral._transport.pool" for _, target, _ in fast)


@pytest.mark.parametrize(
    ("module", "source", "expected"),
    [
        ("corral._flow.retry", "from ..providers import _headers", "may not import layer"),
        ("corral._flow.retry", "from .._transport import fast", "may not import layer"),
        ("corral._transport.fast", "from .._flow import retry", "may not import layer"),
        ("corral._models", "def f():\n    from ._client import Client", "may not import layer"),
        ("corral.providers._base", "from ..testing import MockServer", "never imports"),
        ("corral._cli", "from .testing._serve import serve", "only corral.testing's public"),
        ("corral._client", "from ._newthing import x", "has no layer"),
    ],
)
def test_a_broken_rule_is_reported(module: str, source: str, expected: str) -> None:
    """An import that breaks a rule, added to a real module, is reported with its reason."""
    assert len(imports_of(module, source)) == len(imports_of(module)) + 1
    assert any(expected in problem for problem in violations(module, source))


def test_type_checking_imports_do_not_count() -> None:
    """An annotation-only import of a higher layer is allowed; of corral.testing it is not."""
    higher = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ._client import Client"
    assert violations("corral._models", higher) == []
    testing = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .testing import serve"
    assert violations("corral._models", testing) != []
