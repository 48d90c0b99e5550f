"""Errors of the OpenAI-compatible API, in OpenAI's shape, and what a failed task answers.

Every answer that is not a completion is `{"error": {"message", "type", "param", "code"}}`
with a 4xx or 5xx status: OpenAI's clients read `type`, `param` and `code` from it, and
LangChain and the `openai` package decide from the status whether to retry (they retry 408,
409, 429 and 5xx), so a request that can never succeed must not answer a 5xx.
"""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse

from kanbanmesh.board.schema import TaskEntry, TaskStatus

INVALID_REQUEST = "invalid_request_error"
SERVER_ERROR = "server_error"


class ApiError(Exception):
    """An error in OpenAI's shape, with its HTTP status; raised anywhere under a route and
    answered by it."""

    def __init__(self, status: int, message: str, *, kind: str, code: str | None = None,
                 param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind
        self.code, self.param = code, param

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param,
                          "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)


def invalid(message: str, *, param: str | None = None,
            code: str | None = "invalid_value") -> ApiError:
    """400: a request that can never succeed as it is."""
    return ApiError(400, message, kind=INVALID_REQUEST, code=code, param=param)


def unsupported(param: str, what: str = "") -> ApiError:
    """400: an OpenAI parameter that would change the answer, which this server does not
    implement (refused rather than dropped: the client would get an answer it did not ask for)."""
    detail = f": {what} is not supported" if what else " is not supported"
    return invalid(f"unsupported parameter {param}{detail} by this server", param=param,
                   code="unsupported_parameter")


def unknown(param: str) -> ApiError:
    """400: a key that is neither OpenAI's nor kanbanmesh's (as OpenAI answers it)."""
    return invalid(f"unrecognized request argument supplied: {param}", param=param,
                   code="unknown_parameter")


def internal(message: str = "the server failed to handle the request") -> ApiError:
    return ApiError(500, message, kind=SERVER_ERROR, code="server_error")


# A failed task's `error.code` -> (HTTP status, OpenAI type, OpenAI code, param). Codes from the
# workers' backends (worker/backends), the broker (broker/repair.py) and the pre-inference
# middlewares (kanbanmesh/server/enrichment.py, rag/). A request that cannot succeed as it is
# answers 4xx; the mesh failing answers 5xx (the client may retry).
_FAILURES: dict[str, tuple[int, str, str, str | None]] = {
    "context_overflow": (400, INVALID_REQUEST, "context_length_exceeded", "messages"),
    "bad_params": (400, INVALID_REQUEST, "invalid_value", None),
    "model_not_found": (404, INVALID_REQUEST, "model_not_found", "model"),
    "no_chat_format": (400, INVALID_REQUEST, "no_chat_format", "model"),
    "collection_not_found": (404, INVALID_REQUEST, "collection_not_found", "rag.collection"),
    "invalid_collection": (400, INVALID_REQUEST, "invalid_collection", "rag.collection"),
    "bad_rag": (400, INVALID_REQUEST, "bad_rag", "rag"),
    "busy": (503, SERVER_ERROR, "busy", None),
    "not_ready": (503, SERVER_ERROR, "not_ready", None),
    "backend_unreachable": (503, SERVER_ERROR, "backend_unreachable", None),
    "backend_timeout": (504, SERVER_ERROR, "backend_timeout", None),
    "middleware_timeout": (504, SERVER_ERROR, "middleware_timeout", None),
    # An embed task's (docs/protocol.md section 13).
    "unknown_model": (404, INVALID_REQUEST, "model_not_found", "model"),
    "dimensions_unsupported": (400, INVALID_REQUEST, "invalid_value", "dimensions"),
    "input_too_long": (400, INVALID_REQUEST, "context_length_exceeded", "input"),
    "invalid_input": (400, INVALID_REQUEST, "invalid_value", "input"),
    "output_too_large": (400, INVALID_REQUEST, "invalid_value", "input"),
    # The model (or the upstream) answered calls or JSON that break their schemas (docs/protocol.md
    # section 14): the mesh failed, not the request; another sample may pass.
    "invalid_tool_call": (500, SERVER_ERROR, "invalid_tool_call", "tools"),
    "invalid_structured_output": (500, SERVER_ERROR, "invalid_structured_output", "response_format"),
}


def failure_error(entry: TaskEntry) -> ApiError | None:
    """What a finished task answers when it did not succeed; None when it did."""
    if entry.status is TaskStatus.SUCCEEDED:
        return None
    if entry.status is TaskStatus.CANCELLED:
        # 499 (nginx's "client closed request"): nobody else cancels an API task but its
        # client, the queue timeout (answered 503 before this) or the board's owner.
        return ApiError(499, "the request was cancelled", kind=SERVER_ERROR, code="cancelled")
    code = entry.error.code if entry.error else "failed"
    message = entry.error.message if entry.error else "the task failed"
    status, kind, openai_code, param = _FAILURES.get(code, (500, SERVER_ERROR, code, None))
    return ApiError(status, message, kind=kind, code=openai_code, param=param)
