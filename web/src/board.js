// @ts-check
// A connection to one board: a Y.Doc kept in sync by a stock y-websocket provider, plus what
// the protocol asks of a long-lived client on top (docs/protocol.md): start over with a new
// document when a write is refused (the tasks it may have held fail) or the board rotates
// (4409), stop on a fatal close, tell a bad token from a server that is down, ask the server
// to confirm tasks are durable (message type 100).

import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import * as encoding from 'lib0/encoding'
import * as decoding from 'lib0/decoding'

import {
  AuthError, CLOSE_BOARD_ROTATED, ConnectError, FATAL_CLOSE_CODES, KanbanmeshError, REFUSAL_CLOSE_CODES,
  RefusedError
} from './errors.js'
import { lookupTask, whoami } from './http.js'
import { Listeners } from './listeners.js'
import { TaskHandle } from './task.js'
import { findTask, requestFields, snapshot, writeTask } from './tasks.js'

/** kanbanmesh's durability request and answer: `[100, token]` (protocol section 1). */
const MESSAGE_DURABLE = 100
const CLOSE_ABNORMAL = 1006 // what a browser reports for a refused upgrade (it hides the status)

/** Close codes the provider must not simply reconnect after (we decide: see `_open`). */
function isTerminal (/** @type {number} */ code) {
  return code === CLOSE_BOARD_ROTATED || REFUSAL_CLOSE_CODES.includes(code) || FATAL_CLOSE_CODES.includes(code)
}

/** @typedef {import('./tasks.js').Task} Task */
/** @typedef {import('./tasks.js').TaskRequest} TaskRequest */
/** @typedef {import('./tasks.js').Snapshot} Snapshot */
/** @typedef {import('./http.js').Identity} Identity */
/**
 * @typedef {object} Worker  A worker's awareness state (protocol section 6).
 * @property {number} clientId
 * @property {string} id
 * @property {string} name
 * @property {string[]} models
 * @property {number} slots
 * @property {'ready' | 'working' | 'draining'} state
 * @property {string[]} tasks  ids it is running
 * @property {string} [engine]
 * @property {string} [version]
 */
/**
 * @typedef {object} Status
 * @property {'connecting' | 'connected' | 'reconnecting' | 'refused' | 'closed'} status
 * @property {KanbanmeshError} [error]  with `refused`: why (AuthError or RefusedError)
 */
/**
 * @typedef {object} BoardOptions
 * @property {string} [token]  sent as `?token=`; needed when the server has auth on
 * @property {string} [owner]  written into tasks; default: the token's subject, else "js"
 * @property {typeof WebSocket} [WebSocket]  a WebSocket class (in node < 22: the `ws` package)
 * @property {number} [timeoutMs]  how long `connect` waits for the first sync (default 15000)
 */

export class Board {
  /**
   * Use `connect()`; this constructor starts connecting at once.
   * @param {string} url  the server, `ws://HOST:PORT`
   * @param {string} name  the board
   * @param {Identity} identity  what the server made of the token
   * @param {BoardOptions} options
   */
  constructor (url, name, identity, options = {}) {
    this.url = url.replace(/\/+$/, '')
    this.name = name
    this.identity = identity
    this.owner = identity.subject ?? options.owner ?? 'js'
    this._token = options.token || undefined
    this._WebSocket = options.WebSocket ?? globalThis.WebSocket
    if (this._WebSocket === undefined) {
      throw new KanbanmeshError('no WebSocket class: pass { WebSocket } (in node < 22: `import WebSocket from "ws"`)')
    }
    this._presence = { role: 'client', id: `js-${Math.random().toString(16).slice(2, 14)}`, name: this.owner }
    /** @type {Status} */
    this.status = { status: 'connecting' }
    /** @type {Map<string, TaskHandle>} tasks followed until they are done */
    this._handles = new Map()
    /** @type {Map<number, TaskHandle>} durability requests awaiting their answer */
    this._acks = new Map()
    this._ackSeq = 0
    this._probing = false
    this._recovering = false
    /** @type {Listeners<[Board]>} */
    this._boardListeners = new Listeners()
    /** @type {Listeners<[Worker[]]>} */
    this._workerListeners = new Listeners()
    /** @type {Listeners<[Status]>} */
    this._statusListeners = new Listeners()
    /** @type {Listeners<[RefusedError]>} */
    this._refusalListeners = new Listeners()
    this._onUpdate = () => {
      for (const handle of [...this._handles.values()]) handle.check()
      this._boardListeners.emit(this)
    }
    this._onAwareness = () => this._workerListeners.emit(this.workers())
    /** @type {Y.Doc} */
    this.doc = new Y.Doc()
    /** @type {WebsocketProvider} */
    this._provider = this._open(this.doc)
  }

