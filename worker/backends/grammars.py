"""llama.cpp grammars (GBNF) for tool calls and structured output, from their JSON Schemas.

Each schema goes through llama-cpp-python's JSON-Schema-to-GBNF converter (`SchemaConverter`,
what `LlamaGrammar.from_json_schema` uses); this module only adds the rules around the
arguments, so that a call is exactly `kanbanmesh.board.tool_calls.render_call`'s form:

    root      ::= calls                       (tool_choice required or named; auto: lazy)
    calls     ::= tool-call ("\\n" tool-call)*  (one call only with parallel_tool_calls false)
    tool-call ::= "<tool_call>" (call-0 | call-1 | ...) "</tool_call>"
    call-0    ::= "{\\"name\\": \\"get_weather\\", \\"arguments\\": " args-0 "}"

With `tool_choice` `auto` the grammar is lazy: free text until the model writes `<tool_call>`,
the grammar from there on (llama.cpp's `llama_sampler_init_grammar_lazy_patterns`). With a
`response_format` and `auto`, the answer is that JSON or calls (`root ::= json | calls`).
Once the grammar is complete the sampler allows only the end of generation. The converter
ignores numeric bounds; an integer's are enforced by `_Converter` (worker/backends/integer_ranges.py),
and what no grammar enforces is checked after generation (worker/backends/answer_check.py).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from llama_cpp.llama_grammar import RESERVED_NAMES, SchemaConverter

from kanbanmesh.board.tool_calls import CLOSE, OPEN
from kanbanmesh.board.tool_schema import ResponseFormat
from kanbanmesh.errors import BackendError
from worker.backends.base import GenerationRequest
from worker.backends.integer_ranges import integer_bounds, integer_range

# What makes a lazy grammar start: the whole text so far, the first `<tool_call>` in it being
# where the grammar begins (llama.cpp matches the pattern against all the text generated, and
# constrains from the start of its first group).
TRIGGER_PATTERN = r"[\s\S]*?(" + OPEN + r")[\s\S]*"
_ANY_OBJECT: dict[str, Any] = {"type": "object"}


@dataclass(frozen=True)
class Grammar:
    """A GBNF grammar with its root rule `root`; `lazy`: it applies from `TRIGGER_PATTERN` on."""

    text: str
    lazy: bool = False


def grammar_for(request: GenerationRequest) -> Grammar | None:
    """The grammar `request` is generated under, None when it is free text; raises
    `BackendError("bad_params")` for a schema the converter cannot compile."""
    json_schema = _response_schema(request.response_format)
    tools = request.offered()
    if not tools:
        if json_schema is None:
            return None
        converter = _converter()
        _visit(converter, json_schema, "json", "response_format")
        return Grammar(_format(converter, root="json"))
    converter = _converter()
    alternatives = []
    for i, tool in enumerate(tools):
        what = f"the parameters of tool {tool.function.name!r}"
        args = _visit(converter, tool.function.parameters or _ANY_OBJECT, f"args-{i}", what)
        head = json.dumps({"name": tool.function.name, "arguments": None})[: -len("null}")]
        converter._rules[f"call-{i}"] = f"{_literal(head)} {args} \"}}\""
        alternatives.append(f"call-{i}")
    converter._rules["tool-call"] = f"{_literal(OPEN)} ({' | '.join(alternatives)}) {_literal(CLOSE)}"
    converter._rules["calls"] = 'tool-call ("\\n" tool-call)*' if request.parallel_tool_calls else "tool-call"
    if request.tool_choice != "auto":  # required, or a named function
        return Grammar(_format(converter, root="calls"))
    if json_schema is not None:  # the JSON asked for, or calls
        json_rule = _visit(converter, json_schema, "json", "response_format")
        return Grammar(_format(converter, root=f"{json_rule} | calls"))
    return Grammar(_format(converter, root="calls"), lazy=True)


def _response_schema(response_format: ResponseFormat | None) -> dict[str, Any] | None:
    if response_format is None or response_format.type == "text":
        return None
    spec = response_format.json_schema
    if spec is not None and spec.json_schema is not None:
        return spec.json_schema
    return _ANY_OBJECT


class _Converter(SchemaConverter):
    """The converter, with integer bounds: its own `integer` is any integer (`minimum` and
    `maximum` ignored), so an integer with bounds gets a rule of exactly its range
    (worker/backends/integer_ranges.py). Fractional bounds of a `number` are not enforced here:
    the check after generation (worker/backends/answer_check.py) fails an answer that breaks them.
    Lengths of strings and arrays beyond `MAX_GRAMMAR_REPEAT` are left to that check too: the
    converter nests one group per optional repetition, and llama.cpp's recursive parser refuses
    a grammar nested some thousand levels deep, or overflows its stack on deeper ones."""

    def visit(self, schema: dict[str, Any], name: str) -> str:
        schema = _long_lengths_dropped(schema)
        if schema.get("type") == "integer" and not _BEFORE_TYPE.intersection(schema):
            low, high = integer_bounds(schema)
            if low is not None or high is not None:
                try:
                    rule = integer_range(low, high)
                except ValueError as exc:
                    raise BackendError("bad_params", f"an integer schema no integer satisfies: {exc}") from exc
                # The rule's name as the converter names its own (a reserved name gets a "-").
                rule_name = name + "-" if name in RESERVED_NAMES else name or "root"
                return str(self._add_rule(rule_name, f"{rule} space"))  # type: ignore[no-untyped-call]
        return str(super().visit(schema, name))  # type: ignore[no-untyped-call]


# What the converter looks at before an integer's type (and then ignores the type for).
_BEFORE_TYPE = frozenset({"$ref", "oneOf", "anyOf", "const", "enum"})
MAX_GRAMMAR_REPEAT = 256
# Deeper grammars are refused before llama.cpp parses them (a pattern's `{0,20000}`, ...).
MAX_GRAMMAR_NESTING = 512


def _long_lengths_dropped(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` without the length bounds the grammar leaves to the check (a copy if any)."""
    dropped = dict(schema)
    for low_key, high_key in (("minLength", "maxLength"), ("minItems", "maxItems")):
        low, high = schema.get(low_key, 0), schema.get(high_key)
        if not isinstance(low, int) or isinstance(low, bool) or low > MAX_GRAMMAR_REPEAT:
            dropped.pop(low_key, None)
            low = 0
        if high is not None and (not isinstance(high, int) or isinstance(high, bool) or high - low > MAX_GRAMMAR_REPEAT):
            dropped.pop(high_key, None)
    pattern = schema.get("pattern")
    counts = _COUNTS.findall(pattern) if isinstance(pattern, str) else []
    if any(len(n) > 6 or int(n) > MAX_GRAMMAR_REPEAT for quantifier in counts for n in re.findall(r"\d+", quantifier)):
        dropped.pop("pattern")  # the converter would unroll `{0,1000000}` into the grammar
    return dropped if len(dropped) != len(schema) else schema


