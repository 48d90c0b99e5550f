// Helpers shared by the kanbanmesh JS test clients (submit, watch, workers, garbage).
//
// Only stock `yjs`, `y-websocket` and `ws` are used: these scripts exist to prove that an
// unmodified Yjs client can talk to a kanbanmesh server, so nothing here may speak anything but
// the plain y-websocket protocol.
//
// Every script prints JSON lines on stdout (one object per line) and diagnostics on stderr.

import { parseArgs } from 'node:util'
import WebSocket from 'ws'
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'

export { Y }

// The four root maps of a board, in the order a task travels through them.
export const COLUMNS = ['todo', 'prepared', 'doing', 'done']

// Exit codes shared by the scripts.
export const EXIT_OK = 0
export const EXIT_USAGE = 1
export const EXIT_TASK_NOT_SUCCEEDED = 2
export const EXIT_TIMEOUT = 3

const COMMON_OPTIONS = {
  url: { type: 'string' },
  board: { type: 'string', default: 'default' },
  token: { type: 'string' },
  'timeout-ms': { type: 'string', default: '20000' },
  verbose: { type: 'boolean', short: 'v', default: false },
  help: { type: 'boolean', short: 'h', default: false }
}

/**
 * Parse the command line: the common options plus `extra`, `--url` required.
 * Prints `usage` and exits 1 on a bad command line.
 */
export function parseCli (usage, extra = {}) {
  let values
  try {
    ;({ values } = parseArgs({ options: { ...COMMON_OPTIONS, ...extra }, strict: true }))
  } catch (err) {
    process.stderr.write(`${err.message}\n${usage}\n`)
    process.exit(EXIT_USAGE)
  }
  if (values.help) {
    process.stdout.write(usage + '\n')
    process.exit(EXIT_OK)
  }
  if (!values.url) {
    process.stderr.write(`--url is required\n${usage}\n`)
    process.exit(EXIT_USAGE)
  }
  values.timeoutMs = intOption(values, 'timeout-ms', usage)
  if (values.token === undefined && process.env.KANBANMESH_TOKEN) {
    values.token = process.env.KANBANMESH_TOKEN
  }
  return values
}

/** An integer option (or undefined when absent); exits 1 when it is not a whole number >= 0. */
export function intOption (values, name, usage) {
  const raw = values[name]
  if (raw === undefined) return undefined
  const n = Number(raw)
  if (!Number.isInteger(n) || n < 0) {
    process.stderr.write(`--${name} must be a whole number >= 0, got ${JSON.stringify(raw)}\n${usage}\n`)
    process.exit(EXIT_USAGE)
  }
  return n
}

/** Print one JSON line on stdout. */
export function emit (obj) {
  process.stdout.write(JSON.stringify(obj) + '\n')
}

/** A logger to stderr that only speaks with --verbose. */
export function makeLog (verbose) {
  return (...parts) => {
    if (verbose) process.stderr.write(`[${new Date().toISOString()}] ${parts.join(' ')}\n`)
  }
}

/** Open a stock WebsocketProvider on `url`/`board`, exactly as the contract spells it. */
export function connect ({ url, board, token }) {
  const doc = new Y.Doc()
  const provider = new WebsocketProvider(url, board, doc, {
    WebSocketPolyfill: WebSocket,
    params: token ? { token } : {}
  })
  return { doc, provider }
}

/** Resolve once the provider has synced with the server. */
export function waitSynced (provider) {
  if (provider.synced) return Promise.resolve()
  return new Promise((resolve) => {
    const onSync = (synced) => {
      if (synced) {
        provider.off('sync', onSync)
        resolve()
      }
    }
    provider.on('sync', onSync)
  })
}

/**
 * Destroy the provider, give its socket a moment to close cleanly, then exit with `code`.
 * Never returns.
 */
let shuttingDown = false
/**
 * Connect, report connection trouble, and wait for the first sync; on timeout, print a
 * `{"event":"timeout","stage":"sync"}` line for task `id` and exit 3.
 */
export async function connectSynced (opts, id, log) {
  const { doc, provider } = connect(opts)
  reportConnectionTrouble(provider, log)
  const deadline = setTimeout(() => {
    emit({ event: 'timeout', id, column: null, streamed: '', stage: 'sync' })
    shutdown(provider, EXIT_TIMEOUT)
  }, opts.timeoutMs)
  await waitSynced(provider)
  clearTimeout(deadline)
  log(`synced with ${provider.url}`)
  return { doc, provider }
}

export async function shutdown (provider, code) {
  if (shuttingDown) return new Promise(() => {}) // the first call decides the exit code
  shuttingDown = true
  process.exitCode = code // should node run out of work before process.exit below
  if (provider) {
    const ws = provider.ws
    const closed = ws && ws.readyState !== WebSocket.CLOSED
      ? new Promise((resolve) => {
        ws.once('close', resolve)
        setTimeout(resolve, 500)
      })
      : Promise.resolve()
    try {
      provider.destroy()
      provider.awareness.destroy() // its renewal timer would keep node alive
    } catch (err) {
      process.stderr.write(`provider.destroy() failed: ${err}\n`)
    }
    await closed
  }
  await new Promise((resolve) => process.stdout.write('', resolve))
  process.exit(code)
}

