"""A request's turns as a chat template takes them, tools and tool turns included.

A template that reads `tools` (a Jinja template written for tool calling) gets the turns and
tools as OpenAI sends them. Any other template gets the generic form (docs/protocol.md
section 12): a system turn first that lists the tools and the exact call format (the first
user turn, for a format that drops system turns), each
assistant turn's calls after its text in `render_call`'s form, and each `tool` turn as a user
turn holding `<tool_response>...</tool_response>` (many templates know no `tool` role). In
both, `developer` turns are `system` turns.
"""

from __future__ import annotations

import json
from typing import Any

from kanbanmesh.board.schema import ChatMessage
from kanbanmesh.board.tool_calls import CLOSE, OPEN, render_call
from kanbanmesh.board.tool_schema import ToolSpec
from worker.backends.base import GenerationRequest

TOOLS_INSTRUCTION = (
    "You can call these functions. To call one, answer with\n"
    f'{OPEN}{{"name": NAME, "arguments": ARGUMENTS}}{CLOSE}\n'
    "where ARGUMENTS is a JSON object valid against the function's parameters.\n"
    "Functions:"
)
RESPONSE_OPEN = "<tool_response>"
RESPONSE_CLOSE = "</tool_response>"


def template_messages(request: GenerationRequest) -> list[dict[str, Any]]:
    """The turns in OpenAI's shape (for a template that reads `tools`), `developer` as `system`."""
    turns = request.messages if request.messages is not None else [ChatMessage(role="user", content=request.prompt or "")]
    out = []
    for message in turns:
        turn = message.model_dump(exclude_none=True)
        if message.role == "developer":
            turn["role"] = "system"
        out.append(turn)
    return out


def template_tools(request: GenerationRequest) -> list[dict[str, Any]] | None:
    """The tools as a template reads them, None when none is offered."""
    # All of them with a named choice (the grammar holds the model to the one named).
    return [tool.model_dump(exclude_none=True) for tool in request.tools] if request.offered() else None


def generic_messages(request: GenerationRequest, *, in_system: bool = True) -> list[dict[str, Any]]:
    """The turns in the generic form: `{role, content}` only, the tools listed in a first
    system turn (`in_system`), else at the start of the first user turn (for a format that
    drops system turns, as llama-cpp-python's `gemma` does)."""
    turns = request.messages if request.messages is not None else [ChatMessage(role="user", content=request.prompt or "")]
    out: list[dict[str, Any]] = [_generic_turn(message) for message in turns]
    if request.offered():
        listing = tools_listing(list(request.offered()))
        role = "system" if in_system else "user"
        at = next((i for i, turn in enumerate(out) if turn["role"] == role), None)
        if at is None or (in_system and at != 0):
            out.insert(0, {"role": role, "content": listing})
        else:
            out[at] = {"role": role, "content": f"{listing}\n\n{out[at]['content']}"}
    return out


def tools_listing(tools: list[ToolSpec]) -> str:
    """The system text that offers `tools` (the instruction, then one JSON line per tool)."""
    lines = [TOOLS_INSTRUCTION]
    for tool in tools:
        lines.append(json.dumps(tool.function.model_dump(exclude_none=True), ensure_ascii=False))
    return "\n".join(lines)


def _generic_turn(message: ChatMessage) -> dict[str, Any]:
    if message.role == "developer":
        return {"role": "system", "content": message.content}
    if message.role == "tool":
        response = {"name": message.name, "content": message.content} if message.name else {"content": message.content}
        body = json.dumps(response, ensure_ascii=False)
        return {"role": "user", "content": f"{RESPONSE_OPEN}{body}{RESPONSE_CLOSE}"}
    if message.role == "assistant" and message.tool_calls:
        calls = "\n".join(render_call(c.function.name, _arguments(c.function.arguments)) for c in message.tool_calls)
        return {"role": "assistant", "content": f"{message.content}\n{calls}" if message.content else calls}
    return {"role": message.role, "content": message.content}


def _arguments(text: str) -> str:
    """A call's arguments as compact JSON (as a client sent them when they are not JSON)."""
    try:
        return json.dumps(json.loads(text), ensure_ascii=False)
    except (ValueError, RecursionError):
        return text
