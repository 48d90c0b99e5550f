#!/usr/bin/env node
// Wait until the board's awareness shows at least N workers, then print them.
//
// Workers announce {role: "worker", id, name, models, slots, state, ...} as their awareness
// state; this script reads them with the stock provider's `awareness.getStates()`.
//
// stdout, one JSON line:
//   {"event":"workers","count":N,"workers":[{"client_id":...,"role":"worker","id":...,...}]}
//   {"event":"timeout","count":N,"workers":[...]}   (fewer than --expect seen in time)
// exit: 0 enough workers seen, 3 timeout, 1 bad command line.

import {
  connect, waitSynced, shutdown, emit, makeLog, parseCli, intOption, reportConnectionTrouble,
  EXIT_OK, EXIT_TIMEOUT
} from './common.mjs'

const USAGE = `usage: node workers.mjs --url ws://HOST:PORT [--board default] [--expect 1]
       [--token TOKEN] [--timeout-ms 20000] [--verbose]`

const opts = parseCli(USAGE, { expect: { type: 'string', default: '1' } })
const expect = intOption(opts, 'expect', USAGE)
const log = makeLog(opts.verbose)

const { doc, provider } = connect(opts)
reportConnectionTrouble(provider, log)

function workers () {
  const found = []
  for (const [clientId, state] of provider.awareness.getStates()) {
    if (clientId === doc.clientID) continue
    if (state && state.role === 'worker') found.push({ client_id: clientId, ...state })
  }
  found.sort((a, b) => String(a.id).localeCompare(String(b.id)))
  return found
}

let finished = false
async function finish (event, code) {
  if (finished) return
  finished = true
  clearTimeout(timer)
  const list = workers()
  emit({ event, count: list.length, workers: list })
  await shutdown(provider, code)
}

const timer = setTimeout(() => finish('timeout', EXIT_TIMEOUT), opts.timeoutMs)

await waitSynced(provider)
log(`synced with ${provider.url}`)

const check = () => {
  const n = workers().length
  log(`awareness: ${n} worker(s)`)
  if (n >= expect) finish('workers', EXIT_OK)
}
provider.awareness.on('change', check)
check()
