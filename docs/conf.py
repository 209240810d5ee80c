"""Sphinx configuration for corral's docs: Furo, MyST Markdown, autodoc with Google docstrings."""

from __future__ import annotations

import asyncio
import importlib
import importlib.metadata
import inspect
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sphinx.application import Sphinx

project = "corral"
author = "The corral developers"
copyright = "2026, The corral developers"
release = importlib.metadata.version("corral")
version = ".".join(release.split(".")[:2])

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
]
source_suffix = {".md": "markdown"}
exclude_patterns = ["_build"]

html_theme = "furo"
html_title = f"corral {release}"

myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented_params"
autodoc_preserve_defaults = True
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

# Every reference must resolve (`-n`). intersphinx needs the network, which CI does not have,
# so references into the standard library and third-party packages cannot resolve: ignore those
# by module, and only those. Builtins and typing names resolve without intersphinx.
nitpicky = True
_UNRESOLVABLE = (
    "_asyncio",  # where asyncio.Future and asyncio.Task really live
    "anyio",
    "asyncio",
    "attr",
    "attrs",
    "cattrs",
    "collections",
    "concurrent",
    "contextlib",
    "datetime",
    "enum",
    "hypercorn",
    "httpx2",
    "os",
    "pathlib",
    "rich",
    "selectors",
    "ssl",
    "stamina",
    "trio",
    "types",
    "typing_extensions",
)
nitpick_ignore_regex = [
    (r"py:.*", rf"({'|'.join(_UNRESOLVABLE)})(\..+)?"),
    # Type variables (T, _Ts, K_co, ...) appear in signatures but are not documented objects.
    (r"py:class", r"(corral(\.\w+)*\.)?\*?_?[A-Z][a-z]?(_co|_contra)?"),
    # Type aliases: autodoc prints their names in signatures, but they are not classes; each is
    # documented where it is exported.
    (r"py:class", r"(corral(\.\w+)*\.)?(LatencySpec|RateLimitAlgorithm|ParserName|AnyRequest)"),
]

# Public objects are defined in private modules (corral._models, ...) and re-exported flat.
# Point their __module__ at the public home before autodoc runs, so that signatures and
# cross-references say corral.ChatRequest (which resolves) rather than corral._models.ChatRequest
# (which is documented nowhere).
_PUBLIC_MODULES = ("corral", "corral.providers", "corral.testing")


def _publish(module_name: str) -> None:
    module = importlib.import_module(module_name)
    for name in getattr(module, "__all__", ()):
        obj = getattr(module, name)
        if (inspect.isclass(obj) or inspect.isfunction(obj)) and obj.__module__.startswith(
            f"{module_name}._"
        ):
            obj.__module__ = module_name


for _module_name in _PUBLIC_MODULES:
    _publish(_module_name)


def _public_bases(app: Sphinx, name: str, obj: object, options: object, bases: list[Any]) -> None:
    # On Unix asyncio.SelectorEventLoop is an alias of a private class; show the public name.
    for i, base in enumerate(bases):
        if base is asyncio.SelectorEventLoop:
            bases[i] = "asyncio.SelectorEventLoop"


def _skip_namedtuple_fields(
    app: Sphinx, what: str, name: str, obj: object, skip: bool, options: object
) -> bool | None:
    # A NamedTuple's fields are documented in its Attributes section; the generated
    # "Alias for field number N" members would describe them a second time.
    doc = getattr(obj, "__doc__", None) or ""
    if what == "class" and doc.startswith("Alias for field number"):
        return True
    return None


def setup(app: Sphinx) -> None:
    app.connect("autodoc-process-bases", _public_bases)
    app.connect("autodoc-skip-member", _skip_namedtuple_fields)
