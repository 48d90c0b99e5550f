// @ts-check
// The sidebar's link to its board: connects with the kanbanmesh library, retries while the
// server is away (at start, or after a restart), stops and says why when the token is
// refused, and starts over when the settings change. One state, for the status line.

import { AuthError, RefusedError, connect } from '../../../../web/src/index.js'
import { Listeners } from '../../../../web/src/listeners.js'

/** @typedef {import('../../../../web/src/index.js').Board} Board */
/** @typedef {import('../../../../web/src/board.js').Worker} Worker */
/** @typedef {import('./settings.js').Settings} Settings */
/**
 * @typedef {'connecting' | 'connected' | 'reconnecting' | 'refused' | 'stopped'} ConnectionPhase
 *   connecting: first attempt; connected: synced with the board; reconnecting: the server is
 *   away and we keep trying; refused: the server refused the token (waits for new settings);
 *   stopped: `stop()` was called.
 */
/**
 * @typedef {object} ConnectionState
 * @property {ConnectionPhase} phase
 * @property {string} message  one sentence for the user
 * @property {string} [identity]  with `connected`: who we are on the board
 */
/**
 * @typedef {object} ConnectionOptions
 * @property {typeof WebSocket} [WebSocket]  in node < 22: the `ws` package
 * @property {number[]} [retryMs]  waits between attempts to reach the server
 * @property {number} [timeoutMs]  how long one attempt waits for the first sync
 * @property {(serverUrl: string) => Promise<boolean>} [mayReach]  whether the browser lets us
 *   reach the server (its host permission); asked when the server cannot be reached
 * @property {string} [owner]  tasks' owner on a server without tokens
 */

const RETRY_MS = [500, 1000, 2000, 4000, 5000]

export class Connection {
  /**
   * @param {Settings} settings
   * @param {ConnectionOptions} [options]
   */
  constructor (settings, options = {}) {
    this.settings = settings
    this._options = options
    this._retryMs = options.retryMs ?? RETRY_MS
    /** @type {Board | null} the board once connected (it reconnects by itself after that) */
    this.board = null
    /** @type {ConnectionState} */
    this.state = { phase: 'stopped', message: 'Not started.' }
    this._attempt = 0
    this._generation = 0 // bumped by every (re)start: late answers of an older one are dropped
    /** @type {ReturnType<typeof setTimeout> | undefined} */
    this._timer = undefined
    /** @type {(() => void)[]} */
    this._offs = []
    /** @type {Listeners<[ConnectionState]>} */
    this._stateListeners = new Listeners()
    /** @type {Listeners<[Worker[]]>} */
    this._workerListeners = new Listeners()
    /** @type {Listeners<[Board]>} */
    this._boardListeners = new Listeners()
  }

  /** Connect with the current settings (again, if connected already). */
  start () {
    this._close()
    const generation = ++this._generation
    this._attempt = 0
    this._setState({ phase: 'connecting', message: `Connecting to ${this._where()}…` })
    void this._try(generation)
  }

  /** Use new settings: reconnect if they change where or who we are. @param {Settings} settings */
  update (settings) {
    const before = this.settings
    this.settings = settings
    const same = before.serverUrl === settings.serverUrl && before.board === settings.board && before.token === settings.token
    if (!same || this.state.phase === 'refused' || this.state.phase === 'stopped') this.start()
  }

  /** Disconnect for good (until `start()`). */
  stop () {
    this._close()
    this._generation++
    this._setState({ phase: 'stopped', message: 'Disconnected.' })
  }

  /** The workers present now (none while not connected). @returns {Worker[]} */
  workers () {
    return this.board?.workers() ?? []
  }

  /** @param {(state: ConnectionState) => void} listener @returns {() => void} unsubscribe */
  onState (listener) {
    return this._stateListeners.add(listener)
  }

  /** @param {(workers: Worker[]) => void} listener @returns {() => void} unsubscribe */
  onWorkers (listener) {
    return this._workerListeners.add(listener)
  }

