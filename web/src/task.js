// @ts-check
// One task followed by id: its stream, its outcome, its cancel. The Board calls `check()`
// after every change of the document; a handle never holds a Y.Map, since a move replaces the
// entry with a new one (protocol 4.2).

import { StreamRestartedError } from './errors.js'
import { Listeners } from './listeners.js'
import { OutputFollower, findTask, plainTask, writeTask } from './tasks.js'

/** @typedef {import('./tasks.js').Task} Task */
/** @typedef {(chunk: string, text: string) => void} ChunkListener */
/** @typedef {(task: Task) => void} ChangeListener */
/**
 * What a TaskHandle needs from its board.
 * @typedef {object} TaskHost
 * @property {import('yjs').Doc} doc
 * @property {(id: string) => Promise<Task | null>} lookup  the task from the archive
 * @property {(handle: TaskHandle) => void} release  the task is done: stop calling check()
 */

export class TaskHandle {
  /**
   * @param {TaskHost} host
   * @param {string} id
   * @param {Record<string, any> | null} fields  the request, when this client wrote it (to
   *   write it again should the board move to a new document before the server had it)
   */
  constructor (host, id, fields) {
    this.id = id
    this._host = host
    this._fields = fields
    this._follower = new OutputFollower(id)
    /** @type {Listeners<[string, string]>} */
    this._chunkListeners = new Listeners()
    /** @type {Listeners<[StreamRestartedError]>} */
    this._restartListeners = new Listeners()
    /** @type {StreamRestartedError | null} the stream ended on a diverging retry */
    this.restarted = null
    /** @type {Listeners<[Task]>} */
    this._changeListeners = new Listeners()
    this._wantCancel = false
    this._isAccepted = fields === null
    /** @type {Task | null} */
    this._last = null
    /** @type {(value: Task) => void} */
    this._resolve = () => {}
    /** @type {(error: Error) => void} */
    this._reject = () => {}
    /** @type {Promise<Task>} */
    this._result = new Promise((resolve, reject) => { this._resolve = resolve; this._reject = reject })
    this._result.catch(() => {}) // nobody may be waiting; result() hands the rejection on
    /** @type {() => void} */
    this._acceptedResolve = () => {}
    /**
     * Resolves once the server has committed the task to disk (or to memory with
     * `--no-persist`): from then on it survives a restart of the server.
     * @type {Promise<void>}
     */
    this.accepted = this._isAccepted
      ? Promise.resolve()
      : new Promise((resolve) => { this._acceptedResolve = resolve })
  }

  /** The task as last seen (a plain object), or null before it was seen. */
  get task () {
    return this._last
  }

  /**
   * Call `listener(chunk, text)` for each new piece of streamed text; `text` is all of it so
   * far. After a retry nothing is repeated: the new attempt's text shows once it goes beyond
   * what was already shown. A retry whose text differs ends the stream (see `onRestart`).
   * @param {ChunkListener} listener
   * @returns {() => void} unsubscribe
   */
  onChunk (listener) {
    return this._chunkListeners.add(listener)
  }

  /**
   * Call `listener(error)` when a retry produced text that differs from what was streamed
   * (protocol section 5): no chunk follows, the task runs on, and `result()` still resolves
   * with its final text. The error is also kept in `restarted`.
   * @param {(error: StreamRestartedError) => void} listener
   * @returns {() => void} unsubscribe
   */
  onRestart (listener) {
    return this._restartListeners.add(listener)
  }

  /**
   * Call `listener(task)` after every change of the task (column, fields, output).
   * @param {ChangeListener} listener
   * @returns {() => void} unsubscribe
   */
  onChange (listener) {
    return this._changeListeners.add(listener)
  }

  /**
   * The task once it is in `done`, whatever its `status` (succeeded, failed or cancelled; see
   * `error` for why it failed). Rejects only when the board stops first (closed or refused).
   * @returns {Promise<Task>}
   */
  result () {
    return this._result
  }

  /**
   * Ask for the task to stop, in whatever column it is (protocol 4.5). The flag is written
   * again whenever a move lost it, until the task is in `done`; `result()` then tells how it
   * ended (`cancelled`, or `succeeded` if it finished first).
   */
  cancel () {
    this._wantCancel = true
    this.check()
  }

  /** Follow the task after a change of the document. */
  check () {
    const found = findTask(this._host.doc, this.id)
    if (found === null) return
    if (this._wantCancel && found.column !== 'done' && found.entry.get('cancel') !== true) {
      found.entry.set('cancel', true)
    }
    const task = plainTask(found.column, found.entry)
    if (this.restarted === null) this._followOutput(task)
    this._last = task
    this._changeListeners.emit(task)
    if (task.column === 'done') this._finish(task)
  }

  /** @param {Task} task */
  _followOutput (task) {
    let chunk
    try {
      chunk = this._follower.update(task.output, task.attempt ?? 1)
    } catch (error) {
      if (!(error instanceof StreamRestartedError)) throw error
      this.restarted = error
      this._restartListeners.emit(error)
      return
    }
    if (chunk) this._chunkListeners.emit(chunk, this._follower.shown)
  }

  /**
   * After the board moved to a new document (protocol section 9): write the task again if
   * the server never had it; ask the archive if it finished meanwhile.
   */
  async recover () {
    if (findTask(this._host.doc, this.id) !== null) return this.check()
    if (!this._isAccepted && this._fields !== null) return writeTask(this._host.doc, this._fields)
    const archived = await this._host.lookup(this.id)
    if (archived !== null && archived.status !== undefined) this._finish(archived)
  }

  /** The server committed the task (durability request answered). */
  accept () {
    this._isAccepted = true
    this._acceptedResolve()
  }

  get isAccepted () {
    return this._isAccepted
  }

  /** @param {Error} error */
  fail (error) {
    this._reject(error)
  }

  /** @param {Task} task */
  _finish (task) {
    this._last = task
    this.accept() // a task in done was on the server
    this._resolve(task)
    this._host.release(this)
  }
}
