#!/usr/bin/env node
// Time how long a new stock y-websocket client takes to connect and sync a board.
//
// stdout, one JSON object: {"event":"synced","ms":...,"bytes":...,"counts":{todo,prepared,doing,done}}
// `bytes` is the size of the synced document (Y.encodeStateAsUpdate). Used by bench/board_growth.py.
// exit: 0 synced, 3 timeout, 1 bad command line.

import { connectSynced, shutdown, emit, makeLog, parseCli, COLUMNS, Y, EXIT_OK } from './common.mjs'

const USAGE = 'usage: node sync_time.mjs --url ws://HOST:PORT [--board default] [--token TOKEN]'
const opts = parseCli(USAGE)
const log = makeLog(opts.verbose)
const startedAt = performance.now()
const { doc, provider } = await connectSynced(opts, 'sync-time', log)
const ms = performance.now() - startedAt
const counts = Object.fromEntries(COLUMNS.map((name) => [name, doc.getMap(name).size]))
emit({ event: 'synced', ms, bytes: Y.encodeStateAsUpdate(doc).length, counts })
await shutdown(provider, EXIT_OK)
