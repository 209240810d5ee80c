"""Give every public object the public module it is reached through."""

from __future__ import annotations

from typing import Any

import attrs


def publish(namespace: dict[str, Any], module: str) -> None:
    """Set ``__module__`` of the names in *namespace*'s ``__all__`` to *module*.

    Tracebacks, reprs and the docs then show ``corral.Client`` rather than
    ``corral._client.Client``. Only objects defined in a private module under *module* are
    renamed, so a name re-exported from another public package keeps that package's name.
    attrs classes have their string annotations resolved first, while their defining module is
    still the one that can resolve them (cattrs and ``typing.get_type_hints`` need it).

    Args:
        namespace: The public package's globals.
        module: The public package's name.
    """
    prefix = module + "."
    for name in namespace["__all__"]:
        obj = namespace[name]
        current = getattr(obj, "__module__", None)
        if not isinstance(current, str) or not current.startswith(prefix):
            continue
        if not any(part.startswith("_") for part in current[len(prefix) :].split(".")):
            continue
        if isinstance(obj, type) and attrs.has(obj):
            attrs.resolve_types(obj)
        try:
            obj.__module__ = module
        except (AttributeError, TypeError):  # instances such as the converter keep theirs
            continue
