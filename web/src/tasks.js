// @ts-check
// The board model in plain functions: the four columns, finding a task's live copy, reading
// an entry as a plain object, writing a new task. No I/O; names are the wire contract of
// docs/protocol.md (sections 2 to 5).

import * as Y from 'yjs'

import { StreamRestartedError } from './errors.js'

/** The root maps of a board, in the order a task travels through them. */
export const COLUMNS = /** @type {const} */ (['todo', 'prepared', 'doing', 'done'])

/** @typedef {typeof COLUMNS[number]} Column */
/** @typedef {{ role: 'system' | 'user' | 'assistant' | 'tool', content: string }} Message */
/**
 * @typedef {object} Params  Generation parameters; each one optional (the backend's default).
 * @property {number} [max_tokens]
 * @property {number} [temperature]
 * @property {number} [top_p]
 * @property {string[]} [stop]
 * @property {number} [seed]
 */
/**
 * @typedef {object} TaskRequest  What `submit` accepts: exactly one of `messages` and `prompt`.
 * @property {Message[]} [messages]
 * @property {string} [prompt]
 * @property {string} [model]  "" or absent: any worker
 * @property {Params} [params]
 * @property {number} [priority]  higher runs first (default 0)
 * @property {string} [conversation]
 * @property {string | { collection: string, k?: number }} [rag]  a collection name, or both
 * @property {number} [max_attempts]
 * @property {string} [id]  default: a fresh `js-...` id
 */
/**
 * @typedef {object} Task  An entry as a plain object (docs/protocol.md section 2), plus its column.
 * @property {string} id
 * @property {Column} column
 * @property {string} [owner]
 * @property {string} [model]
 * @property {Message[]} [messages]
 * @property {string} [prompt]
 * @property {Params} [params]
 * @property {number} [priority]
 * @property {string} [conversation]
 * @property {{ collection: string, k: number }} [rag]
 * @property {number} [created_at]
 * @property {string} [worker]
 * @property {number} [attempt]
 * @property {number} [started_at]
 * @property {string | null} output  the streamed text (null before the worker starts)
 * @property {number} [tokens]
 * @property {'succeeded' | 'failed' | 'cancelled'} [status]
 * @property {string} [result]
 * @property {{ code: string, message: string }} [error]
 * @property {{ prompt_tokens: number, completion_tokens: number, total_tokens: number }} [usage]
 * @property {{ queued_ms: number, ttft_ms: number, total_ms: number, tokens_per_s: number }} [timings]
 * @property {number} [finished_at]
 * @property {boolean} [cancel]
 */
/** @typedef {{ todo: Task[], prepared: Task[], doing: Task[], done: Task[] }} Snapshot */

/** RAG's default number of passages, as the server's schema has it. */
export const DEFAULT_RAG_K = 4

/**
 * The live copy of task `id`: `{ column, entry }`, or null when no column holds it.
 *
 * After concurrent moves the same id may sit in two maps; the copy that counts is the one in
 * `done`, otherwise the highest `attempt`, on a tie the later column (protocol 4.2).
 * @param {Y.Doc} doc
 * @param {string} id
 * @returns {{ column: Column, entry: Y.Map<any> } | null}
 */
export function findTask (doc, id) {
  /** @type {{ column: Column, entry: Y.Map<any> } | null} */
  let best = null
  /** @type {number[]} */
  let bestRank = []
  for (const [index, column] of COLUMNS.entries()) {
    const entry = doc.getMap(column).get(id)
    if (!(entry instanceof Y.Map)) continue
    const rank = [column === 'done' ? 1 : 0, Number(entry.get('attempt') ?? 0) || 0, index]
    if (best === null || ahead(rank, bestRank)) {
      best = { column, entry }
      bestRank = rank
    }
  }
  return best
}

/** @param {number[]} a @param {number[]} b */
function ahead (a, b) {
  const k = a.findIndex((x, j) => x !== b[j])
  return k >= 0 && a[k] > b[k]
}

/**
 * An entry as a plain object: JSON fields as they are, `output` as its text.
 * @param {Column} column
 * @param {Y.Map<any>} entry
 * @returns {Task}
 */
export function plainTask (column, entry) {
  /** @type {Record<string, any>} */
  const task = { column, output: null }
  for (const [key, value] of entry.entries()) {
    task[key] = value instanceof Y.AbstractType ? value.toString() : value
  }
  return /** @type {Task} */ (task)
}

