"""Pydantic models of the tool-calling and structured-output fields of a task entry.

They follow OpenAI's chat API (`tools`, `tool_choice`, `response_format`, an assistant turn's
`tool_calls`, the `logprobs` object), so that the OpenAI endpoint and a stock client write the
board the way they write OpenAI. The bounds below hold what a worker turns into a grammar
(`worker/backends/grammars.py`): a JSON Schema is compiled rule by rule, so its size and its
nesting are bounded here, before any worker sees it (docs/protocol.md section 14).
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# Bounds on the tool fields of one task (besides the entry's own, kanbanmesh/board/limits.py).
MAX_TOOLS = 64  # OpenAI's own limit on `tools`
MAX_SCHEMA_BYTES = 32 << 10  # one JSON Schema (a tool's `parameters`, a `json_schema.schema`)
MAX_SCHEMA_DEPTH = 16  # nesting of one JSON Schema (`{"a": [1]}` is 2 deep)
MAX_DESCRIPTION_CHARS = 8192
MAX_TOOL_CALLS = 64  # calls of one assistant turn
NAME_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"  # a function's or a response format's name (OpenAI's)
MAX_TOP_LOGPROBS = 20

_NAME = Annotated[str, Field(pattern=NAME_PATTERN)]


def _bounded_schema(value: dict[str, Any] | None, what: str) -> dict[str, Any] | None:
    """`value` unless it breaks the schema bounds (raises `ValueError` with why)."""
    if value is None:
        return None
    size = len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))
    if size > MAX_SCHEMA_BYTES:
        raise ValueError(f"{what} is {size} bytes of JSON, over the limit of {MAX_SCHEMA_BYTES}")
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:  # iterative: the entry's own bounds already cap the depth, not Python's stack
        item, depth = stack.pop()
        if depth > MAX_SCHEMA_DEPTH:
            raise ValueError(f"{what} is nested deeper than {MAX_SCHEMA_DEPTH} levels")
        members = item.values() if isinstance(item, dict) else item
        stack.extend((m, depth + 1) for m in members if isinstance(m, dict | list))
    return value


class FunctionSpec(BaseModel):
    """A function the model may call; `parameters` is a JSON Schema of its arguments object."""

    model_config = ConfigDict(extra="ignore")

    name: _NAME
    description: str | None = Field(default=None, max_length=MAX_DESCRIPTION_CHARS)
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    @field_validator("parameters")
    @classmethod
    def _parameters(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        found = value.get("type", "object") if value is not None else "object"
        if found != "object":
            raise ValueError("a function's parameters must be a JSON Schema of type object")
        return _bounded_schema(value, "parameters")


class ToolSpec(BaseModel):
    """One entry of `tools` (OpenAI's: only functions)."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["function"] = "function"
    function: FunctionSpec


class FunctionName(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: _NAME


class NamedToolChoice(BaseModel):
    """`tool_choice` naming one function: the answer is calls of it only."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["function"] = "function"
    function: FunctionName


ToolChoice = Literal["auto", "none", "required"] | NamedToolChoice


class FunctionCall(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str = Field(max_length=256)
    arguments: str  # the JSON text of the arguments object, as OpenAI sends it


class ToolCall(BaseModel):
    """A call in an assistant turn, or in a finished entry's `tool_calls`."""

    model_config = ConfigDict(extra="ignore")

    id: str = Field(max_length=256)
    type: Literal["function"] = "function"
    function: FunctionCall


class JsonSchemaSpec(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    name: _NAME
    description: str | None = Field(default=None, max_length=MAX_DESCRIPTION_CHARS)
    # `schema` is a method of pydantic models: the field has another name in Python.
    json_schema: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None

    @field_validator("json_schema")
    @classmethod
    def _schema(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        return _bounded_schema(value, "json_schema.schema")


class ResponseFormat(BaseModel):
    """`text` (the default), `json_object` (the answer is one JSON object) or `json_schema`
    (the answer is JSON valid against `json_schema.schema`; any JSON object without one)."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaSpec | None = None

    @model_validator(mode="after")
    def _spec(self) -> ResponseFormat:
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError("`json_schema` goes with type json_schema, and only with it")
        return self


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class Logprobs(BaseModel):
    """OpenAI's chat `logprobs` object: one item per generated token."""

    content: list[TokenLogprob] = Field(default_factory=list)
