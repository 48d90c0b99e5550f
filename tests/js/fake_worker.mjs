#!/usr/bin/env node
// A fake worker: a stock y-websocket client that announces a ready worker in awareness (the
// fields of the contract, with as many slots as it likes) and never works. It writes nothing
// to the document, so whatever is assigned to it stays in `prepared` until the broker takes it
// back; the stock provider renews the awareness state every 15 s, so its lease never ends.
//
// stdout, JSON lines:
//   {"event":"ready","id":"..."}                       synced, and the state announced
//   {"event":"held","ids":[...],"most":N}              after each change of what it holds
//                                                      (its entries in `prepared`); `most`:
//                                                      the most it ever held at once
//   {"event":"stopped","most":N,"seen":[...]}          on SIGTERM/SIGINT: every task it held
// exit: 0 stopped, 3 sync timeout, 1 bad command line.

import { randomUUID } from 'node:crypto'
import {
  connectSynced, shutdown, emit, makeLog, parseCli, intOption, EXIT_OK, EXIT_USAGE
} from './common.mjs'

const USAGE = `usage: node fake_worker.mjs --url ws://HOST:PORT [--board default] [--id ID]
       [--slots 1000] [--models JSON_ARRAY] [--token TOKEN] [--timeout-ms 20000] [--verbose]`

const opts = parseCli(USAGE, {
  id: { type: 'string' },
  slots: { type: 'string', default: '1000' },
  models: { type: 'string', default: '[]' }
})
const slots = intOption(opts, 'slots', USAGE)
let models
try {
  models = JSON.parse(opts.models)
} catch (err) {
  process.stderr.write(`--models must be a JSON array: ${err.message}\n${USAGE}\n`)
  process.exit(EXIT_USAGE)
}
const id = opts.id || `worker-fake-${randomUUID().slice(0, 8)}`
const log = makeLog(opts.verbose)

const { doc, provider } = await connectSynced(opts, null, log)
provider.awareness.setLocalState({
  role: 'worker', id, name: 'fake', models, slots, state: 'ready', tasks: [], engine: 'none', version: '0'
})
emit({ event: 'ready', id })

const prepared = doc.getMap('prepared')
const seen = new Set()
let most = 0
let last = ''
doc.on('update', () => {
  const ids = []
  prepared.forEach((entry, key) => {
    if (entry && typeof entry.get === 'function' && entry.get('worker') === id) ids.push(key)
  })
  ids.sort()
  ids.forEach((key) => seen.add(key))
  most = Math.max(most, ids.length)
  const now = JSON.stringify(ids)
  if (now !== last) {
    last = now
    emit({ event: 'held', ids, most })
  }
})

const stop = () => {
  emit({ event: 'stopped', most, seen: [...seen].sort() })
  shutdown(provider, EXIT_OK)
}
process.on('SIGTERM', stop)
process.on('SIGINT', stop)
