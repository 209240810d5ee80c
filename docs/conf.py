"""Sphinx configuration for corral's docs: Furo, MyST Markdown, autodoc with Google docstrings."""

from __future__ import annotations

import asyncio
import importlib
import importlib.metadata
import inspect
from typing import TYPE_CHECKING, Any

import attrs

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
# Off: attrs writes __init__'s source itself, so the source's defaults read
# "attr_dict['attempts'].default"; the signature's own values are the real ones.
autodoc_preserve_defaults = False
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


# attrs classes: autodoc reads __init__'s signature, not its source (autodoc_preserve_defaults is
# off), so plain defaults show their values. A default made by a factory shows as attrs' NOTHING
# there; show what the factory makes instead.
class _Shown:
    """A stand-in default whose repr is the text to show."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def _factory_text(factory: Any) -> str:
    if factory in (dict, list, set, tuple, frozenset):
        return repr(factory())
    return f"{factory.__name__.lstrip('_')}()"


def _attrs_defaults(
    app: Sphinx,
    what: str,
    name: str,
    obj: object,
    options: object,
    signature: str | None,
    return_annotation: str | None,
) -> tuple[str, str | None] | None:
    if what not in ("class", "exception") or not (isinstance(obj, type) and attrs.has(obj)):
        return None
    factories = {
        field.alias: field.default.factory
        for field in attrs.fields(obj)
        if field.init and isinstance(field.default, attrs.Factory)  # type: ignore[arg-type]
    }
    if not factories:
        return None
    # Annotations are left out, as autodoc_typehints = "description" does for every signature.
    params = [
        param.replace(
            annotation=inspect.Parameter.empty,
            default=_Shown(_factory_text(factories[param.name]))
            if param.name in factories
            else param.default,
        )
        for param in inspect.signature(obj).parameters.values()
    ]
    return str(inspect.Signature(params)), return_annotation


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
    app.connect("autodoc-process-signature", _attrs_defaults)