  /**
   * Submit a task; it is written at once (and sent as soon as the connection allows).
   * @param {TaskRequest} request
   * @returns {TaskHandle}
   */
  submit (request) {
    this._checkOpen()
    const fields = requestFields(request, this.owner)
    if (findTask(this.doc, fields.id) !== null) throw new TypeError(`task ${fields.id} exists already`)
    const handle = new TaskHandle(this._host(), fields.id, fields)
    this._handles.set(handle.id, handle)
    writeTask(this.doc, fields)
    this._askDurable(handle)
    return handle
  }

  /**
   * Follow a task by id (one this client did not submit, say); its result comes from the
   * archive when it has already left the board.
   * @param {string} id
   * @returns {TaskHandle}
   */
  task (id) {
    this._checkOpen()
    const followed = this._handles.get(id)
    if (followed) return followed
    const handle = new TaskHandle(this._host(), id, null)
    this._handles.set(id, handle)
    handle.check()
    if (this.status.status === 'connected' && handle.task === null) void this._recover(handle)
    return handle
  }

  /** Every task on the board by column (protocol section 2), as plain objects. */
  snapshot () {
    return snapshot(this.doc)
  }

  /** The workers present now, from awareness, sorted by name. @returns {Worker[]} */
  workers () {
    /** @type {Worker[]} */
    const found = []
    for (const [clientId, state] of this._provider.awareness.getStates()) {
      if (state?.role === 'worker') found.push(/** @type {Worker} */ ({ ...state, clientId }))
    }
    return found.sort((a, b) => String(a.name).localeCompare(String(b.name)) || a.clientId - b.clientId)
  }

  /**
   * Call `listener(board)` after every change of the board (call `board.snapshot()` for the
   * tasks: a board that streams calls you often, so render at your own pace).
   * @param {(board: Board) => void} listener
   * @returns {() => void} unsubscribe
   */
  onBoardChange (listener) {
    return this._boardListeners.add(listener)
  }

  /**
   * Call `listener(workers)` whenever awareness changes.
   * @param {(workers: Worker[]) => void} listener
   * @returns {() => void} unsubscribe
   */
  onWorkersChange (listener) {
    return this._workerListeners.add(listener)
  }

  /**
   * Call `listener(status)` when the connection changes: connected, reconnecting (the
   * provider retries by itself), refused (for good: see `status.error`), closed.
   * @param {(status: Status) => void} listener
   * @returns {() => void} unsubscribe
   */
  onStatus (listener) {
    return this._statusListeners.add(listener)
  }

  /**
   * Call `listener(error)` when the server refused a write: the board has started over with a
   * new document (status `reconnecting`, then `connected`), and the tasks the write may have
   * held (those not yet accepted) rejected with `error`.
   * @param {(error: RefusedError) => void} listener
   * @returns {() => void} unsubscribe
   */
  onRefused (listener) {
    return this._refusalListeners.add(listener)
  }

  /**
   * Resolve once synced with the server; reject when refused, closed or after `timeoutMs`.
   * @param {number} timeoutMs
   * @returns {Promise<void>}
   */
  whenConnected (timeoutMs) {
    return new Promise((resolve, reject) => {
      const settle = (/** @type {Status} */ status) => {
        if (status.status === 'connected') resolve()
        else if (status.status === 'refused' || status.status === 'closed') {
          reject(status.error ?? new KanbanmeshError('board closed'))
        } else return
        clearTimeout(timer)
        off()
      }
      const timer = setTimeout(() => {
        off()
        reject(new ConnectError(`no sync with ${this.url}/${this.name} within ${timeoutMs} ms`))
      }, timeoutMs)
      const off = this.onStatus(settle)
      settle(this.status)
    })
  }

  /** Disconnect for good; tasks still followed reject their `result()`. */
  close () {
    if (this.status.status === 'closed') return
    this._teardown(this._provider)
    this._setStatus({ status: 'closed' })
    this._failAll(new KanbanmeshError('board closed'))
  }

  /** @param {Y.Doc} doc */
  _open (doc) {
    const provider = new WebsocketProvider(this.url, this.name, doc, {
      connect: false,
      params: this._token ? { token: this._token } : {},
      WebSocketPolyfill: this._WebSocket,
      disableBc: true, // every tab is its own client, with its own connection and owner
      shouldReconnect: (event) => !isTerminal(event.code)
    })
    provider.messageHandlers[MESSAGE_DURABLE] = (_encoder, decoder) => {
      const token = decoding.readVarUint(decoder)
      this._acks.get(token)?.accept()
      this._acks.delete(token)
    }
    provider.awareness.setLocalState(this._presence)
    provider.awareness.on('change', this._onAwareness)
    provider.on('sync', (/** @type {boolean} */ synced) => { if (synced) this._onSynced() })
    provider.on('status', ({ status }) => {
      if (status === 'disconnected' && this.status.status === 'connected') this._setStatus({ status: 'reconnecting' })
    })
    provider.on('connection-close', (event) => {
      if (event?.code === CLOSE_ABNORMAL) void this._probeToken()
    })
    provider.on('closed', ({ code, reason }) => {
      if (code === CLOSE_BOARD_ROTATED) this._rotate()
      else if (REFUSAL_CLOSE_CODES.includes(code)) {
        this._startOver(new RefusedError(`the server refused a write: ${code} ${reason}`, code))
      } else this._refuse(new RefusedError(`the server closed the connection for good: ${code} ${reason}`, code))
    })
    doc.on('update', this._onUpdate)
    provider.connect()
    return provider
  }

