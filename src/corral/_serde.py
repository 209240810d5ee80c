"""The one cattrs converter that turns corral's values into JSON-ready data and back."""

from __future__ import annotations

import json
from typing import Any, TypeVar

import cattrs

from ._models import Completion, Failure, Result

__all__ = ["converter", "from_json", "to_json"]

T = TypeVar("T")

converter = cattrs.Converter(omit_if_default=False, forbid_extra_keys=True)
"""The converter for every corral value: ``converter.unstructure(x)`` / ``converter.structure``."""


def _result_hooks(cls: type[T]) -> None:
    unstructure = cattrs.gen.make_dict_unstructure_fn(cls, converter)
    structure = cattrs.gen.make_dict_structure_fn(
        cls, converter, _cattrs_forbid_extra_keys=True
    )

    def unstructure_hook(value: T) -> dict[str, Any]:
        data = unstructure(value)
        # ``ok`` tells the two result types apart when the JSON is read back.
        data["ok"] = cls is Completion
        return data

    def structure_hook(data: Any, _: Any) -> T:
        if isinstance(data, dict) and "ok" in data:
            data = {k: v for k, v in data.items() if k != "ok"}
        return structure(data, cls)

    converter.register_unstructure_hook(cls, unstructure_hook)
    converter.register_structure_hook(cls, structure_hook)


def _structure_content(data: Any, _: Any) -> str | list[dict[str, Any]]:
    if isinstance(data, str):
        return data
    if isinstance(data, list) and all(isinstance(p, dict) for p in data):
        return data
    raise ValueError("message content must be a string or a list of content-part objects")


def _structure_result(data: Any, _: Any) -> Result:
    if not isinstance(data, dict) or not isinstance(data.get("ok"), bool):
        raise ValueError("a result must be a JSON object with a boolean 'ok' key")
    return converter.structure(data, Completion if data["ok"] else Failure)


converter.register_structure_hook(
    str | list[dict[str, Any]],  # type: ignore[arg-type]
    _structure_content,
)
_result_hooks(Completion)
_result_hooks(Failure)
converter.register_structure_hook(Result, _structure_result)  # type: ignore[arg-type]


def to_json(value: Any) -> str:
    """Serialise any corral value to a JSON string.

    Args:
        value: A request, result, usage, statistics or policy value.
    """
    return json.dumps(converter.unstructure(value), separators=(",", ":"), ensure_ascii=False)


def from_json(text: str | bytes, cls: type[T]) -> T:
    """Read a corral value of type *cls* back from JSON.

    Args:
        text: The JSON.
        cls: The value's type, for example :class:`corral.Completion`.
    """
    return converter.structure(json.loads(text), cls)
