// The JavaScript library against a real kanbanmesh server with echo workers:
//   node --test test/        (or `npm test`; the Python suite runs it too, tests/web/test_js_library.py)

import assert from 'node:assert/strict'
import { after, before, test } from 'node:test'
import WebSocket from 'ws'

import { COLUMNS, RefusedError, connect, resultRef } from '../src/index.js'
import { requestFields } from '../src/tasks.js'
import { TIMEOUT_MS, startServer, until, within } from './support.mjs'

let server

before(async () => {
  server = await startServer()
})

after(async () => {
  await server?.stop()
})

/** A board on the test server; closed after the test. */
async function open (t, options = {}) {
  const board = await connect(server.url, 'default', { WebSocket, timeoutMs: TIMEOUT_MS, ...options })
  t.after(() => board.close())
  return board
}

test('a request needs exactly one of messages and prompt', () => {
  assert.throws(() => requestFields({}, 'me'), TypeError)
  assert.throws(() => requestFields({ prompt: 'a', messages: [] }, 'me'), TypeError)
  const fields = requestFields({ prompt: 'a', rag: 'docs' }, 'me')
  assert.deepEqual(fields.rag, { collection: 'docs', k: 4 })
  assert.equal(fields.owner, 'me')
  assert.match(fields.id, /^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$/)
})

test('after is checked as the server checks it', () => {
  const fields = requestFields({ id: 'c', prompt: `x ${resultRef('a')}`, after: ['a', { id: 'b' }] }, 'me')
  assert.deepEqual(fields.after, ['a', 'b'])
  assert.equal(resultRef({ id: 'a' }), '{{result:a}}')
  assert.throws(() => requestFields({ prompt: '{{result:z}}', after: ['a'] }, 'me'), /not in `after`/)
  assert.throws(() => requestFields({ id: 'c', prompt: 'x', after: ['c'] }, 'me'), /itself/)
  assert.throws(() => requestFields({ prompt: 'x', after: ['a', 'a'] }, 'me'), /twice/)
  assert.throws(() => requestFields({ prompt: 'x', after: ['a b'] }, 'me'), /not a task id/)
  assert.throws(() => requestFields({ prompt: 'x', after: Array.from({ length: 65 }, (_, i) => `t${i}`) }, 'me'), /at most/)
})

test('a task graph: the combining task runs after its parts, with their results', async (t) => {
  const board = await open(t)
  await until(board, () => board.workers().length > 0, 'a worker')
  // long enough (the test's workers stream a word each 10 ms) to see the card wait
  const words = (name) => Array.from({ length: 40 }, () => name).join(' ')
  const parts = ['one', 'two'].map((name) => board.submit({ prompt: words(name) }))
  const all = board.submit({ prompt: parts.map((p) => resultRef(p)).join(' + '), after: parts })
  const seen = await until(board, () => board.snapshot().todo.find((e) => e.id === all.id && e.enriching), 'the waiting card')
  assert.deepEqual(seen.after, parts.map((p) => p.id))
  const done = await within(all.result(), 'the combined result')
  assert.equal(done.result, `echo: echo: ${words('one')} + echo: ${words('two')}`)
  const finished = await within(Promise.all(parts.map((p) => p.result())), 'the parts')
  assert.ok(finished.every((p) => p.finished_at <= done.started_at))
})

test('workers() lists the echo workers from awareness', async (t) => {
  const board = await open(t)
  const workers = await until(board, () => board.workers().length > 0 && board.workers(), 'a worker')
  assert.ok(workers.every((w) => w.role === 'worker' && w.models.includes('echo') && w.slots >= 1), JSON.stringify(workers))
})

