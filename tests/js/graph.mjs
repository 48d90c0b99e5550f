#!/usr/bin/env node
// Submit a task graph to a kanbanmesh board with stock yjs + y-websocket (docs/protocol.md,
// section 12): N part tasks and one task `after` all of them whose prompt refers to their
// results as {{result:ID}}, all written in one transaction; follow the combining task and
// check, at every change seen, that it never left `todo` before every part had succeeded.
//
// stdout, one JSON object a line:
//   {"event":"submitted","ids":[...parts],"child":ID}
//   {"event":"done", ... as submit.mjs, for the child, plus "parents":{ID: result},
//    "early":[columns the child was seen in while a part had not succeeded],
//    "waited":[what `enriching` held while it waited], "after_results":{...}}
//   {"event":"timeout", ...}
// exit: 0 succeeded, 2 failed or cancelled, 3 timeout, 1 bad command line.

import { randomUUID } from 'node:crypto'
import {
  Y, connectSynced, shutdown, emit, makeLog, parseCli, intOption, followTask, findEntry, doneEvent, plain,
  EXIT_OK, EXIT_TASK_NOT_SUCCEEDED, EXIT_TIMEOUT
} from './common.mjs'

const USAGE = `usage: node graph.mjs --url ws://HOST:PORT [--board default] [--parts 3] [--owner js]
       [--cancel-part N] [--token TOKEN] [--timeout-ms 20000] [--verbose]`

const opts = parseCli(USAGE, {
  parts: { type: 'string', default: '3' },
  owner: { type: 'string', default: 'js' },
  'cancel-part': { type: 'string' }
})
const parts = intOption(opts, 'parts', USAGE)
const cancelPart = intOption(opts, 'cancel-part', USAGE)
const run = randomUUID().slice(0, 8)
const ids = Array.from({ length: parts }, (_, i) => `js-${run}-part${i + 1}`)
const child = `js-${run}-all`
const startedAt = Date.now()
const log = makeLog(opts.verbose)

const { doc, provider } = await connectSynced(opts, child, log)

const write = (id, fields) => {
  const entry = new Y.Map()
  doc.getMap('todo').set(id, entry)
  for (const [key, value] of Object.entries({ id, owner: opts.owner, created_at: Date.now(), ...fields })) {
    entry.set(key, value)
  }
}
doc.transact(() => {
  ids.forEach((id, i) => write(id, { prompt: `part ${i + 1}` }))
  write(child, {
    after: ids,
    messages: [{ role: 'user', content: `combine: ${ids.map((id) => `{{result:${id}}}`).join(' | ')}` }]
  })
})
emit({ event: 'submitted', ids, child })
if (cancelPart !== undefined) {
  doc.transact(() => findEntry(doc, ids[cancelPart - 1]).entry.set('cancel', true))
}

const early = []
const waited = []
const check = ({ column, entry }) => {
  const succeeded = ids.every((id) => {
    const found = findEntry(doc, id)
    return found !== null && found.column === 'done' && found.entry.get('status') === 'succeeded'
  })
  if (column !== 'todo' && column !== 'done' && !succeeded) early.push(column)
  const marker = plain(entry.get('enriching'))
  if (column === 'todo' && marker !== null && !waited.some((m) => JSON.stringify(m) === JSON.stringify(marker))) {
    waited.push(marker)
  }
}
const timeoutMs = Math.max(0, opts.timeoutMs - (Date.now() - startedAt))
const outcome = await followTask(doc, child, { timeoutMs, log, onChange: check })
if (outcome === null) {
  await shutdown(provider, EXIT_TIMEOUT)
} else {
  const parents = Object.fromEntries(ids.map((id) => [id, plain(findEntry(doc, id)?.entry.get('result'))]))
  const event = {
    ...doneEvent(child, outcome.entry, outcome.streamed),
    parents,
    early,
    waited,
    after_results: plain(outcome.entry.get('after_results'))
  }
  emit(event)
  await shutdown(provider, event.status === 'succeeded' ? EXIT_OK : EXIT_TASK_NOT_SUCCEEDED)
}
