"""Pydantic models of a task entry: what a client may write, and what the mesh writes back.

Values read back from the CRDT come through JSON semantics (every number is a float), so the
models accept floats for integer fields as long as they are whole numbers.
"""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from kanbanmesh.board import constants as c
from kanbanmesh.board.embeddings import (
    MAX_EMBED_DIMENSIONS,
    MAX_EMBED_INPUT_CHARS,
    MAX_EMBED_INPUT_TOKENS,
    MAX_EMBED_INPUTS,
    MAX_TOKEN_ID,
    encoded_length,
)
from kanbanmesh.board.templates import MAX_PARENTS, REF_START, result_refs
from kanbanmesh.board.tool_schema import (
    MAX_TOOL_CALLS,
    MAX_TOOLS,
    MAX_TOP_LOGPROBS,
    Logprobs,
    NamedToolChoice,
    ResponseFormat,
    ToolCall,
    ToolChoice,
    ToolSpec,
)

TASK_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"


class TaskStatus(str, Enum):
    """How a task ended; written once, when it enters `done`."""

    SUCCEEDED = "succeeded"  # the backend finished; `result` holds the text
    FAILED = "failed"  # the backend or the mesh gave up; `error` says why
    CANCELLED = "cancelled"  # the owner set `cancel` before it finished


class TaskKind(str, Enum):
    """What a task asks for; a request without `kind` is a chat."""

    CHAT = c.KIND_CHAT  # generate text from `messages` or `prompt`
    EMBED = c.KIND_EMBED  # embed each of `input` into a vector (`embeddings`)


# One input of an embed task: a text, or token ids of the model's tokenizer.
EmbedText = Annotated[str, StringConstraints(min_length=1, max_length=MAX_EMBED_INPUT_CHARS)]
EmbedTokens = Annotated[
    list[Annotated[int, Field(ge=0, le=MAX_TOKEN_ID)]],
    Field(min_length=1, max_length=MAX_EMBED_INPUT_TOKENS),
]


