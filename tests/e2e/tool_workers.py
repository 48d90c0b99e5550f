"""A scripted backend for the OpenAI endpoint's tool-calling protocol tests.

No model: it answers with calls in the board's text form (`render_call`) as the llama backend's
grammar makes a model write them, so that the endpoint's streaming and answers can be checked
piece by piece against a known text. It stands in for a model only in protocol tests; the
model's own calls are tested with the bundled model (tests/e2e/test_openai_tools_llama.py).

The last user turn says what to answer:

- a JSON object: a call of the offered tool (the named one, else the first) with it as the
  arguments, twice when it holds `"twice": true` (the second with the same arguments);
- `garbage`: a call that breaks the text form halfway (an upstream writing nonsense);
- anything else: the echo backend's answer; with a `json_schema` response format whose schema
  has string properties, the object that gives each its own name (`{"name": "name"}`).

Text comes in pieces of `piece` characters; with `params.logprobs` the end carries one made-up
log probability per piece, as a backend reports them.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator

import anyio

from kanbanmesh.board.schema import Usage
from kanbanmesh.board.tool_calls import render_call
from kanbanmesh.board.tool_schema import Logprobs, TokenLogprob, TopLogprob
from worker.backends.base import Finished, GenerationEvent, GenerationRequest, TextChunk
from worker.backends.echo import echo_text


def scripted_text(request: GenerationRequest) -> str:
    users = [m.content for m in request.messages or [] if m.role == "user"]
    last = users[-1] if users else request.prompt or ""
    if last == "garbage":
        return 'before <tool_call>{"name": "f", "arguments": [1, 2'
    try:
        arguments = json.loads(last)
    except ValueError:
        arguments = None
    offered = request.offered()
    if not isinstance(arguments, dict) or not offered:
        spec = request.response_format.json_schema if request.response_format else None
        if spec is not None and spec.json_schema is not None:
            properties = spec.json_schema.get("properties", {})
            return json.dumps({k: k for k, v in properties.items() if v.get("type") == "string"})
        return echo_text(request)
    name = offered[0].function.name  # the named one, else the first
    twice = arguments.pop("twice", False) is True
    call = render_call(name, json.dumps(arguments))
    return call + call if twice else call


class ScriptedToolBackend:
    def __init__(self, *, piece: int = 7, delay_ms: float = 1.0) -> None:
        self._piece, self._delay_s = piece, delay_ms / 1000

    @property
    def engine(self) -> str:
        return "scripted"

    @property
    def models(self) -> list[str]:
        return ["scripted"]

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationEvent, None]:
        text = scripted_text(request)
        pieces = [text[i: i + self._piece] for i in range(0, len(text), self._piece)]
        for piece in pieces:
            yield TextChunk(piece)
            await anyio.sleep(self._delay_s)
        logprobs = None
        if request.params.logprobs:
            top = request.params.top_logprobs or 0
            logprobs = Logprobs(content=[
                TokenLogprob(token=p, logprob=-0.5, bytes=list(p.encode()),
                             top_logprobs=[TopLogprob(token=p, logprob=-0.5 - k) for k in range(top)])
                for p in pieces
            ])
        yield Finished(Usage(prompt_tokens=3, completion_tokens=len(pieces), total_tokens=3 + len(pieces)),
                       logprobs=logprobs)
