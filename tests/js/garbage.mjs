#!/usr/bin/env node
// Write something a kanbanmesh server must refuse, with the stock provider, and report how the
// server closed the connection.
//
// Modes (--mode):
//   invalid-task     a todo entry with neither `messages` nor `prompt`, whose `id` field does not
//                    match its key (the default)
//   bad-key          a well-formed entry under a key that breaks the id pattern
//   oversize         a todo entry whose prompt is --size bytes (default 4 MiB)
//   illegal-column   a well-formed task written straight into `doing`
//   forbidden-field  a valid task in todo, then, in a second transaction, `status` set on it
//   foreign-owner    a valid task in todo whose owner is --owner (with auth on: not the
//                    token's subject)
//   deep-task        a valid todo entry whose params nest --depth levels (default 1000)
//   pose-as-worker   no write: an awareness state announcing a worker (role "worker") with id
//                    --worker-id (default js-fake-worker-<uuid>)
//   connect-only     write nothing; just report a close (e.g. a refused --token)
//
// Entries are owned by --owner (default js-garbage) and ask for --model (default "": any).
//
// The first close from the server is the answer, unless --expect-close CODE and/or
// --expect-reason TEXT (a substring) are given: then a close that does not match is reported
// and the stock provider carries on as it would (it reconnects and sends its document and
// awareness again, unless the code is one it gives up on), until a matching close.
// --resends N: after a matching close the provider reconnects anyway (as a stock provider of
// another release, or a client's own retry loop, would) and sends the same document again; the
// answer is the (N+1)th matching close, each one reported.
//
// stdout, one JSON line per close, the answer last:
//   {"event":"closed","code":4422,"reason":"...","mode":"invalid-task"}
//     (plus "error" when the socket reported an error first, e.g. a refused handshake: code 1006)
//   {"event":"timeout","mode":...,"connected":true|false}   (no (matching) close in time)
// exit: 0 once the server closed the connection, 3 timeout, 1 bad command line.

import { randomUUID } from 'node:crypto'
import {
  Y, connect, waitSynced, shutdown, emit, makeLog, parseCli, intOption,
  EXIT_OK, EXIT_TIMEOUT, EXIT_USAGE
} from './common.mjs'

const MODES = [
  'invalid-task', 'bad-key', 'oversize', 'illegal-column', 'forbidden-field', 'foreign-owner',
  'deep-task', 'pose-as-worker', 'connect-only'
]
const USAGE = `usage: node garbage.mjs --url ws://HOST:PORT [--board default] [--mode invalid-task]
       [--size BYTES] [--depth LEVELS] [--worker-id ID] [--owner js-garbage] [--model NAME]
       [--expect-close CODE] [--expect-reason TEXT] [--resends N] [--token TOKEN]
       [--timeout-ms 20000] [--verbose]
modes: ${MODES.join(', ')}`

const opts = parseCli(USAGE, {
  mode: { type: 'string', default: 'invalid-task' },
  size: { type: 'string', default: String(4 * 1024 * 1024) },
  owner: { type: 'string', default: 'js-garbage' },
  model: { type: 'string', default: '' },
  'expect-close': { type: 'string' },
  'expect-reason': { type: 'string' },
  depth: { type: 'string', default: '1000' },
  'worker-id': { type: 'string' },
  resends: { type: 'string', default: '0' }
})
if (!MODES.includes(opts.mode)) {
  process.stderr.write(`unknown --mode ${JSON.stringify(opts.mode)}\n${USAGE}\n`)
  process.exit(EXIT_USAGE)
}
const size = intOption(opts, 'size', USAGE)
const expectClose = intOption(opts, 'expect-close', USAGE)
const expectReason = opts['expect-reason']
const depth = intOption(opts, 'depth', USAGE)
const resends = intOption(opts, 'resends', USAGE)
let matched = 0
const log = makeLog(opts.verbose)
const mode = opts.mode

const { doc, provider } = connect(opts)
provider.on('status', ({ status }) => log(`provider status: ${status}`))

