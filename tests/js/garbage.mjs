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
//   connect-only     write nothing; just report a close (e.g. a refused --token)
//
// stdout, one JSON line:
//   {"event":"closed","code":4422,"reason":"...","mode":"invalid-task"}
//     (plus "error" when the socket reported an error first, e.g. a refused handshake: code 1006)
//   {"event":"timeout","mode":...,"connected":true|false}   (the server never closed)
// exit: 0 once the server closed the connection, 3 timeout, 1 bad command line.

import { randomUUID } from 'node:crypto'
import {
  Y, connect, waitSynced, shutdown, emit, makeLog, parseCli, intOption,
  EXIT_OK, EXIT_TIMEOUT, EXIT_USAGE
} from './common.mjs'

const MODES = ['invalid-task', 'bad-key', 'oversize', 'illegal-column', 'forbidden-field', 'connect-only']
const USAGE = `usage: node garbage.mjs --url ws://HOST:PORT [--board default] [--mode invalid-task]
       [--size BYTES] [--token TOKEN] [--timeout-ms 20000] [--verbose]
modes: ${MODES.join(', ')}`

const opts = parseCli(USAGE, {
  mode: { type: 'string', default: 'invalid-task' },
  size: { type: 'string', default: String(4 * 1024 * 1024) }
})
if (!MODES.includes(opts.mode)) {
  process.stderr.write(`unknown --mode ${JSON.stringify(opts.mode)}\n${USAGE}\n`)
  process.exit(EXIT_USAGE)
}
const size = intOption(opts, 'size', USAGE)
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
  provider.shouldConnect = false // no reconnect: one close is the answer
  const reason = event.reason === undefined ? '' : String(event.reason)
  const closed = { event: 'closed', code: event.code, reason, mode }
  if (lastError !== null) closed.error = lastError // e.g. the handshake was refused
  finish(closed, EXIT_OK)
})

const timer = setTimeout(
  () => finish({ event: 'timeout', mode, connected: provider.wsconnected }, EXIT_TIMEOUT),
  opts.timeoutMs
)

function validFields (entry, id) {
  entry.set('id', id)
  entry.set('owner', 'js-garbage')
  entry.set('model', '')
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
  case 'connect-only':
    break
  default:
    process.exit(EXIT_USAGE)
}
