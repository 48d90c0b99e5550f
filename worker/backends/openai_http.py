"""The OpenAI-compatible HTTP backend: streams from any `/v1/chat/completions` server.

OpenAI, llama.cpp's `llama-server`, vLLM, Ollama and others speak it. Every task goes to the
chat endpoint; a bare `prompt` is sent as one user turn, as the board protocol defines it (the
legacy `/v1/completions` endpoint is gone from OpenAI and would apply no chat template).
Parameters the client set are forwarded as they are, and nothing else, so the server's own
defaults apply. Closing the generation closes the HTTP stream, which is how such servers
learn to stop generating.

Tool calling, structured output and logprobs (docs/protocol.md section 14) pass through:
`tools`, `tool_choice`, `parallel_tool_calls`, `response_format`, `logprobs` and `top_logprobs`
go to the server as they are; the calls it streams (`delta.tool_calls`: an index, then an id
and a name, then pieces of the arguments' JSON) are written into the text in
`kanbanmesh.board.tool_calls.render_call`'s form as they arrive, and its `logprobs` end up in
`Finished`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, ValidationError

from kanbanmesh.board.schema import ChatMessage, Usage
from kanbanmesh.board.tool_calls import CLOSE, OPEN
from kanbanmesh.board.tool_schema import Logprobs, TokenLogprob
from kanbanmesh.errors import BackendError
from worker.backends.answer_check import AnswerCheck
from worker.backends.base import Finished, GenerationEvent, GenerationRequest, TextChunk
from worker.backends.sampling import sampling_from
from worker.backends.sse import aiter_events

log = logging.getLogger(__name__)

ENGINE = "openai"
_CONTEXT_HINTS = ("context_length", "context length", "context window", "context size", "too many tokens")


@dataclass(frozen=True)
class OpenAIConfig:
    """Where the server is and which model to ask it for (`--base-url`, `--model`)."""

    base_url: str  # up to and including the version: https://api.openai.com/v1
    model: str
    api_key: str | None = None
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 300.0  # the longest silence between two streamed chunks


class _FunctionDelta(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str | None = None
    arguments: str | None = None


class _ToolCallDelta(BaseModel):
    model_config = ConfigDict(extra="ignore")
    index: int = 0
    function: _FunctionDelta = _FunctionDelta()


class _Delta(BaseModel):
    model_config = ConfigDict(extra="ignore")
    content: str | None = None
    tool_calls: list[_ToolCallDelta] | None = None


class _ChoiceLogprobs(BaseModel):
    model_config = ConfigDict(extra="ignore")
    content: list[TokenLogprob] | None = None


class _Choice(BaseModel):
    model_config = ConfigDict(extra="ignore")
    delta: _Delta = _Delta()
    finish_reason: str | None = None
    logprobs: _ChoiceLogprobs | None = None


class _CallWriter:
    """Writes streamed `delta.tool_calls` as `render_call` text, piece by piece: the head once
    the call's name is known, its arguments as they come, the tail when the next call begins
    or the stream ends."""

    def __init__(self, base: str) -> None:
        self._base = base
        self._index: int | None = None  # the call being written
        self._arguments: list[str] = []

    def feed(self, delta: _ToolCallDelta) -> str:
        text = ""
        if delta.index != self._index:
            text += self.close()
            if not delta.function.name:
                raise BackendError("backend_error", f"{self._base} streamed a tool call without a name")
            self._index = delta.index
            text += f"{OPEN}{{\"name\": {json.dumps(delta.function.name)}, \"arguments\": "
        if delta.function.arguments:
            self._arguments.append(delta.function.arguments)
            text += delta.function.arguments
        return text

    def close(self) -> str:
        """The end of the call being written ("" when none is)."""
        if self._index is None:
            return ""
        arguments, self._index, self._arguments = "".join(self._arguments), None, []
        if not arguments.strip():  # a function without parameters: OpenAI may stream none
            return f"{{}}}}{CLOSE}"
        try:
            parsed = json.loads(arguments)
        except (ValueError, RecursionError):
            parsed = None
        if not isinstance(parsed, dict):
            raise BackendError("backend_error", f"{self._base} streamed tool call arguments that are not a JSON object")
        return f"}}{CLOSE}"


class _Chunk(BaseModel):
    """One `chat.completion.chunk` event (only the fields used)."""

    model_config = ConfigDict(extra="ignore")
    choices: list[_Choice] = []
    usage: Usage | None = None


class OpenAIServer:
    """One model name of one OpenAI-compatible server, and the connection pool to it: what
    the chat and the embedding backends share."""

    def __init__(self, config: OpenAIConfig, what: str = "openai backend") -> None:
        self._base = check_config(config, what)
        self._config = config
        self._client: httpx.AsyncClient | None = None

    @property
    def engine(self) -> str:
        return ENGINE

    @property
    def models(self) -> list[str]:
        return [self._config.model]

    async def stop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()


class OpenAIBackend(OpenAIServer):
    """Serves one model name of one OpenAI-compatible server."""

    async def start(self) -> None:
        """Open the connection pool and check that the server answers (and takes our key)."""
        if self._client is None:
            self._client = await open_client(self._config)

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationEvent, None]:
        if request.model and request.model != self._config.model:
            raise BackendError("model_not_found", f"this worker serves {self._config.model!r}, not {request.model!r}")
        if self._client is None:
            raise BackendError("not_ready", "the backend is not started")
        body = self._body(request)
        # The upstream is another server, which may not enforce the schemas: checked at the end.
        check = AnswerCheck.of(request)
        answer: list[str] = []
        usage: Usage | None = None
        reason = "stop"
        produced = 0
        calls = _CallWriter(self._base)
        logprobs: list[TokenLogprob] | None = [] if body.get("logprobs") else None
        try:
            async with self._client.stream("POST", "/chat/completions", json=body) as response:
                if response.status_code >= 400:
                    raise _http_error(self._base, response.status_code, await response.aread())
                content_type = response.headers.get("content-type", "")
                if not content_type.startswith("text/event-stream"):
                    raise BackendError("backend_error", f"{self._base} answered {content_type or 'no content type'}, not an event stream")
                async for event in aiter_events(response.aiter_lines()):
                    if event.data.strip() == "[DONE]":
                        break
                    chunk = _parse_chunk(self._base, event.data)
                    usage = chunk.usage or usage
                    for choice in chunk.choices:
                        text = calls.close() if choice.delta.content else ""
                        text += choice.delta.content or ""
                        for call in choice.delta.tool_calls or ():
                            text += calls.feed(call)
                        if text:
                            produced += 1
                            answer.append(text)
                            yield TextChunk(text)
                        if logprobs is not None and choice.logprobs is not None:
                            logprobs.extend(choice.logprobs.content or ())
                        if choice.finish_reason:
                            # `tool_calls` too: the worker finds the calls in the text.
                            reason = "length" if choice.finish_reason == "length" else "stop"
        except httpx.HTTPError as exc:
            raise _transport_error(self._base, exc) from exc
        tail = calls.close()
        if tail:
            answer.append(tail)
            yield TextChunk(tail, tokens=0)
        if check is not None:
            check.check("".join(answer), reason)
        if usage is None:  # a server that ignores stream_options: count what streamed
            usage = Usage(completion_tokens=produced, total_tokens=produced)
        yield Finished(usage, reason, logprobs=Logprobs(content=logprobs) if logprobs is not None else None)

    def _body(self, request: GenerationRequest) -> dict[str, Any]:
        if request.messages is not None:
            messages = [_message(m) for m in request.messages]
        else:
            messages = [{"role": "user", "content": request.prompt or ""}]
        body: dict[str, Any] = {
            "model": self._config.model,
            "messages": messages,
            **sampling_from(request.params).given(),
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if request.tools:  # as the client gave them (`tool_choice` none included)
            body["tools"] = [tool.model_dump(exclude_none=True) for tool in request.tools]
            choice = request.tool_choice
            body["tool_choice"] = choice if isinstance(choice, str) else choice.model_dump()
            if not request.parallel_tool_calls:
                body["parallel_tool_calls"] = False
        if request.response_format is not None:
            body["response_format"] = request.response_format.model_dump(exclude_none=True, by_alias=True)
        return body


def _message(message: ChatMessage) -> dict[str, Any]:
    """A turn as OpenAI takes it: `developer` as `system` (which every such server knows), and
    an assistant turn's null content where it only holds calls."""
    turn = message.model_dump(exclude_none=True)
    if message.role == "developer":
        turn["role"] = "system"
    if message.tool_calls and not message.content:
        turn["content"] = None
    return turn


