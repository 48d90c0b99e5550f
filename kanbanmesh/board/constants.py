"""Names of everything that travels on the wire, in one place.

These strings are a contract with JavaScript clients and extensions (see docs/protocol.md):
renaming one breaks every client written against the protocol.
"""

from __future__ import annotations

from typing import Final

DEFAULT_BOARD: Final = "default"
# What a board may be called (the server, the CLI and retrieval collections check it).
BOARD_NAME_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"

# Root maps of a board document, in the order a task moves through them.
TODO: Final = "todo"
PREPARED: Final = "prepared"
DOING: Final = "doing"
DONE: Final = "done"
COLUMNS: Final = (TODO, PREPARED, DOING, DONE)

# Task entry fields written by the client (once, at creation).
F_ID: Final = "id"
F_OWNER: Final = "owner"
F_MODEL: Final = "model"
F_MESSAGES: Final = "messages"
F_PROMPT: Final = "prompt"
F_PARAMS: Final = "params"
F_PRIORITY: Final = "priority"
F_CONVERSATION: Final = "conversation"
F_HISTORY: Final = "history"  # written by the server: the conversation's earlier turns
F_RAG: Final = "rag"
# Written by the server's pre-inference pipeline (kanbanmesh.server.enrichment).
F_ENRICHING: Final = "enriching"  # middlewares still to run; brokers do not assign meanwhile
F_CONTEXT: Final = "context"  # retrieved chunks, for the worker's prompt template
F_CREATED_AT: Final = "created_at"
F_MAX_ATTEMPTS: Final = "max_attempts"
# Task graphs (kanbanmesh.board.graph): the tasks a task waits for, and the results of those
# its messages refer to (written by the server once every one of them succeeded).
F_AFTER: Final = "after"
F_AFTER_RESULTS: Final = "after_results"
# An embed task's request (docs/protocol.md, "Embed tasks"); `dimensions` the worker writes
# back with the vectors' length.
F_KIND: Final = "kind"  # chat (absent) | embed
F_INPUT: Final = "input"
F_DIMENSIONS: Final = "dimensions"
# Tool calling and structured output (docs/protocol.md section 14).
F_TOOLS: Final = "tools"
F_TOOL_CHOICE: Final = "tool_choice"
F_PARALLEL_TOOL_CALLS: Final = "parallel_tool_calls"
F_RESPONSE_FORMAT: Final = "response_format"
# Written by the broker.
F_WORKER: Final = "worker"
F_ATTEMPT: Final = "attempt"
F_ASSIGNED_AT: Final = "assigned_at"
F_RETRY_AT: Final = "retry_at"
F_ATTEMPTS: Final = "attempts"
# Written by the worker.
F_STARTED_AT: Final = "started_at"
F_OUTPUT: Final = "output"
F_TOKENS: Final = "tokens"
# Outcome.
F_STATUS: Final = "status"
F_RESULT: Final = "result"
F_ERROR: Final = "error"
F_USAGE: Final = "usage"
F_TIMINGS: Final = "timings"
F_FINISHED_AT: Final = "finished_at"
F_FINISH_REASON: Final = "finish_reason"  # stop | length, when the backend finished it
F_CITATIONS: Final = "citations"  # the retrieved chunks the worker's prompt used
F_EMBEDDINGS: Final = "embeddings"  # an embed task's vectors: base64 of little-endian float32
F_TOOL_CALLS: Final = "tool_calls"  # the calls of the answer, parsed (OpenAI's shape)
F_LOGPROBS: Final = "logprobs"  # OpenAI's chat `logprobs` object, when `params.logprobs`
# Set by the owner, honoured in every column.
F_CANCEL: Final = "cancel"
# Set by the owner on a `done` entry: the result was read, archive it now.
F_ACK: Final = "ack"

# Root map of requests to peers: `drain/<worker id or name>` -> ms when asked.
CONTROL: Final = "control"
DRAIN_PREFIX: Final = "drain/"

# Root map written by the server alone: the document's generation, and the entry limits the
# server holds every write to (`kanbanmesh/board/limits.py`), for peers to stay within.
META: Final = "meta"
M_GENERATION: Final = "generation"
M_LIMITS: Final = "limits"

# Awareness state fields.
A_ROLE: Final = "role"
A_ID: Final = "id"
A_NAME: Final = "name"
A_MODELS: Final = "models"
A_SLOTS: Final = "slots"
A_STATE: Final = "state"
A_TASKS: Final = "tasks"
A_ENGINE: Final = "engine"
A_VERSION: Final = "version"
A_SINCE: Final = "since"  # a broker's start time: the oldest present broker leads
# A worker's prompt cache: {prefix hash: tokens it covers} (kanbanmesh/board/prefix.py).
A_CACHE: Final = "cache"
# The task kinds a worker runs (`chat`, `embed`); absent = chat.
A_KINDS: Final = "kinds"
KIND_CHAT: Final = "chat"
KIND_EMBED: Final = "embed"

# Websocket close codes (4000-4999 are free for applications per RFC 6455).
CLOSE_NORMAL: Final = 1000
CLOSE_GOING_AWAY: Final = 1001
CLOSE_PROTOCOL_ERROR: Final = 1002
CLOSE_POLICY_VIOLATION: Final = 1008
CLOSE_MESSAGE_TOO_BIG: Final = 1009
CLOSE_INTERNAL_ERROR: Final = 1011
CLOSE_SERVICE_RESTART: Final = 1012  # the board was unloaded as the connection came in
CLOSE_TRY_AGAIN_LATER: Final = 1013  # an awareness client id in use by another connection
CLOSE_INVALID_UPDATE: Final = 4400
CLOSE_INVALID_TASK: Final = 4422
CLOSE_TASK_TOO_LARGE: Final = 4413
CLOSE_BOARD_ROTATED: Final = 4409  # reconnect with a new, empty document
CLOSE_FORBIDDEN: Final = 4403  # a write this connection's role may not make
CLOSE_TOKEN_EXPIRED: Final = 4401  # the connection's token expired: reconnect with a fresh one
CLOSE_TOO_MANY: Final = 4429  # a per-owner limit (open tasks, submissions a minute)

# What a peer does after each close code (docs/protocol.md section 3, "Close codes"); the
# JavaScript library (web/src/errors.js) holds the same two lists, and a test holds them equal.
# A write of the peer's was refused: its replica holds that write, so it starts a new, empty
# replica (dropping the write) and reconnects; whoever made the write learns why.
REFUSAL_CLOSE_CODES: Final = frozenset({
    CLOSE_MESSAGE_TOO_BIG, CLOSE_INVALID_UPDATE, CLOSE_FORBIDDEN, CLOSE_TASK_TOO_LARGE,
    CLOSE_INVALID_TASK, CLOSE_TOO_MANY,
})
# Reconnecting would only be refused again: the peer stops (4401 unless it can get a fresh
# token). Every other code (1000, 1001, 1006, 1011, ...) means "reconnect, keep the replica";
# 4409 means "reconnect at once with a new replica".
FATAL_CLOSE_CODES: Final = frozenset({CLOSE_PROTOCOL_ERROR, CLOSE_POLICY_VIOLATION, CLOSE_TOKEN_EXPIRED})