  /**
   * Call `listener(board)` each time a new board is connected (at start, after new settings,
   * after the server refused a write and we started over).
   * @param {(board: Board) => void} listener
   * @returns {() => void} unsubscribe
   */
  onBoard (listener) {
    return this._boardListeners.add(listener)
  }

  /** @param {number} generation */
  async _try (generation) {
    const { serverUrl, board: name, token } = this.settings
    let board
    try {
      board = await connect(serverUrl, name, {
        token: token || undefined,
        owner: this._options.owner,
        WebSocket: this._options.WebSocket,
        timeoutMs: this._options.timeoutMs ?? 10000
      })
    } catch (err) {
      if (generation !== this._generation) return
      if (err instanceof AuthError) return this._refused(err)
      return this._retry(generation, await this._whyUnreachable(/** @type {Error} */ (err)))
    }
    if (generation !== this._generation) return board.close()
    this._attempt = 0
    this.board = board
    this._offs = [
      board.onStatus((status) => this._onStatus(generation, status)),
      board.onWorkersChange((workers) => this._workerListeners.emit(workers))
    ]
    this._setState(this._connectedState(board))
    this._boardListeners.emit(board)
    this._workerListeners.emit(board.workers())
  }

  /**
   * @param {number} generation
   * @param {import('../../../../web/src/board.js').Status} status
   */
  _onStatus (generation, { status, error }) {
    if (generation !== this._generation || this.board === null) return
    if (status === 'connected') {
      this._setState(this._connectedState(this.board))
    } else if (status === 'reconnecting') {
      this._setState({ phase: 'reconnecting', message: `Lost the connection to ${this._where()}; reconnecting…` })
      this._workerListeners.emit([])
    } else if (status === 'refused' && error instanceof AuthError) {
      this._refused(error)
    } else if (status === 'refused' && error instanceof RefusedError) {
      // The server refused one of our writes; that change stays in this document, so start
      // over with a fresh one (docs/protocol.md section 3).
      this._close()
      this._retry(generation, `The server refused a change (${error.message}); starting over…`)
    }
  }

  /** @param {AuthError} error */
  _refused (error) {
    this._close()
    const message = this.settings.token
      ? `The server refused the token: ${error.message}. Set another one in the options.`
      : `The server wants an access token (${error.message}). Set one in the options.`
    this._setState({ phase: 'refused', message })
  }

  /** @param {number} generation @param {string} message */
  _retry (generation, message) {
    const wait = this._retryMs[Math.min(this._attempt++, this._retryMs.length - 1)]
    this._setState({ phase: 'reconnecting', message })
    clearTimeout(this._timer)
    this._timer = setTimeout(() => { if (generation === this._generation) void this._try(generation) }, wait)
  }

  /** A sentence for an attempt that failed without a refusal. @param {Error} error */
  async _whyUnreachable (error) {
    const allowed = await this._options.mayReach?.(this.settings.serverUrl).catch(() => true)
    if (allowed === false) {
      return `Firefox does not let the extension reach ${new URL(this.settings.serverUrl).hostname}: open the options and save them to allow it.`
    }
    return `Cannot reach ${this._where()} (${error.message}); retrying…`
  }

  /** @param {Board} board @returns {ConnectionState} */
  _connectedState (board) {
    const identity = board.identity.auth ? `${board.owner} (${board.identity.role})` : board.owner
    return { phase: 'connected', message: `Connected to ${this._where()}.`, identity }
  }

  _where () {
    return `${this.settings.serverUrl}/${this.settings.board}`
  }

  _close () {
    clearTimeout(this._timer)
    for (const off of this._offs) off()
    this._offs = []
    this.board?.close()
    this.board = null
  }

  /** @param {ConnectionState} state */
  _setState (state) {
    const same = state.phase === this.state.phase && state.message === this.state.message && state.identity === this.state.identity
    if (same) return
    this.state = state
    this._stateListeners.emit(state)
  }
}