def check_config(config: OpenAIConfig, what: str = "openai backend") -> str:
    """The server's API root without a trailing slash; raises `BackendError("bad_config")`."""
    if not config.base_url.startswith(("http://", "https://")):
        raise BackendError("bad_config", f"--base-url must be an http(s) URL, not {config.base_url!r}")
    if not config.model:
        raise BackendError("bad_config", f"the {what} needs --model NAME (the model to ask the server for)")
    return config.base_url.rstrip("/")


async def open_client(config: OpenAIConfig) -> httpx.AsyncClient:
    """A connection pool to the server, once it has answered `/models` and taken our key;
    raises `BackendError` (`backend_unreachable`, `backend_auth`, ...)."""
    base = config.base_url.rstrip("/")
    headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
    timeout = httpx.Timeout(config.read_timeout_s, connect=config.connect_timeout_s)
    client = httpx.AsyncClient(base_url=base, headers=headers, timeout=timeout)
    try:
        reply = await client.get("/models")
    except httpx.HTTPError as exc:
        await client.aclose()
        raise _transport_error(base, exc) from exc
    if reply.status_code in (401, 403):
        await client.aclose()
        raise _http_error(base, reply.status_code, reply.content)
    served = _model_ids(reply)
    if served is not None and config.model not in served:
        log.warning("%s does not list model %r (it lists %s)", base, config.model, served)
    return client


