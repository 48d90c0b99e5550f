// @ts-check
// kanbanmesh for JavaScript: submit tasks to a board, follow their streams, see the workers.
// Built on the stock `yjs` and `y-websocket` packages; runs in browsers and in node (pass
// `{ WebSocket }` from the `ws` package where there is no global WebSocket).
//
//   import { connect } from 'kanbanmesh-web'
//   const board = await connect('ws://127.0.0.1:8765', 'default', { token })
//   const task = board.submit({ prompt: 'Tell me a joke', params: { max_tokens: 64 } })
//   task.onChunk((chunk) => process.stdout.write(chunk))
//   const { status, result, timings } = await task.result()

export { Board, connect } from './board.js'
export {
  AuthError, CLOSE_BOARD_ROTATED, ConnectError, FATAL_CLOSE_CODES, KanbanmeshError, REFUSAL_CLOSE_CODES, RefusedError,
  StreamRestartedError
} from './errors.js'
export { httpBase, listCollections, lookupTask, whoami } from './http.js'
export { TaskHandle } from './task.js'
export { COLUMNS, DEFAULT_RAG_K, MAX_PARENTS, findTask, newTaskId, plainTask, resultRef, snapshot } from './tasks.js'
