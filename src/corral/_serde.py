"""The one cattrs converter that turns corral's values into JSON-ready data and back."""

from __future__ import annotations

import json
from typing import Any, TypeVar

import cattrs

from ._models import (
    AnyRequest,
    ChatRequest,
    Completion,
    EmbeddingRequest,
    EmbeddingResult,
    Failure,
    Result,
)

__all__ = ["converter", "from_json", "to_json"]

T = TypeVar("T")

converter = cattrs.Converter(omit_if_default=False, forbid_extra_keys=True)
"""The converter for every corral value: ``converter.unstructure(x)`` / ``converter.structure``."""


def _result_hooks(cls: type[T]) -> None:
    unstructure = cattrs.gen.make_dict_unstructure_fn(cls, converter)
    structure = cattrs.gen.make_dict_structure_fn(cls, converter, _cattrs_forbid_extra_keys=True)

    def unstructure_hook(value: T) -> dict[str, Any]:
        data = unstructure(value)
        # ``ok`` tells failures from successes when the JSON is read back; ``vectors`` then
        # tells an embedding result from a completion.
        data["ok"] = cls is not Failure
        return data

    def structure_hook(data: Any, _: Any) -> T:
        if isinstance(data, dict) and "ok" in data:
            data = {k: v for k, v in data.items() if k != "ok"}
        result: T = structure(data, cls)
        return result

    converter.register_unstructure_hook(cls, unstructure_hook)
    converter.register_structure_hook(cls, structure_hook)


def _structure_content(data: Any, _: Any) -> str | list[dict[str, Any]]:
    if isinstance(data, str):
        return data
    if isinstance(data, list) and all(isinstance(p, dict) for p in data):
        return data
    raise ValueError("message content must be a string or a list of content-part objects")


def _structure_input(data: Any, _: Any) -> str | tuple[str, ...]:
    if isinstance(data, str):
        return data
    if isinstance(data, list | tuple) and all(isinstance(t, str) for t in data):
        return tuple(data)
    raise ValueError("embedding input must be a string or a list of strings")


def _structure_result(data: Any, _: Any) -> Result:
    if not isinstance(data, dict) or not isinstance(data.get("ok"), bool):
        raise TypeError("a result must be a JSON object with a boolean 'ok' key")
    if not data["ok"]:
        return converter.structure(data, Failure)
    if "vectors" in data:
        return converter.structure(data, EmbeddingResult)
    return converter.structure(data, Completion)


def _structure_request(data: Any, _: Any) -> AnyRequest:
    if isinstance(data, dict) and "messages" in data:
        return converter.structure(data, ChatRequest)
    if isinstance(data, dict) and "input" in data:
        return converter.structure(data, EmbeddingRequest)
    raise ValueError("a request must be a JSON object with 'messages' or 'input'")


converter.register_structure_hook(
    str | list[dict[str, Any]],
    _structure_content,
)
converter.register_structure_hook(
    str | tuple[str, ...],
    _structure_input,
)
_result_hooks(Completion)
_result_hooks(EmbeddingResult)
_result_hooks(Failure)
converter.register_structure_hook(Result, _structure_result)
converter.register_structure_hook(AnyRequest, _structure_request)


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