/**
 * Every task on the board by column, each id once (its live copy), in the order a board
 * shows them: todo by priority then age, prepared and doing by age, done newest first.
 * @param {Y.Doc} doc
 * @returns {Snapshot}
 */
export function snapshot (doc) {
  /** @type {Snapshot} */
  const columns = { todo: [], prepared: [], doing: [], done: [] }
  const seen = new Set()
  for (const column of [...COLUMNS].reverse()) {
    for (const id of doc.getMap(column).keys()) {
      if (seen.has(id)) continue
      seen.add(id)
      const found = findTask(doc, id)
      if (found) columns[found.column].push(plainTask(found.column, found.entry))
    }
  }
  const time = (/** @type {number | undefined} */ t) => (typeof t === 'number' ? t : Infinity)
  columns.todo.sort((a, b) => (Number(b.priority ?? 0) - Number(a.priority ?? 0)) || time(a.created_at) - time(b.created_at))
  columns.prepared.sort((a, b) => time(a.created_at) - time(b.created_at))
  columns.doing.sort((a, b) => time(a.started_at) - time(b.started_at))
  columns.done.sort((a, b) => time(b.finished_at) - time(a.finished_at) || 0)
  return columns
}

/** A fresh task id (the server wants `^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$`). */
export function newTaskId () {
  return `js-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 10)}`
}

/**
 * The fields of a new entry for `request`, owned by `owner`; throws TypeError on a request the
 * server would refuse for its shape (the server checks the rest).
 * @param {TaskRequest} request
 * @param {string} owner
 * @returns {Record<string, any>}
 */
export function requestFields (request, owner) {
  const { messages, prompt, model = '', params = {}, priority = 0, conversation, rag, max_attempts: maxAttempts } = request
  if ((messages === undefined) === (prompt === undefined)) {
    throw new TypeError('a task needs exactly one of `messages` and `prompt`')
  }
  /** @type {Record<string, any>} */
  const fields = {
    id: request.id ?? newTaskId(),
    owner,
    model,
    params,
    priority,
    created_at: Date.now()
  }
  if (messages !== undefined) fields.messages = messages
  else fields.prompt = prompt
  if (conversation !== undefined) fields.conversation = conversation
  if (maxAttempts !== undefined) fields.max_attempts = maxAttempts
  if (rag !== undefined) {
    const spec = typeof rag === 'string' ? { collection: rag } : rag
    if (!spec.collection) throw new TypeError('`rag` needs a collection name')
    fields.rag = { collection: spec.collection, k: spec.k ?? DEFAULT_RAG_K }
  }
  return fields
}

/**
 * Write a new task into `todo`: the whole entry in one transaction, as the server checks
 * each entry when it appears under its key (protocol section 3).
 * @param {Y.Doc} doc
 * @param {Record<string, any>} fields
 */
export function writeTask (doc, fields) {
  doc.transact(() => {
    const entry = new Y.Map()
    doc.getMap('todo').set(fields.id, entry)
    for (const [key, value] of Object.entries(fields)) entry.set(key, value)
  })
}

/**
 * Follows the streamed text of one task across moves and retries (protocol section 5), as
 * the Python SDK's `stream()` and the OpenAI endpoint do.
 *
 * `update(text, attempt)` returns what is new since the last call, or '' when nothing is. A
 * retried task restarts its output empty: nothing is new while the new text repeats what was
 * shown, and it goes on once the new text extends it; a new text that differs from what was
 * shown (a diverging retry) throws `StreamRestartedError`.
 */
export class OutputFollower {
  /** @param {string} taskId */
  constructor (taskId = '') {
    this.taskId = taskId
    this.shown = ''
  }

  /** @param {string | null} text @param {number} [attempt] the entry's attempt */
  update (text, attempt = 1) {
    if (text === null) return ''
    if (text.length <= this.shown.length) {
      if (!this.shown.startsWith(text)) throw new StreamRestartedError(this.taskId, attempt)
      return ''
    }
    if (!text.startsWith(this.shown)) throw new StreamRestartedError(this.taskId, attempt)
    const chunk = text.slice(this.shown.length)
    this.shown = text
    return chunk
  }
}