let finished = false
async function finish (event, code) {
  if (finished) return
  finished = true
  clearTimeout(timer)
  emit(event)
  await shutdown(provider, code)
}

let lastError = null
provider.on('connection-error', (event) => {
  lastError = (event && (event.message || (event.error && event.error.message))) || 'unknown'
  log(`connection error: ${lastError}`)
})

// `event` is null when we closed the socket ourselves; only a close from the server counts.
provider.on('connection-close', (event) => {
  if (event === null || finished) return
  const reason = event.reason === undefined ? '' : String(event.reason)
  const closed = { event: 'closed', code: event.code, reason, mode }
  if (lastError !== null) closed.error = lastError // e.g. the handshake was refused
  lastError = null
  const expected = (expectClose === undefined || event.code === expectClose) &&
    (expectReason === undefined || reason.includes(expectReason))
  if (!expected) {
    emit(closed) // not the answer: the provider goes on as a stock one does
    return
  }
  if (matched++ < resends) {
    emit(closed) // reconnect and send the same document again
    setTimeout(() => { if (!finished) provider.connect() }, 50)
    return
  }
  provider.shouldConnect = false // no reconnect: this close is the answer
  finish(closed, EXIT_OK)
})

const timer = setTimeout(
  () => finish({ event: 'timeout', mode, connected: provider.wsconnected }, EXIT_TIMEOUT),
  opts.timeoutMs
)

function validFields (entry, id) {
  entry.set('id', id)
  entry.set('owner', opts.owner)
  entry.set('model', opts.model)
  entry.set('prompt', 'hello')
  entry.set('params', { max_tokens: 8 })
  entry.set('priority', 0)
  entry.set('created_at', Date.now())
}

await waitSynced(provider)
log(`synced with ${provider.url}; writing ${mode}`)
const id = `js-garbage-${randomUUID()}`

switch (mode) {
  case 'invalid-task':
    doc.transact(() => {
      const entry = new Y.Map()
      doc.getMap('todo').set(id, entry)
      entry.set('id', `not-${id}`) // does not match the key
      entry.set('owner', 'js-garbage')
      entry.set('params', {})
      entry.set('created_at', Date.now())
      // neither `messages` nor `prompt`
    })
    break
  case 'bad-key':
    doc.transact(() => {
      const key = `-bad key/${id}`
      const entry = new Y.Map()
      doc.getMap('todo').set(key, entry)
      validFields(entry, key)
    })
    break
  case 'oversize':
    doc.transact(() => {
      const entry = new Y.Map()
      doc.getMap('todo').set(id, entry)
      validFields(entry, id)
      entry.set('prompt', 'x'.repeat(size))
    })
    break
  case 'illegal-column':
    doc.transact(() => {
      const entry = new Y.Map()
      doc.getMap('doing').set(id, entry)
      validFields(entry, id)
      entry.set('output', new Y.Text())
    })
    break
  case 'forbidden-field':
    doc.transact(() => {
      const entry = new Y.Map()
      doc.getMap('todo').set(id, entry)
      validFields(entry, id)
    })
    doc.transact(() => doc.getMap('todo').get(id).set('status', 'succeeded'))
    break
  case 'foreign-owner':
    doc.transact(() => {
      const entry = new Y.Map()
      doc.getMap('todo').set(id, entry)
      validFields(entry, id)
    })
    break
  case 'deep-task':
    doc.transact(() => {
      let nested = {}
      for (let i = 0; i < depth; i++) nested = { a: nested }
      const entry = new Y.Map()
      doc.getMap('todo').set(id, entry)
      validFields(entry, id)
      entry.set('params', { max_tokens: 8, nested })
    })
    break
  case 'pose-as-worker':
    provider.awareness.setLocalState({
      role: 'worker', id: opts['worker-id'] ?? `js-fake-worker-${id}`, name: 'js-fake-worker',
      models: ['echo'], slots: 4, state: 'ready', tasks: []
    })
    break
  case 'connect-only':
    break
  default:
    process.exit(EXIT_USAGE)
}
