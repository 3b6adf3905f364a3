"""A tool's JSON Schema and description, read from its signature and docstring.

``schema_of(fn)`` is the JSON Schema of what ``async def tool(ctx, a: str, b: int = 3, ...)``
takes, the object a language model is offered as the function's ``parameters``;
``describe_tool(fn)`` is ``(description, schema)``, the description being the first paragraph of
the docstring (None without one).

Invariants:

- The schema is ``{"type": "object", "properties", "required", "additionalProperties": false}``
  over every parameter but the first (the run context), in signature order. A parameter with a
  default is optional and its default, when it is JSON, is given as ``default``; the others are
  ``required``. Since optional parameters exist, this is not OpenAI's ``strict`` subset.
- Annotations map as: ``str`` string, ``int`` integer, ``float`` number, ``bool`` boolean,
  ``None`` null, ``list[X]`` array of X, ``dict[str, X]`` object of X, ``Literal[...]`` and
  ``Enum`` subclasses ``enum`` of their values (with a ``type`` when all values share one),
  ``X | Y``/``Optional[X]`` ``anyOf``, ``Annotated[X, "text"]`` X with ``description`` "text";
  no annotation or ``Any`` is ``{}`` (anything). Arguments arrive as JSON values: an ``Enum``
  parameter gets the member's value.
- Anything it cannot say in JSON Schema is refused with a ``TypeError`` that names the function
  and the parameter: ``*args``, ``**kwargs``, positional-only parameters (tools are called with
  keywords), a missing context parameter, other annotations, annotations that do not resolve.
"""

from __future__ import annotations

import enum
import inspect
import json
import re
import types
import typing
from typing import Any, Callable

_JSON_TYPES: dict[type, str] = {str: "string", int: "integer", float: "number", bool: "boolean",
                                type(None): "null"}
_NO_JSON = object()


def describe_tool(fn: Callable[..., Any]) -> tuple[str | None, dict[str, Any]]:
    """``(description, schema)``: the docstring's first paragraph (None without a docstring) and
    ``schema_of(fn)``."""
    paragraphs = re.split(r"\n\s*\n", inspect.getdoc(fn) or "", maxsplit=1)
    return " ".join(paragraphs[0].split()) or None, schema_of(fn)


def schema_of(fn: Callable[..., Any]) -> dict[str, Any]:
    """The JSON Schema of the arguments of tool ``fn`` (see the module header). Raises
    ``TypeError`` for a signature it cannot describe."""
    name = getattr(fn, "__qualname__", repr(fn))
    try:
        parameters = list(inspect.signature(fn, eval_str=True).parameters.values())
    except (NameError, AttributeError, SyntaxError) as exc:
        raise TypeError(f"tool {name}: cannot resolve its annotations ({exc})") from None
    if not parameters or parameters[0].kind not in (inspect.Parameter.POSITIONAL_ONLY,
                                                    inspect.Parameter.POSITIONAL_OR_KEYWORD):
        raise TypeError(f"tool {name}: the first parameter must take the run context")
    properties: dict[str, Any] = {}
    required: list[str] = []
    for p in parameters[1:]:
        if p.kind not in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                          inspect.Parameter.KEYWORD_ONLY):
            raise TypeError(f"tool {name}: parameter {p} cannot be given by keyword from JSON "
                            f"(*args, **kwargs and positional-only parameters are refused)")
        try:
            prop = _schema(p.annotation) if p.annotation is not p.empty else {}
        except TypeError as exc:
            raise TypeError(f"tool {name}, parameter {p.name}: {exc}") from None
        if p.default is p.empty:
            required.append(p.name)
        elif (default := _json(p.default)) is not _NO_JSON:
            prop = {**prop, "default": default}
        properties[p.name] = prop
    return {"type": "object", "properties": properties, "required": required,
            "additionalProperties": False}


def _schema(annotation: Any) -> dict[str, Any]:
    """The JSON Schema of values of ``annotation``; TypeError when there is none."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any:
        return {}
    if annotation is None:
        return {"type": "null"}
    if origin is typing.Annotated:
        texts = [meta for meta in args[1:] if isinstance(meta, str)]
        return {**_schema(args[0]), **({"description": texts[0]} if texts else {})}
    if origin in (typing.Union, types.UnionType):
        return {"anyOf": [_schema(arg) for arg in args]}
    if origin is typing.Literal:
        return _enum(list(args))
    if annotation is list or origin is list:
        return {"type": "array", **({"items": _schema(args[0])} if args else {})}
    if annotation is dict or origin is dict:
        if args and args[0] is not str:
            raise TypeError(f"JSON object keys are strings, not {args[0]!r}")
        return {"type": "object", **({"additionalProperties": _schema(args[1])} if args else {})}
    if isinstance(annotation, type) and annotation in _JSON_TYPES:
        return {"type": _JSON_TYPES[annotation]}
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return _enum([member.value for member in annotation])
    raise TypeError(f"no JSON Schema for the annotation {annotation!r}")


def _enum(values: list[Any]) -> dict[str, Any]:
    values = [value.value if isinstance(value, enum.Enum) else value for value in values]
    if not all(type(value) in _JSON_TYPES for value in values):
        raise TypeError(f"enum values must be JSON scalars, not {values!r}")
    kinds = {_JSON_TYPES[type(value)] for value in values}
    return {**({"type": kinds.pop()} if len(kinds) == 1 else {}), "enum": values}


def _json(value: Any) -> Any:
    """``value`` as JSON (an Enum member: its value), or ``_NO_JSON`` when it has no JSON form."""
    try:
        return json.loads(json.dumps(value.value if isinstance(value, enum.Enum) else value,
                                     allow_nan=False))
    except (TypeError, ValueError):
        return _NO_JSON
