// @ts-check
// The sidebar without its DOM: asks go to the board as tasks, their answers stream back into
// a view (the page draws it; tests record it), and the model list follows the ready workers.

import { Listeners } from '../../../../web/src/listeners.js'

/** @typedef {import('./connection.js').Connection} Connection */
/** @typedef {import('./connection.js').ConnectionState} ConnectionState */
/** @typedef {import('../../../../web/src/index.js').Board} Board */
/** @typedef {import('../../../../web/src/index.js').TaskHandle} TaskHandle */
/** @typedef {import('../../../../web/src/board.js').Worker} Worker */
/** @typedef {import('../../../../web/src/tasks.js').Task} Task */
/**
 * @typedef {'waiting' | 'queued' | 'streaming' | 'succeeded' | 'failed' | 'cancelled'} AnswerPhase
 *   waiting: not sent yet (no connection); queued: on the board, no text yet; streaming: text
 *   is coming; then how it ended.
 */
/**
 * @typedef {object} Answer  One question and its answer, as the view shows it.
 * @property {number} key  stable for the sidebar's life
 * @property {string} prompt
 * @property {string} model  '' = any
 * @property {string} [source]  the page the question came from (context menu)
 * @property {AnswerPhase} phase
 * @property {string} text  the answer so far
 * @property {string} [taskId]
 * @property {string} [worker]
 * @property {string} [error]  why it failed
 * @property {Task['timings']} [timings]
 */
/**
 * @typedef {object} ModelChoice
 * @property {string} model
 * @property {number} workers  ready workers serving it
 */
/**
 * What the controller draws on (the page implements it with the DOM, tests record it).
 * @typedef {object} SidebarView
 * @property {(state: ConnectionState) => void} showConnection
 * @property {(models: ModelChoice[]) => void} showModels  the models of the workers present
 * @property {(answer: Answer) => void} showAnswer  a new answer, or a change of one (same key)
 */
/**
 * @typedef {object} AskRequest
 * @property {string} prompt
 * @property {string} [model]  '' or absent: any worker
 * @property {string} [source]  where it came from, shown with the question
 */

export class SidebarController {
  /**
   * @param {Connection} connection
   * @param {SidebarView} view
   */
  constructor (connection, view) {
    this.connection = connection
    this.view = view
    /** @type {Answer[]} */
    this.answers = []
    /** @type {Map<number, TaskHandle>} answers on the board, not finished */
    this._handles = new Map()
    this._nextKey = 1
    /** @type {Listeners<[Answer]>} */
    this._answerListeners = new Listeners()
    this._offs = [
      connection.onState((state) => this.view.showConnection(state)),
      connection.onWorkers((workers) => this.view.showModels(readyModels(workers))),
      connection.onBoard((board) => this._sendWaiting(board))
    ]
    view.showConnection(connection.state)
    view.showModels(readyModels(connection.workers()))
  }

  /**
   * Ask a question; its answer streams into the view. Sent at once when connected, else as
   * soon as the connection is up.
   * @param {AskRequest} request
   * @returns {Answer}
   */
  ask ({ prompt, model = '', source }) {
    const text = prompt.trim()
    if (!text) throw new TypeError('Write a question first.')
    /** @type {Answer} */
    const answer = { key: this._nextKey++, prompt: text, model, phase: 'waiting', text: '' }
    if (source) answer.source = source
    this.answers.push(answer)
    const board = this.connection.board
    if (board !== null && this.connection.state.phase !== 'refused') this._send(board, answer)
    else this._show(answer)
    return answer
  }

  /** Stop an answer that is still coming. @param {number} key */
  cancel (key) {
    this._handles.get(key)?.cancel()
  }

  /**
   * Resolve with the answer once it has ended (succeeded, failed or cancelled).
   * @param {number} key
   * @returns {Promise<Answer>}
   */
  finished (key) {
    return new Promise((resolve) => {
      const check = (/** @type {Answer} */ answer) => {
        if (answer.key === key && isFinal(answer.phase)) { off(); resolve(answer) }
      }
      const off = this._answerListeners.add(check)
      const answer = this.answers.find((a) => a.key === key)
      if (answer) check({ ...answer })
    })
  }

  /** Stop following the connection (the page is closing). */
  dispose () {
    for (const off of this._offs) off()
    this._handles.clear()
  }

  /** @param {Board} board */
  _sendWaiting (board) {
    for (const answer of this.answers) {
      if (answer.phase === 'waiting') this._send(board, answer)
    }
  }

  /** @param {Board} board @param {Answer} answer */
  _send (board, answer) {
    let handle
    try {
      handle = board.submit({ prompt: answer.prompt, model: answer.model, params: { max_tokens: this.connection.settings.maxTokens } })
    } catch (err) {
      return this._end(answer, { phase: 'failed', error: `Not sent: ${/** @type {Error} */ (err).message}` })
    }
    Object.assign(answer, { phase: 'queued', taskId: handle.id })
    this._handles.set(answer.key, handle)
    handle.onChunk((_chunk, text) => {
      if (isFinal(answer.phase)) return
      Object.assign(answer, { phase: 'streaming', text })
      this._show(answer)
    })
    handle.onChange((task) => {
      if (task.worker && task.worker !== answer.worker && !isFinal(answer.phase)) {
        answer.worker = task.worker
        this._show(answer)
      }
    })
    handle.result().then(
      (task) => this._end(answer, finalFields(task)),
      (err) => this._end(answer, { phase: 'failed', error: `Lost the task: ${/** @type {Error} */ (err).message}` })
    )
    this._show(answer)
  }

  /** @param {Answer} answer @param {Partial<Answer>} fields */
  _end (answer, fields) {
    this._handles.delete(answer.key)
    Object.assign(answer, fields)
    this._show(answer)
  }

  /** @param {Answer} answer */
  _show (answer) {
    this.view.showAnswer({ ...answer })
    this._answerListeners.emit({ ...answer })
  }
}

/** @param {AnswerPhase} phase */
export function isFinal (phase) {
  return phase === 'succeeded' || phase === 'failed' || phase === 'cancelled'
}

/**
 * How a finished task shows: its result (the whole text, not only what streamed), its
 * status, and for a failure the server's reason.
 * @param {Task} task
 * @returns {Partial<Answer>}
 */
export function finalFields (task) {
  /** @type {Partial<Answer>} */
  const fields = { phase: task.status ?? 'failed', text: task.result ?? task.output ?? '', timings: task.timings }
  if (task.status === 'failed') fields.error = task.error ? `${task.error.message} (${task.error.code})` : 'the task failed'
  if (task.worker) fields.worker = task.worker
  return fields
}

/**
 * The models the present workers serve, with how many ready workers serve each (draining
 * workers take nothing new and are left out); sorted by name.
 * @param {Worker[]} workers
 * @returns {ModelChoice[]}
 */
export function readyModels (workers) {
  /** @type {Map<string, number>} */
  const counts = new Map()
  for (const worker of workers) {
    if (worker.state === 'draining') continue
    for (const model of new Set(worker.models ?? [])) counts.set(model, (counts.get(model) ?? 0) + 1)
  }
  return [...counts].map(([model, count]) => ({ model, workers: count })).sort((a, b) => a.model.localeCompare(b.model))
}
