// A board that moves to a new generation of its document (docs/protocol.md section 9): the
// library starts over with a new Y.Doc and carries on. Runs a server of its own that rotates
// as soon as one task has left the board.

import assert from 'node:assert/strict'
import { test } from 'node:test'
import WebSocket from 'ws'

import { connect } from '../src/index.js'
import { TIMEOUT_MS, startServer, until, within } from './support.mjs'

test('after a rotation (4409) the board reconnects with a new document and carries on', async (t) => {
  const server = await startServer(['--rotate-after', '1', '--retention-seconds', '0'])
  t.after(() => server.stop())
  const board = await connect(server.url, 'default', { WebSocket, timeoutMs: TIMEOUT_MS })
  t.after(() => board.close())
  await until(board, () => board.workers().length > 0, 'a worker')
  const firstDoc = board.doc
  const first = board.submit({ prompt: 'before the rotation' })
  assert.equal((await within(first.result(), 'the first result')).result, 'echo: before the rotation')
  // The finished task leaves for the archive at once, and with it the board's generation.
  await until(board, () => board.doc !== firstDoc && board.status.status === 'connected', 'a new generation')
  const second = board.submit({ prompt: 'after the rotation' })
  assert.equal((await within(second.result(), 'the second result')).result, 'echo: after the rotation')
  // A task that left the board is still found by id: from the archive.
  const archived = await within(board.task(first.id).result(), 'the archived task')
  assert.equal(archived.result, 'echo: before the rotation')
})
