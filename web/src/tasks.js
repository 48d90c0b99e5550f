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
 * @property {Array<string | { id: string }>} [after]  tasks (ids or handles) to wait for: the
 *   task runs once all succeeded; `{{result:ID}}` (`resultRef(id)`) in its text stands for
 *   their results (protocol section 12)
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
 * @property {string[]} [after]  the tasks it waits for (protocol section 12)
 * @property {Record<string, string>} [after_results]
 * @property {string[]} [enriching]  while the server holds it back (`"after"`: its parents run)
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

/** The most tasks one task may wait for, and how task ids are spelled (as the server checks). */
export const MAX_PARENTS = 64
const TASK_ID = /^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$/
const RESULT_REF = /\{\{result:([A-Za-z0-9][A-Za-z0-9_.:-]{0,127})\}\}/g

/**
 * The text that stands for task `id`'s result in a task that waits for it: `{{result:ID}}`.
 * @param {string | { id: string }} task  an id or a handle
 */
export function resultRef (task) {
  return `{{result:${typeof task === 'string' ? task : task.id}}}`
}

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
  if (request.after !== undefined) fields.after = parentIds(request, fields.id)
  if (rag !== undefined) {
    const spec = typeof rag === 'string' ? { collection: rag } : rag
    if (!spec.collection) throw new TypeError('`rag` needs a collection name')
    fields.rag = { collection: spec.collection, k: spec.k ?? DEFAULT_RAG_K }
  }
  return fields
}

/**
 * The ids of a request's `after`, checked as the server checks them (protocol section 12).
 * @param {TaskRequest} request
 * @param {string} id  the new task's
 * @returns {string[]}
 */
function parentIds (request, id) {
  if (!Array.isArray(request.after)) throw new TypeError('`after` must be an array of task ids')
  const after = request.after.map((p) => (typeof p === 'string' ? p : p?.id))
  if (after.length > MAX_PARENTS) throw new TypeError(`a task waits for at most ${MAX_PARENTS} tasks`)
  for (const parent of after) {
    if (typeof parent !== 'string' || !TASK_ID.test(parent)) throw new TypeError(`not a task id in \`after\`: ${parent}`)
  }
  if (new Set(after).size !== after.length) throw new TypeError('`after` names a task twice')
  if (after.includes(id)) throw new TypeError('a task cannot wait for itself')
  const texts = request.messages ? request.messages.map((m) => String(m.content)) : [String(request.prompt)]
  for (const text of texts) {
    for (const [, ref] of text.matchAll(RESULT_REF)) {
      if (!after.includes(ref)) throw new TypeError(`{{result:${ref}}} refers to a task not in \`after\``)
    }
  }
  return after
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