def _parse_chunk(base: str, data: str) -> _Chunk:
    try:
        payload = json.loads(data)
    except json.JSONDecodeError as exc:
        raise BackendError("backend_error", f"{base} streamed something that is not JSON: {data[:200]!r}") from exc
    if isinstance(payload, dict) and "error" in payload:  # an error reported mid-stream
        raise BackendError("backend_error", f"{base} reported: {_error_message(payload)}")
    try:
        return _Chunk.model_validate(payload)
    except ValidationError as exc:
        raise BackendError("backend_error", f"{base} streamed an unexpected chunk: {data[:200]!r}") from exc


def _model_ids(reply: httpx.Response) -> list[str] | None:
    if reply.status_code != 200:
        return None
    try:
        return [str(m["id"]) for m in reply.json()["data"]]
    except (ValueError, KeyError, TypeError):
        return None


def _error_message(payload: Any) -> str:
    error = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(error, dict):
        return str(error.get("message") or error.get("code") or error)
    return str(error if error is not None else payload)


def _http_error(base: str, status: int, body: bytes) -> BackendError:
    """An HTTP error answer as the task's error, with the server's own message."""
    try:
        message = _error_message(json.loads(body))
    except ValueError:
        message = body.decode(errors="replace").strip()[:300] or "(no body)"
    text = f"{base} answered HTTP {status}: {message}"
    if status in (400, 413, 422):
        lowered = message.lower()
        code = "context_overflow" if any(h in lowered for h in _CONTEXT_HINTS) else "bad_params"
    elif status in (401, 403):
        code = "backend_auth"
    elif status == 404:
        code = "model_not_found"
    elif status in (408, 504):
        code = "backend_timeout"
    elif status == 429:
        code = "rate_limited"
    else:
        code = "backend_error"
    return BackendError(code, text)


def _transport_error(base: str, exc: httpx.HTTPError) -> BackendError:
    if isinstance(exc, httpx.TimeoutException):
        return BackendError("backend_timeout", f"{base} did not answer in time ({type(exc).__name__})")
    if isinstance(exc, httpx.ConnectError):
        return BackendError("backend_unreachable", f"cannot reach {base}: {exc}")
    return BackendError("backend_error", f"talking to {base} failed: {type(exc).__name__}: {exc}")
