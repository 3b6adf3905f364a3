"""threadline.agents.tool_schema: a tool's JSON Schema and description from its signature."""

import enum
import json
import typing
from typing import Annotated, Any, Literal, Optional

import pytest

from threadline.agents.tool_schema import describe_tool, schema_of


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


async def example(ctx, a: str, b: int = 3, c: list[str] | None = None, *, d: bool):
    """Add ``a`` to the board,
    then wait.

    Only the first paragraph describes the tool.
    """


def test_the_schema_of_a_signature():
    assert schema_of(example) == {
        "type": "object",
        "properties": {
            "a": {"type": "string"},
            "b": {"type": "integer", "default": 3},
            "c": {"anyOf": [{"type": "array", "items": {"type": "string"}}, {"type": "null"}],
                  "default": None},
            "d": {"type": "boolean"},
        },
        "required": ["a", "d"],
        "additionalProperties": False,
    }


def test_the_description_is_the_first_paragraph_of_the_docstring():
    async def bare(ctx):
        pass

    assert describe_tool(example) == ("Add ``a`` to the board, then wait.", schema_of(example))
    assert describe_tool(bare) == (None, {"type": "object", "properties": {}, "required": [],
                                          "additionalProperties": False})


@pytest.mark.parametrize("annotation, schema", [
    (str, {"type": "string"}),
    (int, {"type": "integer"}),
    (float, {"type": "number"}),
    (bool, {"type": "boolean"}),
    (None, {"type": "null"}),
    (Any, {}),
    (list, {"type": "array"}),
    (list[int], {"type": "array", "items": {"type": "integer"}}),
    (typing.List[list[str]], {"type": "array", "items": {"type": "array",
                                                          "items": {"type": "string"}}}),
    (dict, {"type": "object"}),
    (dict[str, float], {"type": "object", "additionalProperties": {"type": "number"}}),
    (typing.Dict[str, Any], {"type": "object", "additionalProperties": {}}),
    (Literal["a", "b"], {"type": "string", "enum": ["a", "b"]}),
    (Literal[1, "x"], {"enum": [1, "x"]}),
    (Literal[Color.RED], {"type": "string", "enum": ["red"]}),
    (Color, {"type": "string", "enum": ["red", "green"]}),
    (Level, {"type": "integer", "enum": [1, 2]}),
    (Optional[int], {"anyOf": [{"type": "integer"}, {"type": "null"}]}),
    (int | None, {"anyOf": [{"type": "integer"}, {"type": "null"}]}),
    (int | str, {"anyOf": [{"type": "integer"}, {"type": "string"}]}),
    (Annotated[str, "the name"], {"type": "string", "description": "the name"}),
    (Annotated[list[int] | None, "ids", 3], {"anyOf": [
        {"type": "array", "items": {"type": "integer"}}, {"type": "null"}], "description": "ids"}),
    (list[Annotated[int, "an id"]], {"type": "array", "items": {"type": "integer",
                                                                "description": "an id"}}),
])
def test_annotations_map_to_json_schema(annotation, schema):
    async def tool(ctx, x):
        pass

    tool.__annotations__ = {"x": annotation}
    assert schema_of(tool)["properties"]["x"] == schema
    assert json.loads(json.dumps(schema_of(tool))) == schema_of(tool)


def test_a_parameter_without_annotation_takes_anything():
    async def tool(ctx, x, y=None):
        pass

    assert schema_of(tool)["properties"] == {"x": {}, "y": {"default": None}}


def test_defaults_make_parameters_optional_and_are_given_when_they_are_json():
    async def tool(ctx, a: Color = Color.GREEN, b: list[int] = [1], c: Any = object(),
                   d: float = float("nan")):
        pass

    schema = schema_of(tool)
    assert schema["required"] == []
    assert schema["properties"]["a"]["default"] == "green"
    assert schema["properties"]["b"]["default"] == [1]
    assert "default" not in schema["properties"]["c"] and "default" not in schema["properties"]["d"]


def test_string_annotations_are_resolved_in_the_tool_module():
    async def tool(ctx, a: "list[Color]", b: "Annotated[int, 'n']" = 1):
        pass

    assert schema_of(tool)["properties"] == {
        "a": {"type": "array", "items": {"type": "string", "enum": ["red", "green"]}},
        "b": {"type": "integer", "description": "n", "default": 1}}


async def star_args(ctx, *items: str):
    pass


async def star_kwargs(ctx, a: int, **extra: str):
    pass


async def positional_only(ctx, a: int, /):
    pass


async def no_context():
    pass


async def keyword_context(*, ctx):
    pass


async def unknown_annotation(ctx, a: bytes):
    pass


async def unknown_nested(ctx, a: list[set[int]]):
    pass


async def integer_keys(ctx, a: dict[int, str]):
    pass


async def object_enum(ctx, a: Literal[b"raw"]):
    pass


async def unresolved(ctx, a: "Missing"):  # noqa: F821
    pass


@pytest.mark.parametrize("tool, words", [
    (star_args, "*items"),
    (star_kwargs, "**extra"),
    (positional_only, "positional-only"),
    (no_context, "run context"),
    (keyword_context, "run context"),
    (unknown_annotation, "parameter a: no JSON Schema for the annotation <class 'bytes'>"),
    (unknown_nested, "parameter a: no JSON Schema for the annotation set[int]"),
    (integer_keys, "parameter a: JSON object keys are strings"),
    (object_enum, "parameter a: enum values must be JSON scalars"),
    (unresolved, "'Missing' is not defined"),
])
def test_signatures_without_a_json_form_are_refused(tool, words):
    with pytest.raises(TypeError) as caught:
        schema_of(tool)
    assert tool.__name__ in str(caught.value) and words in str(caught.value)
