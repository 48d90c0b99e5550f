#!/usr/bin/env node
// Submit one embed task (docs/protocol.md section 13) with stock yjs + y-websocket, wait for
// it, decode its vectors.
//
// stdout, one JSON object a line:
//   {"event":"submitted","id":...}
//   {"event":"done","id","status","error","usage","dimensions","worker","vectors"}
//     (`vectors`: each embedding decoded from base64 little-endian float32 into numbers)
//   {"event":"timeout","id","column"}  (instead of done, on timeout)
// exit: 0 succeeded, 2 failed or cancelled, 3 timeout, 1 bad command line.

import { randomUUID } from 'node:crypto'
import {
  Y, connectSynced, shutdown, emit, makeLog, parseCli, plain, followTask,
  EXIT_OK, EXIT_TASK_NOT_SUCCEEDED, EXIT_TIMEOUT
} from './common.mjs'

const USAGE = `usage: node embed.mjs --url ws://HOST:PORT [--board default] --text TEXT [--text TEXT]...
       [--id ID] [--owner js] [--model NAME] [--token TOKEN] [--timeout-ms 20000] [--verbose]`

const opts = parseCli(USAGE, {
  text: { type: 'string', multiple: true },
  id: { type: 'string' },
  owner: { type: 'string', default: 'js' },
  model: { type: 'string', default: '' }
})

const id = opts.id ?? `js-embed-${randomUUID()}`
const log = makeLog(opts.verbose)
const startedAt = Date.now()
const { doc, provider } = await connectSynced(opts, id, log)

doc.transact(() => {
  const entry = new Y.Map()
  doc.getMap('todo').set(id, entry)
  entry.set('id', id)
  entry.set('owner', opts.owner)
  entry.set('model', opts.model)
  entry.set('kind', 'embed')
  entry.set('input', opts.text ?? [])
  entry.set('created_at', Date.now())
})
emit({ event: 'submitted', id })

// base64 of little-endian float32 values -> a Float32Array (JavaScript runs little-endian).
const vectorOf = (b64) => {
  const bytes = Buffer.from(b64, 'base64')
  return new Float32Array(bytes.buffer, bytes.byteOffset, bytes.length / 4)
}

const timeoutMs = Math.max(0, opts.timeoutMs - (Date.now() - startedAt))
const outcome = await followTask(doc, id, { timeoutMs, log })
if (outcome === null) {
  await shutdown(provider, EXIT_TIMEOUT)
} else {
  const entry = outcome.entry
  const status = plain(entry.get('status'))
  emit({
    event: 'done',
    id,
    status,
    error: plain(entry.get('error')),
    usage: plain(entry.get('usage')),
    dimensions: plain(entry.get('dimensions')),
    worker: plain(entry.get('worker')),
    vectors: (plain(entry.get('embeddings')) ?? []).map((b64) => Array.from(vectorOf(b64)))
  })
  await shutdown(provider, status === 'succeeded' ? EXIT_OK : EXIT_TASK_NOT_SUCCEEDED)
}