class ChatMessage(BaseModel):
    """One turn of a chat, as OpenAI's API and the stock JS example spell it."""

    model_config = ConfigDict(extra="allow")

    # `developer` is OpenAI's newer name for `system` (the worker treats it as such).
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str  # null is read as "" where allowed: an assistant turn with `tool_calls`
    # Tool calling (docs/protocol.md section 14): an assistant turn's calls, and in a `tool`
    # turn the id of the call it answers (and the function's name, optionally).
    tool_calls: list[ToolCall] | None = Field(default=None, max_length=MAX_TOOL_CALLS)
    tool_call_id: str | None = Field(default=None, max_length=256)
    name: str | None = Field(default=None, max_length=256)

    @model_validator(mode="before")
    @classmethod
    def _null_content(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("content", "") is None:
            if data.get("role") != "assistant" or not data.get("tool_calls"):
                raise ValueError("content may be null only in an assistant turn with tool_calls")
            data = {**data, "content": ""}
        return data


class TaskParams(BaseModel):
    """Sampling parameters; a field left out means the backend's default."""

    model_config = ConfigDict(extra="allow")

    max_tokens: int | None = Field(default=None, ge=1, le=1_000_000)
    temperature: float | None = Field(default=None, ge=0.0, le=5.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    stop: list[str] | None = Field(default=None, max_length=16)
    seed: int | None = None
    # OpenAI's: the log probability of each generated token, and of the `top_logprobs` most
    # likely ones at each position (docs/protocol.md section 14).
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)

    @model_validator(mode="after")
    def _top_needs_logprobs(self) -> TaskParams:
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        return self


class RagSpec(BaseModel):
    """Retrieval request: top `k` chunks of `collection` go into the prompt."""

    collection: str = Field(min_length=1)
    k: int = Field(default=4, ge=1, le=100)


class ContextChunk(BaseModel):
    """A retrieved chunk the server put into a task's `context`, best first."""

    model_config = ConfigDict(extra="allow")

    text: str
    source: str  # the document's path as ingested
    heading: str = ""  # heading path within the document ("Guide > Install")
    position: int = 0  # the chunk's 0-based order in its document
    score: float = 0.0  # cosine similarity to the question


class Citation(BaseModel):
    """A source the worker's prompt used: `[n]` in the prompt is `context[n - 1]`."""

    model_config = ConfigDict(extra="allow")

    n: int
    source: str
    heading: str = ""
    position: int = 0
    score: float = 0.0


class TaskRequest(BaseModel):
    """The fields a client writes once, when it creates the entry in `todo`."""

    model_config = ConfigDict(extra="allow")

    id: str = Field(pattern=TASK_ID_PATTERN)
    owner: str = ""
    model: str = ""
    messages: list[ChatMessage] | None = Field(default=None, min_length=1)
    prompt: str | None = None
    params: TaskParams = Field(default_factory=TaskParams)
    priority: int = 0
    conversation: str | None = None
    rag: RagSpec | None = None
    created_at: float = 0.0
    max_attempts: int | None = Field(default=None, ge=1, le=100)  # None: the broker's default
    # Task graphs (kanbanmesh/board/graph.py): the tasks this one waits for.
    after: list[Annotated[str, Field(pattern=TASK_ID_PATTERN)]] | None = Field(
        default=None, max_length=MAX_PARENTS
    )
    # An embed task (`kind: "embed"`): its inputs, and the vectors' length wanted (None: the
    # model's own; the worker writes the length it gave).
    kind: TaskKind | None = None
    input: list[EmbedText | EmbedTokens] | None = Field(default=None, min_length=1, max_length=MAX_EMBED_INPUTS)
    dimensions: int | None = Field(default=None, ge=1, le=MAX_EMBED_DIMENSIONS)
    # Tool calling and structured output (docs/protocol.md section 14).
    tools: list[ToolSpec] | None = Field(default=None, min_length=1, max_length=MAX_TOOLS)
    tool_choice: ToolChoice | None = None  # None: "auto" with tools
    parallel_tool_calls: bool | None = None  # False: at most one call (None: any number)
    response_format: ResponseFormat | None = None

    @model_validator(mode="after")
    def _one_input(self) -> TaskRequest:
        if self.kind is TaskKind.EMBED:
            if self.input is None:
                raise ValueError("an embed task needs `input`")
            if self.messages is not None or self.prompt is not None:
                raise ValueError("an embed task carries `input`, not `messages` or `prompt`")
            if self.rag is not None or self.conversation is not None:
                raise ValueError("an embed task takes no `rag` or `conversation`")
            return self
        if self.input is not None or self.dimensions is not None:
            raise ValueError("`input` and `dimensions` belong to an embed task (`kind: \"embed\"`)")
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("a task needs exactly one of `messages` or `prompt`")
        return self

    @model_validator(mode="after")
    def _graph(self) -> TaskRequest:
        after = self.after or []
        if len(set(after)) != len(after):
            raise ValueError("`after` names a task twice")
        if self.id in after:
            raise ValueError("a task cannot wait for itself")
        if not after:
            return self  # no graph: its text is taken as it is (never replaced)
        texts = [m.content for m in self.messages or ()]
        if self.prompt is not None:
            texts.append(self.prompt)
        if not any(REF_START in text for text in texts):
            return self  # the common case, at the cost of a substring search
        unknown = result_refs(texts) - set(after)
        if unknown:
            raise ValueError(f"{{{{result:{min(unknown)[:40]}}}}} refers to a task not in `after`")
        return self

    @property
    def task_kind(self) -> TaskKind:
        """`kind`, a chat where the request names none."""
        return self.kind or TaskKind.CHAT

    @model_validator(mode="after")
    def _tools_agree(self) -> TaskRequest:
        names = [tool.function.name for tool in self.tools or []]
        if len(set(names)) != len(names):
            raise ValueError("two tools have the same name")
        if self.tool_choice is not None and not names:
            raise ValueError("tool_choice needs tools")
        if isinstance(self.tool_choice, NamedToolChoice) and self.tool_choice.function.name not in names:
            raise ValueError(f"tool_choice names {self.tool_choice.function.name!r}, which is not among tools")
        return self

    def choice(self) -> str | NamedToolChoice:
        """The tool choice in force: `none` without tools, `auto` when tools come without one."""
        if not self.tools:
            return "none"
        return self.tool_choice if self.tool_choice is not None else "auto"

    def chat(self) -> list[ChatMessage]:
        """The request as chat turns (a bare prompt is one user turn)."""
        if self.messages is not None:
            return list(self.messages)
        return [ChatMessage(role="user", content=self.prompt or "")]

    def to_fields(self) -> dict[str, Any]:
        """The entry fields to write into the board (unset optional fields left out)."""
        return self.model_dump(mode="json", exclude_none=True, by_alias=True)


class TaskError(BaseModel):
    """Why a task failed: a stable machine `code` and a sentence for people."""

    code: str
    message: str


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_tokens: int = 0  # of the prompt tokens, those a prompt cache held (not evaluated)


class Timings(BaseModel):
    """Per-task timings, all measured by the worker's clock except `queued_ms`."""

    queued_ms: float = 0.0  # created_at -> started_at
    ttft_ms: float = 0.0  # started_at -> first chunk
    total_ms: float = 0.0  # started_at -> finished
    tokens_per_s: float = 0.0  # completion tokens / generation time
    prompt_ms: float = 0.0  # reading the prompt (what a cache did not hold), by the backend


class AttemptRecord(BaseModel):
    """Why one attempt of a task ended without finishing it (kept in the entry's `attempts`)."""

    attempt: int
    worker: str
    reason: str  # worker_lost | lease_expired
    message: str = ""
    at: float = 0.0  # ms since epoch


class TaskEntry(TaskRequest):
    """A whole entry as read from any column."""

    worker: str | None = None
    attempt: int = 0
    assigned_at: float | None = None
    retry_at: float | None = None
    attempts: list[AttemptRecord] = Field(default_factory=list)
    history: list[ChatMessage] | None = None  # the conversation's earlier turns (server)
    enriching: list[str] | None = None  # middlewares still to run (server); not assignable
    context: list[ContextChunk] | None = None  # retrieved chunks (server)
    after_results: dict[str, str] | None = None  # the results `{{result:ID}}` refers to (server)
    citations: list[Citation] | None = None  # the chunks the prompt used (worker)
    started_at: float | None = None
    output: str = ""
    tokens: int = 0
    status: TaskStatus | None = None
    result: str | None = None
    error: TaskError | None = None
    usage: Usage | None = None
    timings: Timings | None = None
    finished_at: float | None = None
    finish_reason: str | None = None
    # An embed task's vectors, one per input (kanbanmesh.board.embeddings), by the worker.
    embeddings: list[str] | None = Field(default=None, max_length=MAX_EMBED_INPUTS)
    tool_calls: list[ToolCall] | None = None  # the answer's calls (worker; section 14)
    logprobs: Logprobs | None = None  # with `params.logprobs` (worker; section 14)
    cancel: bool = False
    ack: bool = False

    @model_validator(mode="after")
    def _results_of_parents(self) -> TaskEntry:
        # The results a worker puts into the text: only ever those of the task's own parents
        # (a task without `after` is no graph, and its text is taken as it is).
        if self.after_results and not set(self.after_results) <= set(self.after or ()):
            raise ValueError("`after_results` names a task not in `after`")
        return self

    @model_validator(mode="after")
    def _vectors_fit(self) -> TaskEntry:
        # Their shape only (string lengths: no decoding); readers decode and check the values.
        if self.embeddings is None:
            return self
        if self.kind is not TaskKind.EMBED or self.dimensions is None:
            raise ValueError("`embeddings` belong to an embed task, with its `dimensions`")
        if len(self.embeddings) != len(self.input or ()):
            raise ValueError(f"{len(self.embeddings)} embeddings for {len(self.input or ())} inputs")
        width = encoded_length(self.dimensions)
        if any(len(vector) != width for vector in self.embeddings):
            raise ValueError(f"an embedding is not {self.dimensions} float32 values in base64")
        return self


# The fields of a request (what the client writes when it creates a task).
REQUEST_FIELDS = frozenset(TaskRequest.model_fields)

# Fields each writer may set on an existing entry (the security issue enforces these per role).
CLIENT_FIELDS = frozenset({c.F_CANCEL, c.F_ACK})
BROKER_FIELDS = frozenset(
    {
        c.F_WORKER,
        c.F_ATTEMPT,
        c.F_ASSIGNED_AT,
        c.F_CREATED_AT,  # only where the client left it out
        c.F_RETRY_AT,
        c.F_ATTEMPTS,
        c.F_STATUS,
        c.F_RESULT,  # the text streamed so far, when it cancels or fails a task
        c.F_ERROR,
        c.F_FINISHED_AT,
    }
)
WORKER_FIELDS = frozenset(
    {
        c.F_STARTED_AT,
        c.F_OUTPUT,
        c.F_TOKENS,
        c.F_STATUS,
        c.F_RESULT,
        c.F_ERROR,
        c.F_USAGE,
        c.F_TIMINGS,
        c.F_FINISHED_AT,
        c.F_FINISH_REASON,
        c.F_CITATIONS,
        c.F_EMBEDDINGS,
        c.F_DIMENSIONS,  # of an embed task: the length of the vectors it wrote
        c.F_TOOL_CALLS,
        c.F_LOGPROBS,
    }
)
# Fields only the server writes (its pre-inference pipeline): nobody else may set them.
SERVER_FIELDS = frozenset({c.F_HISTORY, c.F_ENRICHING, c.F_CONTEXT, c.F_AFTER_RESULTS})
