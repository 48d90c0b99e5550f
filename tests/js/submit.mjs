#!/usr/bin/env node
// Submit one task to a kanbanmesh board with stock yjs + y-websocket, stream its output, report.
//
// stdout, one JSON object a line:
//   {"event":"submitted","id":...}
//   {"event":"cancel","id":...,"column":...,"chars":...}  (only with --cancel-after-chars)
//   {"event":"chunk","text":...}                          (each new piece of output)
//   {"event":"done","id","status","result","streamed","error","timings","usage","attempt","worker"}
//   {"event":"timeout","id","column","streamed"}          (instead of done, on timeout)
// exit: 0 succeeded, 2 failed or cancelled, 3 timeout, 1 bad command line.

import { randomUUID } from 'node:crypto'
import {
  Y, connectSynced, shutdown, emit, makeLog, parseCli, intOption, followTask,
  doneEvent,
  EXIT_OK, EXIT_TASK_NOT_SUCCEEDED, EXIT_TIMEOUT, EXIT_USAGE
} from './common.mjs'

const USAGE = `usage: node submit.mjs --url ws://HOST:PORT [--board default] (--prompt TEXT | --messages JSON)
       [--id ID] [--owner js] [--model NAME] [--max-tokens N] [--temperature F] [--top-p F]
       [--seed N] [--stop STR]... [--priority N] [--cancel-after-chars N] [--token TOKEN]
       [--timeout-ms 20000] [--verbose]`

const opts = parseCli(USAGE, {
  prompt: { type: 'string' },
  messages: { type: 'string' },
  id: { type: 'string' },
  owner: { type: 'string', default: 'js' },
  model: { type: 'string', default: '' },
  'max-tokens': { type: 'string' },
  temperature: { type: 'string' },
  'top-p': { type: 'string' },
  seed: { type: 'string' },
  stop: { type: 'string', multiple: true },
  priority: { type: 'string', default: '0' },
  'cancel-after-chars': { type: 'string' }
})

if ((opts.prompt === undefined) === (opts.messages === undefined)) {
  process.stderr.write(`give exactly one of --prompt or --messages\n${USAGE}\n`)
  process.exit(EXIT_USAGE)
}
let messages
if (opts.messages !== undefined) {
  try {
    messages = JSON.parse(opts.messages)
  } catch (err) {
    process.stderr.write(`--messages is not JSON: ${err.message}\n`)
    process.exit(EXIT_USAGE)
  }
}

const params = {}
const maxTokens = intOption(opts, 'max-tokens', USAGE)
if (maxTokens !== undefined) params.max_tokens = maxTokens
if (opts.temperature !== undefined) params.temperature = numOption('temperature')
if (opts['top-p'] !== undefined) params.top_p = numOption('top-p')
const seed = intOption(opts, 'seed', USAGE)
if (seed !== undefined) params.seed = seed
if (opts.stop !== undefined) params.stop = opts.stop
const priority = numOption('priority')
const cancelAfterChars = intOption(opts, 'cancel-after-chars', USAGE)
const id = opts.id ?? `js-${randomUUID()}`
const startedAt = Date.now()

function numOption (name) {
  const n = Number(opts[name])
  if (opts[name] === '' || !Number.isFinite(n)) {
    process.stderr.write(`--${name} must be a number, got ${JSON.stringify(opts[name])}\n${USAGE}\n`)
    process.exit(EXIT_USAGE)
  }
  return n
}
const log = makeLog(opts.verbose)

const { doc, provider } = await connectSynced(opts, id, log)

// The whole entry is created in one transaction, so the server never sees half a task.
doc.transact(() => {
  const entry = new Y.Map()
  doc.getMap('todo').set(id, entry)
  entry.set('id', id)
  entry.set('owner', opts.owner)
  entry.set('model', opts.model)
  if (messages !== undefined) entry.set('messages', messages)
  else entry.set('prompt', opts.prompt)
  entry.set('params', params)
  entry.set('priority', priority)
  entry.set('created_at', Date.now())
})
emit({ event: 'submitted', id })

// --cancel-after-chars N: set `cancel` once N characters were streamed (0: right away). The
// flag is set again if the task moves to a new copy without it before reaching `done`.
let cancelRequested = false
const maybeCancel = ({ column, entry, streamed }) => {
  if (cancelAfterChars === undefined || column === 'done') return
  if (!cancelRequested && streamed.length < cancelAfterChars) return
  if (entry.get('cancel') === true) return
  if (!cancelRequested) emit({ event: 'cancel', id, column, chars: streamed.length })
  cancelRequested = true
  log(`setting cancel on ${id} in ${column}`)
  doc.transact(() => entry.set('cancel', true))
}

const timeoutMs = Math.max(0, opts.timeoutMs - (Date.now() - startedAt))
const outcome = await followTask(doc, id, { timeoutMs, log, onChange: maybeCancel })
if (outcome === null) {
  await shutdown(provider, EXIT_TIMEOUT)
} else {
  const event = doneEvent(id, outcome.entry, outcome.streamed)
  emit(event)
  await shutdown(provider, event.status === 'succeeded' ? EXIT_OK : EXIT_TASK_NOT_SUCCEEDED)
}
