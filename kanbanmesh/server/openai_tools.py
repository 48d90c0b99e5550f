"""What a chat request may say about tools and the answer's form, checked before it is a task.

`tools`, `tool_choice`, `response_format`, and the `tool_calls` of an assistant turn, in
OpenAI's shapes (docs/protocol.md section 8). A JSON Schema a client sends (a tool's
`parameters`, `response_format.json_schema.schema`) is a value the workers turn into a grammar:
it is bounded in size and depth as the board's gate bounds it (`kanbanmesh.board.tool_schema`),
checked here to name the parameter at fault, and must be a valid schema (`jsonschema`'s
meta-schema check), so that a worker never meets one it cannot read.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from jsonschema import exceptions as schema_errors
from jsonschema import validators
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from kanbanmesh.board.tool_schema import (
    MAX_DESCRIPTION_CHARS,
    MAX_SCHEMA_BYTES,
    MAX_SCHEMA_DEPTH,
    MAX_TOOL_CALLS,
    MAX_TOOLS,
    NAME_PATTERN,
)

__all__ = ["MAX_TOOLS", "MAX_TOOL_CALLS"]  # re-exported for the request's model

MAX_CALL_ID_CHARS = 256


def _depth(value: object) -> int:
    """`{"a": [1]}` is 2, a scalar 0 (as the board's limits count); iterative, so a deep value
    costs no recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            stack.extend((v, level + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, level + 1) for v in item)
        else:
            continue
        deepest = max(deepest, level + 1)
    return deepest


def _json_schema(value: dict[str, Any]) -> dict[str, Any]:
    if _depth(value) > MAX_SCHEMA_DEPTH:
        raise ValueError(f"a JSON Schema nested over {MAX_SCHEMA_DEPTH} levels")
    size = len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode())
    if size > MAX_SCHEMA_BYTES:
        raise ValueError(f"a JSON Schema of {size} bytes, over {MAX_SCHEMA_BYTES}")
    try:
        # The draft the schema names (`$schema`), else the newest.
        checker = validators.validator_for(value, default=validators.Draft202012Validator)
        checker.check_schema(value)
    except schema_errors.SchemaError as exc:
        raise ValueError(f"not a valid JSON Schema: {exc.message[:200]}") from None
    except Exception:  # noqa: BLE001  (fail closed: a hostile `$schema` breaks the lookup itself)
        raise ValueError("not a valid JSON Schema") from None
    return value


JsonSchema = Annotated[dict[str, Any], AfterValidator(_json_schema)]
def _arguments_schema(value: dict[str, Any]) -> dict[str, Any]:
    if value.get("type", "object") != "object":
        raise ValueError("a function's parameters must be a JSON Schema of type object")
    return value


ArgumentsSchema = Annotated[dict[str, Any], AfterValidator(_arguments_schema), AfterValidator(_json_schema)]
ToolName = Annotated[str, Field(pattern=NAME_PATTERN)]
Description = Annotated[str, Field(max_length=MAX_DESCRIPTION_CHARS)]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)


class FunctionSpec(_Strict):
    name: ToolName
    description: Description | None = None
    parameters: ArgumentsSchema | None = None
    strict: bool | None = None


class Tool(_Strict):
    type: Literal["function"]
    function: FunctionSpec


class NamedFunction(_Strict):
    name: ToolName


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: NamedFunction


ToolChoice = Literal["auto", "none", "required"] | NamedToolChoice


class CalledFunction(_Strict):
    name: ToolName
    arguments: str  # JSON text, as the model wrote it


class ToolCall(_Strict):
    """A call in an assistant turn the client sends back (the model's earlier answer)."""

    id: str = Field(min_length=1, max_length=MAX_CALL_ID_CHARS)
    type: Literal["function"]
    function: CalledFunction


class TextFormat(_Strict):
    type: Literal["text"]


class JsonObjectFormat(_Strict):
    type: Literal["json_object"]


class SchemaSpec(_Strict):
    name: ToolName
    description: Description | None = None
    # `schema` would shadow BaseModel's method: the wire name is an alias.
    json_schema: JsonSchema | None = Field(default=None, alias="schema")
    strict: bool | None = None


class JsonSchemaFormat(_Strict):
    type: Literal["json_schema"]
    json_schema: SchemaSpec


ResponseFormat = Annotated[TextFormat | JsonObjectFormat | JsonSchemaFormat, Field(discriminator="type")]


def response_format_field(value: ResponseFormat | None) -> dict[str, Any] | None:
    """The task's `response_format`: None for plain text (the default, nothing to write)."""
    if value is None or isinstance(value, TextFormat):
        return None
    return value.model_dump(by_alias=True, exclude_none=True)