test('submit streams chunks and resolves with the result, timings and tokens', async (t) => {
  const board = await open(t)
  await until(board, () => board.workers().length > 0, 'a worker')
  const task = board.submit({
    messages: [{ role: 'user', content: 'the quick brown fox jumps over the lazy dog' }],
    params: { max_tokens: 64 }
  })
  const chunks = []
  task.onChunk((chunk) => chunks.push(chunk))
  await within(task.accepted, 'the server to confirm the task')
  const done = await within(task.result(), 'the result')
  assert.equal(done.status, 'succeeded')
  assert.equal(done.result, 'echo: the quick brown fox jumps over the lazy dog')
  assert.equal(chunks.join(''), done.result) // invariant 4: the stream adds up to the result
  assert.ok(chunks.length > 1, `streamed in ${chunks.length} chunk(s)`)
  assert.equal(done.owner, 'js')
  assert.equal(done.tokens, done.usage.completion_tokens)
  for (const key of ['queued_ms', 'ttft_ms', 'total_ms', 'tokens_per_s']) assert.equal(typeof done.timings[key], 'number', key)
  assert.ok(board.snapshot().done.some((entry) => entry.id === task.id))
})

test('rag is written into the task as {collection, k}', async (t) => {
  const board = await open(t)
  const task = board.submit({ prompt: 'from my notes', rag: { collection: 'notes', k: 2 } })
  assert.deepEqual(task.task?.rag ?? board.snapshot().todo.find((e) => e.id === task.id)?.rag, { collection: 'notes', k: 2 })
  await within(task.accepted, 'the server to accept it') // the schema takes the field
  // whether the collection exists is the RAG side's business: any outcome will do
  assert.ok(['succeeded', 'failed'].includes((await within(task.result(), 'an outcome')).status))
})

test('cancel stops a running task with the text so far', async (t) => {
  const board = await open(t)
  await until(board, () => board.workers().length > 0, 'a worker')
  const words = Array.from({ length: 300 }, (_, i) => `w${i}`).join(' ')
  const task = board.submit({ prompt: words, params: { max_tokens: 1000 } })
  await within(new Promise((resolve) => task.onChunk((_, text) => { if (text.length > 20) resolve() })), 'some output')
  task.cancel()
  const done = await within(task.result(), 'the cancelled result')
  assert.equal(done.status, 'cancelled')
  assert.ok(done.result.length < `echo: ${words}`.length, 'the worker stopped early')
  assert.ok(`echo: ${words}`.startsWith(done.result))
})

test('two clients: one submits, the other sees the task live and the same result', async (t) => {
  const alice = await open(t, { owner: 'alice' })
  const bob = await open(t, { owner: 'bob' })
  await until(alice, () => alice.workers().length > 0, 'a worker')
  const seenColumns = new Set()
  const mine = alice.submit({ prompt: 'shared between two clients', params: { max_tokens: 32 } })
  const watched = await until(bob, () => {
    for (const column of COLUMNS) {
      if (bob.snapshot()[column].some((task) => task.id === mine.id)) seenColumns.add(column)
    }
    return seenColumns.size > 0 && bob.task(mine.id)
  }, "bob seeing alice's task")
  const bobChunks = []
  watched.onChunk((chunk) => bobChunks.push(chunk))
  const [fromAlice, fromBob] = await within(Promise.all([mine.result(), watched.result()]), 'both results')
  assert.equal(fromAlice.result, 'echo: shared between two clients')
  assert.equal(fromBob.result, fromAlice.result)
  assert.equal(fromBob.owner, 'alice')
  assert.ok(seenColumns.size >= 1)
  // bob may have joined the stream late, but what he saw is the end of it
  assert.ok(fromAlice.result.endsWith(bobChunks.join('')))
})

test('a write the server refuses fails its task; the board starts over and keeps serving', async (t) => {
  const board = await open(t)
  await until(board, () => board.workers().length > 0, 'a worker')
  const task = board.submit({ prompt: 'too few tokens', params: { max_tokens: 0 } })
  await assert.rejects(within(task.result(), 'the refusal'), (err) => err instanceof RefusedError && err.code === 4422)
  // not refused for good: a new document, the refused write dropped, the next task runs
  await until(board, () => board.status.status === 'connected', 'the reconnect')
  const next = board.submit({ prompt: 'after the refusal', params: { max_tokens: 8 } })
  const done = await within(next.result(), 'the next result')
  assert.equal(done.result, 'echo: after the refusal')
  assert.equal(board.snapshot().todo.some((entry) => entry.id === task.id), false)
})