  _onSynced () {
    this._setStatus({ status: 'connected' })
    for (const handle of this._handles.values()) {
      if (!handle.isAccepted) this._askDurable(handle)
    }
    if (this._recovering) {
      this._recovering = false
      for (const handle of [...this._handles.values()]) void this._recover(handle)
    }
    this._onUpdate()
  }

  /** The board moved to a new generation: start over with a new, empty document (protocol 9). */
  _rotate () {
    this._teardown(this._provider)
    this.doc = new Y.Doc()
    this._recovering = true
    this._setStatus({ status: 'reconnecting' })
    this._provider = this._open(this.doc)
    this._onUpdate()
  }

  /**
   * The server refused a write (protocol section 1): our document holds it and would send it
   * again at every sync. Tasks not yet accepted fail with the refusal (theirs may be the
   * refused write); the rest is followed on a new document, as after a rotation.
   * @param {RefusedError} error
   */
  _startOver (error) {
    for (const handle of [...this._handles.values()]) {
      if (handle.isAccepted) continue
      this._handles.delete(handle.id)
      handle.fail(error)
    }
    this._rotate()
    this._refusalListeners.emit(error)
  }

  /** @param {TaskHandle} handle */
  async _recover (handle) {
    try {
      await handle.recover()
    } catch (err) {
      // the archive could not be asked (server going away): the next sync tries again
      if (!(err instanceof KanbanmeshError)) throw err
      this._recovering = true
    }
  }

  /** The upgrade failed: a bad token, or a server that is away? Only HTTP can tell. */
  async _probeToken () {
    if (this._probing || this.status.status === 'refused' || this.status.status === 'closed') return
    this._probing = true
    try {
      await whoami(this.url, this.name, this._token)
    } catch (err) {
      if (err instanceof AuthError) this._refuse(err)
      // otherwise the server is away: the provider keeps trying
    } finally {
      this._probing = false
    }
  }

  /** @param {KanbanmeshError} error */
  _refuse (error) {
    this._teardown(this._provider)
    this._setStatus({ status: 'refused', error })
    this._failAll(error)
  }

  /** @param {WebsocketProvider} provider */
  _teardown (provider) {
    provider.doc.off('update', this._onUpdate)
    provider.awareness.off('change', this._onAwareness)
    provider.destroy()
    provider.awareness.destroy() // its renewal timer would otherwise live on
    this._acks.clear()
  }

  /** @param {TaskHandle} handle */
  _askDurable (handle) {
    const ws = this._provider.ws
    if (!this._provider.wsconnected || ws === null) return // asked again on the next sync
    const token = ++this._ackSeq
    this._acks.set(token, handle)
    const encoder = encoding.createEncoder()
    encoding.writeVarUint(encoder, MESSAGE_DURABLE)
    encoding.writeVarUint(encoder, token)
    ws.send(encoding.toUint8Array(encoder))
  }

  /** @returns {import('./task.js').TaskHost} */
  _host () {
    // eslint-disable-next-line @typescript-eslint/no-this-alias
    const board = this
    return {
      get doc () { return board.doc },
      lookup: async (id) => {
        const found = await lookupTask(board.url, board.name, board._token, id)
        if (found === null) return null
        return /** @type {Task} */ ({ output: null, ...found.entry, column: 'done' })
      },
      release: (handle) => { board._handles.delete(handle.id) }
    }
  }

  /** @param {Status} status */
  _setStatus (status) {
    if (status.status === this.status.status) return
    this.status = status
    this._statusListeners.emit(status)
  }

  /** @param {Error} error */
  _failAll (error) {
    for (const handle of this._handles.values()) handle.fail(error)
    this._handles.clear()
  }

  _checkOpen () {
    if (this.status.status === 'closed' || this.status.status === 'refused') {
      throw this.status.error ?? new KanbanmeshError('board closed')
    }
  }
}

/**
 * Connect to `board` on the server at `url` (`ws://HOST:PORT`) and wait for the first sync.
 *
 * Rejects with AuthError when the server refuses the token or the board, ConnectError when it
 * cannot be reached or no sync came within `timeoutMs`.
 * @param {string} url
 * @param {string} [board]
 * @param {BoardOptions} [options]
 * @returns {Promise<Board>}
 */
export async function connect (url, board = 'default', options = {}) {
  const identity = await whoami(url, board, options.token || undefined)
  const connected = new Board(url, board, identity, options)
  try {
    await connected.whenConnected(options.timeoutMs ?? 15000)
  } catch (err) {
    connected.close()
    throw err
  }
  return connected
}
