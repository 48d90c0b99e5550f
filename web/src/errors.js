// @ts-check
// The library's errors, one tree:
//
//   KanbanmeshError            anything this library raises or rejects with
//   ├── ConnectError           the server could not be reached, or no sync in time
//   ├── AuthError              the server refused the token (HTTP 401) or the board (403)
//   └── RefusedError           the server closed the connection over a write it refused
//                              (protocol section 3: 1002, 1009, 4400, 4403, 4413, 4422, 4429)

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