/** A plain JS value of a task field (Y types turned into JSON). */
export function plain (value) {
  if (value instanceof Y.AbstractType) return value.toJSON()
  return value === undefined ? null : value
}

/**
 * Find the live copy of task `id`: the map it sits in and the Y.Map entry, or null.
 *
 * A move writes a new copy into the next column and deletes the old one, possibly in separate
 * transactions, so for a moment a task may sit in two columns. The server's rule picks the copy
 * that counts: `done` wins; among the rest the highest `attempt`; a tie goes to the later column.
 */
export function findEntry (doc, id) {
  let best = null
  COLUMNS.forEach((column, index) => {
    const entry = doc.getMap(column).get(id)
    if (!(entry instanceof Y.Map)) return
    const attempt = Number(entry.get('attempt') ?? 0) || 0
    const key = [column === 'done' ? 1 : 0, attempt, index]
    if (best === null || compareKeys(key, best.key) > 0) best = { column, entry, key }
  })
  return best && { column: best.column, entry: best.entry }
}

function compareKeys (a, b) {
  for (let i = 0; i < a.length; i++) {
    if (a[i] !== b[i]) return a[i] - b[i]
  }
  return 0
}

/** The text of an entry's `output` (a Y.Text; a plain string tolerated), or null. */
export function outputText (entry) {
  const output = entry.get('output')
  if (output instanceof Y.Text) return output.toString()
  if (typeof output === 'string') return output
  return null
}

/**
 * Follows the `output` of one task and reports what is new.
 *
 * `update(text)` returns the suffix that has not been printed yet, or '' when there is none.
 * When a retried task restarts its output, nothing is printed until the new text has
 * everything already printed as its prefix and goes beyond it.
 */
export class OutputFollower {
  constructor () {
    this.printed = ''
  }

  update (text) {
    if (text === null || text.length <= this.printed.length) return ''
    if (!text.startsWith(this.printed)) return ''
    const chunk = text.slice(this.printed.length)
    this.printed = text
    return chunk
  }
}

/** The `done` JSON line for a finished entry. */
export function doneEvent (id, entry, streamed) {
  return {
    event: 'done',
    id,
    status: plain(entry.get('status')),
    result: plain(entry.get('result')),
    streamed,
    error: plain(entry.get('error')),
    timings: plain(entry.get('timings')),
    usage: plain(entry.get('usage')),
    attempt: plain(entry.get('attempt')),
    worker: plain(entry.get('worker'))
  }
}

/**
 * Follow task `id` until it lands in `done`, emitting `chunk` lines as its output grows.
 *
 * Returns a promise of `{ entry, streamed }` once the task is in `done`, or of null when
 * `timeoutMs` ran out. `onChange({ column, entry, streamed })` is called after every change
 * seen, `streamed` being all the text printed so far.
 */
export function followTask (doc, id, { timeoutMs, log = () => {}, onChange = () => {} }) {
  return new Promise((resolve) => {
    const follower = new OutputFollower()
    let lastColumn = null
    let lastAttempt = null
    let finished = false

    const finish = (value) => {
      if (finished) return
      finished = true
      doc.off('update', check)
      clearTimeout(timer)
      resolve(value)
    }

    function check () {
      if (finished) return
      const found = findEntry(doc, id)
      if (found === null) return
      const { column, entry } = found
      const attempt = entry.get('attempt') ?? 0
      if (column !== lastColumn || attempt !== lastAttempt) {
        log(`task ${id}: ${column} (attempt ${attempt})`)
        lastColumn = column
        lastAttempt = attempt
      }
      const chunk = follower.update(outputText(entry))
      if (chunk) emit({ event: 'chunk', text: chunk })
      onChange({ column, entry, streamed: follower.printed })
      if (column === 'done') finish({ entry, streamed: follower.printed })
    }

    const timer = setTimeout(() => {
      if (finished) return
      const found = findEntry(doc, id)
      emit({
        event: 'timeout',
        id,
        column: found ? found.column : null,
        streamed: follower.printed
      })
      finish(null)
    }, timeoutMs)

    doc.on('update', check)
    check()
  })
}

/** Report connection trouble on stderr, each distinct message once (the scripts otherwise just time out). */
export function reportConnectionTrouble (provider, log) {
  const said = new Set()
  const sayOnce = (line) => {
    if (said.has(line)) return
    said.add(line)
    process.stderr.write(line + '\n')
  }
  provider.on('status', ({ status }) => log(`provider status: ${status}`))
  provider.on('connection-error', (event) => {
    const message = event && (event.message || (event.error && event.error.message))
    sayOnce(`connection error: ${message || 'unknown'}`)
  })
  provider.on('connection-close', (event) => {
    if (event) {
      const reason = event.reason ? String(event.reason) : ''
      sayOnce(`connection closed: code=${event.code} reason=${JSON.stringify(reason)}`)
    }
  })
}
