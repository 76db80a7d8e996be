"""Published tool schemas carry no `$ref`, and say the same as pydantic's."""

from __future__ import annotations

import json
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from mcp import Client
from pydantic import BaseModel, Field, JsonValue

from session_mcp.server.flatschema import flattened


class Inner(BaseModel):
    name: str
    extra: dict[str, JsonValue] = {}


class Outer(BaseModel):
    first: Inner
    rest: list[Inner]
    described: Inner = Field(description="annotated beside its reference")


class Node(BaseModel):
    label: str
    children: list[Node] = []


def test_nested_references_are_written_out_and_defs_dropped() -> None:
    schema = Outer.model_json_schema()
    assert "$ref" in json.dumps(schema)
    flat = flattened(schema)
    assert "$ref" not in json.dumps(flat) and "$defs" not in flat
    assert flat["properties"]["rest"]["items"]["required"] == ["name"]
    assert flat["properties"]["described"]["description"] == "annotated beside its reference"


@pytest.mark.parametrize(
    ("instance", "valid"),
    [
        ({"first": {"name": "a"}, "rest": [], "described": {"name": "b", "extra": {"k": [1, None]}}}, True),
        ({"first": {"name": "a"}, "rest": [{"name": 3}], "described": {"name": "b"}}, False),
        ({"first": {}, "rest": [], "described": {"name": "b"}}, False),
        ({"first": {"name": "a"}, "rest": [], "described": {"name": "b", "extra": []}}, False),
    ],
)
def test_flat_schema_accepts_and_refuses_what_the_original_does(
    instance: dict[str, Any], valid: bool
) -> None:
    schema = Outer.model_json_schema()
    assert Draft202012Validator(schema).is_valid(instance) is valid
    assert Draft202012Validator(flattened(schema)).is_valid(instance) is valid


def test_keywords_beside_a_reference_that_would_clash_keep_both_through_all_of() -> None:
    schema = {
        "$defs": {"Short": {"type": "string", "maxLength": 3}},
        "properties": {"code": {"$ref": "#/$defs/Short", "maxLength": 2, "title": "Code"}},
    }
    code = flattened(schema)["properties"]["code"]
    assert code == {"allOf": [{"type": "string", "maxLength": 3}], "maxLength": 2, "title": "Code"}
    assert not Draft202012Validator(flattened(schema)).is_valid({"code": "abc"})


def test_a_self_referring_schema_is_published_as_it_is() -> None:
    schema = Node.model_json_schema()
    assert flattened(schema) is schema
    dangling = {"$defs": {}, "properties": {"x": {"$ref": "#/$defs/Missing"}}}
    assert flattened(dangling) is dangling
    assert flattened({"type": "string"}) == {"type": "string"}


async def test_tools_list_publishes_no_references(client: Client) -> None:
    for tool in (await client.list_tools()).tools:
        published = json.dumps([tool.input_schema, tool.output_schema])
        assert "$ref" not in published and "$defs" not in published, tool.name
