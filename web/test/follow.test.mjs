// Following a task's stream across a retried attempt, on a plain Y.Doc (no server): the same
// behaviour as the Python SDK and the OpenAI endpoint (docs/protocol.md section 5).
//   node --test test/follow.test.mjs

import assert from 'node:assert/strict'
import { test } from 'node:test'
import * as Y from 'yjs'

import { StreamRestartedError, TaskHandle } from '../src/index.js'

/** Replace task `id`'s entry (wherever it is) by one in `column` with `fields`. */
function put (doc, column, id, fields) {
  doc.transact(() => {
    for (const name of ['todo', 'doing', 'done']) doc.getMap(name).delete(id)
    const entry = new Y.Map()
    doc.getMap(column).set(id, entry)
    for (const [key, value] of Object.entries({ id, ...fields })) entry.set(key, value)
  })
}

/** Put task `id` into `doing` (attempt `attempt`, empty output); returns its output. */
function start (doc, id, attempt) {
  const output = new Y.Text()
  put(doc, 'doing', id, { attempt, output })
  return output
}

function requeue (doc, id, attempt) {
  put(doc, 'todo', id, { attempt })
}

function finish (doc, id, text) {
  put(doc, 'done', id, { attempt: 2, output: new Y.Text(text), status: 'succeeded', result: text })
}

/** A handle on task `t` of `doc`, checked after every update as the Board does. */
function follow (doc) {
  const host = { doc, lookup: async () => null, release: () => {} }
  const handle = new TaskHandle(host, 't', null)
  doc.on('update', () => handle.check())
  const chunks = []
  const restarts = []
  handle.onChunk((chunk) => chunks.push(chunk))
  handle.onRestart((error) => restarts.push(error))
  return { handle, chunks, restarts }
}

function retry (doc, firstText, secondText) {
  const { handle, chunks, restarts } = follow(doc)
  const first = start(doc, 't', 1)
  first.insert(0, firstText)
  requeue(doc, 't', 2)
  const second = start(doc, 't', 2)
  for (const word of secondText.split(/(?<= )/)) second.insert(second.length, word)
  finish(doc, 't', secondText)
  return { handle, chunks, restarts }
}

test('a retry that repeats the text is followed silently, then continued', async () => {
  const { handle, chunks, restarts } = retry(new Y.Doc(), 'one two ', 'one two three')
  assert.deepEqual(chunks, ['one two ', 'three'])
  assert.deepEqual(restarts, [])
  assert.equal((await handle.result()).result, 'one two three')
})

test('a retry that diverges ends the stream with StreamRestartedError; the result still comes', async () => {
  const { handle, chunks, restarts } = retry(new Y.Doc(), 'one two ', 'one TWO three')
  assert.deepEqual(chunks, ['one two '])
  assert.equal(restarts.length, 1)
  assert.ok(restarts[0] instanceof StreamRestartedError)
  assert.equal(restarts[0].attempt, 2)
  assert.equal(handle.restarted, restarts[0])
  assert.equal((await handle.result()).result, 'one TWO three')
})