_COUNTS = re.compile(r"\{([\d\s,]*)\}")  # a regex quantifier's inside


def _converter() -> SchemaConverter:
    return _Converter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)  # type: ignore[no-untyped-call]


def _visit(converter: SchemaConverter, schema: dict[str, Any], name: str, what: str) -> str:
    """Add the rules of `schema` under `name`; the name of its rule."""
    for ref in _refs(schema):
        if not ref.startswith("#/"):  # never fetched: a worker reaches no URL a task names
            raise BackendError("bad_params", f"{what}: only local $ref (#/...) is supported, not {ref[:80]!r}")
    copy = json.loads(json.dumps(schema))  # the converter rewrites `$ref`s in place
    try:
        resolved = converter.resolve_refs(copy, name)
        return str(converter.visit(resolved, name))  # type: ignore[no-untyped-call]
    except BackendError:
        raise
    except Exception as exc:  # the converter raises what it meets: ValueError, KeyError, ...
        raise BackendError(
            "bad_params", f"{what}: the JSON Schema cannot be compiled to a grammar: {type(exc).__name__}: {exc}"[:500]
        ) from exc


def _refs(schema: Any) -> Iterator[str]:
    stack = [schema]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            ref = item.get("$ref")
            if ref is not None:
                yield ref if isinstance(ref, str) else repr(ref)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


# The converter's `char` takes any character but `"` and `\`: a raw newline or control
# character in a string is not JSON (`json.loads` refuses it). llama.cpp's own converter's rule.
_JSON_CHAR = r'[^"\\\x7F\x00-\x1F] | [\\] (["\\/bfnrt] | "u" [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F])'


def _format(converter: SchemaConverter, *, root: str) -> str:
    converter._rules["root"] = root
    if "char" in converter._rules:
        converter._rules["char"] = _JSON_CHAR
    text = str(converter.format_grammar())  # type: ignore[no-untyped-call]
    depth = _nesting(text)
    if depth > MAX_GRAMMAR_NESTING:
        raise BackendError("bad_params", f"the JSON Schemas make a grammar nested {depth} groups deep, over "
                           f"{MAX_GRAMMAR_NESTING} (a pattern's repetition counts?)")
    return text


def _nesting(text: str) -> int:
    """The deepest nesting of parentheses in GBNF `text`, outside literals and classes."""
    deepest = depth = 0
    closing, at = "", 0
    while at < len(text):
        char = text[at]
        if closing:  # inside "..." or [...]
            if char == "\\":
                at += 1
            elif char == closing:
                closing = ""
        elif char in "\"[":
            closing = "\"" if char == "\"" else "]"
        elif char == "(":
            depth += 1
            deepest = max(deepest, depth)
        elif char == ")":
            depth -= 1
        elif char == "\n":
            depth = 0
        at += 1
    return deepest


def _literal(text: str) -> str:
    """`text` as a GBNF string literal."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return f'"{escaped}"'
