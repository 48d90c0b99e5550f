"""The last check of a tool-calling or structured answer: against its JSON Schemas, after generation.

A grammar (worker/backends/grammars.py) makes the llama backend write calls and JSON of the
right shape, but llama.cpp's converter does not enforce every keyword (fractional number
bounds, `multipleOf`, `uniqueItems`, `minProperties`, a string's `format` beyond dates and
times, ...), and an OpenAI-compatible upstream may enforce nothing at all. So before a backend
reports an answer finished, `AnswerCheck` validates it with `jsonschema`: each call must name
an offered tool and its arguments be valid against that tool's `parameters`; an answer to a
`json_schema` (`json_object`) response format must be JSON valid against the schema (an
object). Anything else fails the task, closed: `invalid_tool_call` or
`invalid_structured_output`, naming the keyword and the path that failed (docs/protocol.md
section 14). Each schema is compiled once, when the task starts; a schema that is no valid
JSON Schema fails the task then (`bad_params`), before anything is generated.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import referencing
from jsonschema import ValidationError
from jsonschema.exceptions import SchemaError, best_match
from jsonschema.protocols import Validator
from jsonschema.validators import Draft202012Validator, validator_for

from kanbanmesh.board.tool_calls import MalformedToolCall, ParsedCall, split_output
from kanbanmesh.errors import BackendError
from worker.backends.base import GenerationRequest

_ANY_OBJECT: dict[str, Any] = {"type": "object"}
_MAX_MESSAGE = 400


@dataclass(frozen=True)
class AnswerCheck:
    """The compiled schemas of one task's answer; `check` raises what an answer breaks."""

    tools: dict[str, Validator]  # the offered functions' arguments, by name
    structured: Validator | None  # a `json_schema` or `json_object` answer's

    @classmethod
    def of(cls, request: GenerationRequest) -> AnswerCheck | None:
        """The check of `request`'s answer, None when it is free text; raises
        `BackendError("bad_params")` for a schema that is no valid JSON Schema."""
        tools = {
            tool.function.name: _compile(tool.function.parameters or _ANY_OBJECT,
                                         f"the parameters of tool {tool.function.name!r}")
            for tool in request.offered()
        }
        structured = None
        response_format = request.response_format
        if response_format is not None and response_format.type != "text":
            spec = response_format.json_schema
            schema = spec.json_schema if spec is not None and spec.json_schema is not None else _ANY_OBJECT
            structured = _compile(schema, "response_format")
        if not tools and structured is None:
            return None
        return cls(tools, structured)

    def check(self, text: str, finish_reason: str) -> None:
        """Raise `BackendError` (`invalid_tool_call`, `invalid_structured_output`) unless every
        call in `text` and its structured answer are valid. An answer cut short (`length`) that
        is not whole JSON is left as it is: its `finish_reason` says so."""
        calls: list[ParsedCall] = []
        if self.tools:
            try:
                _, calls = split_output(text)
            except MalformedToolCall:  # cut inside a call: text, as the worker reads it
                calls = []
        for index, call in enumerate(calls):
            validator = self.tools.get(call.name)
            if validator is None:
                raise BackendError("invalid_tool_call", _cut(
                    f"call {index} names {call.name!r}, not one of the offered tools {sorted(self.tools)}"))
            problem = _problem(validator, call.arguments)
            if problem is not None:
                raise BackendError("invalid_tool_call", _cut(
                    f"call {index} of {call.name!r}: its arguments are not valid against the tool's parameters: "
                    f"{problem}"))
        if calls or self.structured is None:
            return
        if finish_reason != "stop":  # `length`, or the engine cancelled it
            try:
                json.loads(text)
            except ValueError:
                return
        problem = _problem(self.structured, text)
        if problem is not None:
            raise BackendError("invalid_structured_output", _cut(
                f"the answer is not valid against the response format's schema: {problem}"))


def _compile(schema: dict[str, Any], what: str) -> Validator:
    cls = validator_for(schema, default=Draft202012Validator)
    try:
        cls.check_schema(schema)
    except SchemaError as exc:
        raise BackendError("bad_params", _cut(
            f"{what} is not a valid JSON Schema: {exc.message} (at {exc.json_path})")) from exc
    # An empty registry: a `$ref` is resolved within the schema only; nothing is ever fetched.
    return cls(schema, registry=referencing.Registry(), format_checker=cls.FORMAT_CHECKER)


def _problem(validator: Validator, text: str) -> str | None:
    """Why the JSON `text` is not valid against `validator`'s schema; None when it is."""
    try:
        instance = json.loads(text)
    except ValueError as exc:
        return f"not JSON ({exc})"
    try:
        error: ValidationError | None = best_match(validator.iter_errors(instance))
    except Exception as exc:  # noqa: BLE001 - an unresolvable `$ref`, a pattern `re` refuses...: fail closed
        return f"it could not be checked ({type(exc).__name__}: {exc})"
    if error is None:
        return None
    return f"{error.validator} at {error.json_path}: {error.message}"


def _cut(message: str) -> str:
    return message if len(message) <= _MAX_MESSAGE else message[: _MAX_MESSAGE - 3] + "..."
