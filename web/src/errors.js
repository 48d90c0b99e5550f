// @ts-check
// The library's errors, one tree:
//
//   KanbanmeshError            anything this library raises or rejects with
//   ├── ConnectError           the server could not be reached, or no sync in time
//   ├── AuthError              the server refused the token (HTTP 401) or the board (403)
//   ├── RefusedError           the server closed the connection over a write it refused
//   │                          (REFUSAL_CLOSE_CODES), or for good (FATAL_CLOSE_CODES)
//   └── StreamRestartedError   a retried task produced text that differs from what was streamed

// What a client does after each close code (docs/protocol.md section 3, "Close codes"): the
// same two lists as kanbanmesh/board/constants.py (a test holds them equal).
/** A write was refused: start over with a new document (dropping it), reconnect. */
export const REFUSAL_CLOSE_CODES = Object.freeze([1009, 4400, 4403, 4413, 4422, 4429])
/** Reconnecting would be refused again: stop (4401: connect again with a fresh token). */
export const FATAL_CLOSE_CODES = Object.freeze([1002, 1008, 4401])
/** The board moved to a new generation: reconnect at once with a new document. */
export const CLOSE_BOARD_ROTATED = 4409

export class KanbanmeshError extends Error {
  /** @param {string} message */
  constructor (message) {
    super(message)
    this.name = new.target.name
  }
}

export class ConnectError extends KanbanmeshError {}

export class AuthError extends KanbanmeshError {
  /** @param {string} message @param {number} status 401 (token) or 403 (board) */
  constructor (message, status) {
    super(message)
    this.status = status
  }
}

export class RefusedError extends KanbanmeshError {
  /** @param {string} message @param {number} code the websocket close code */
  constructor (message, code) {
    super(message)
    this.code = code
  }
}

/**
 * A retry of the task produced text that differs from what was already streamed (protocol
 * section 5): the stream ends there; the task runs on, and `result()` gives its final text.
 */
export class StreamRestartedError extends KanbanmeshError {
  /** @param {string} taskId @param {number} attempt the attempt whose text diverged */
  constructor (taskId, attempt) {
    super(`task ${taskId} was retried (attempt ${attempt}) and its new text differs from what was already streamed`)
    this.taskId = taskId
    this.attempt = attempt
  }
}
