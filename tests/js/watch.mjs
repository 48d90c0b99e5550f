#!/usr/bin/env node
// Follow a task someone else submitted (e.g. a Python client) until it lands in `done`.
//
// stdout, one JSON object a line:
//   {"event":"chunk","text":...}        (each new piece of output seen)
//   {"event":"done","id","status","result","streamed","error","timings","usage","attempt","worker"}
//   {"event":"timeout","id","column","streamed"}
// `streamed` is what this watcher saw of the output: if it joins late, its first chunk holds
// everything written so far.
// exit: 0 succeeded, 2 failed or cancelled, 3 timeout, 1 bad command line.

import {
  connectSynced, shutdown, emit, makeLog, parseCli, followTask,
  doneEvent, EXIT_OK, EXIT_TASK_NOT_SUCCEEDED, EXIT_TIMEOUT, EXIT_USAGE
} from './common.mjs'

const USAGE = `usage: node watch.mjs --url ws://HOST:PORT [--board default] --id TASK_ID
       [--token TOKEN] [--timeout-ms 20000] [--verbose]`

const opts = parseCli(USAGE, { id: { type: 'string' } })
if (!opts.id) {
  process.stderr.write(`--id is required\n${USAGE}\n`)
  process.exit(EXIT_USAGE)
}
const id = opts.id
const log = makeLog(opts.verbose)
const startedAt = Date.now()

const { doc, provider } = await connectSynced(opts, id, log)

// The task may not be on the board yet: followTask waits for it to appear in any column.
const timeoutMs = Math.max(0, opts.timeoutMs - (Date.now() - startedAt))
const outcome = await followTask(doc, id, { timeoutMs, log })
if (outcome === null) {
  await shutdown(provider, EXIT_TIMEOUT)
} else {
  const event = doneEvent(id, outcome.entry, outcome.streamed)
  emit(event)
  await shutdown(provider, event.status === 'succeeded' ? EXIT_OK : EXIT_TASK_NOT_SUCCEEDED)
}
