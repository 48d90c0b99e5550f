// The sidebar's logic (Connection + SidebarController) against real kanbanmesh servers with
// echo workers: streaming, models from the ready workers, cancel, a refused token, a server
// that is down at first, and one that restarts.
//   node --test test/      (tests/firefox/test_extension_logic.py runs it with a server)

import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { after, before, test } from 'node:test'
import WebSocket from 'ws'

import { Connection } from '../src/lib/connection.js'
import { DEFAULTS, checkServer } from '../src/lib/settings.js'
import { SidebarController, readyModels } from '../src/lib/sidebar.js'
import { freePort, recordingView, startServer, until, within } from './support.mjs'

const FAST_RETRY = [100, 200, 400]
let server

before(async () => { server = await startServer() })
after(async () => { await server?.stop() })

/** A started Connection and a controller drawing on a recording view; stopped after the test. */
function sidebar (t, settings, options = {}) {
  const connection = new Connection({ ...DEFAULTS, ...settings }, { WebSocket, retryMs: FAST_RETRY, owner: 'firefox', ...options })
  const view = recordingView()
  const controller = new SidebarController(connection, view)
  t.after(() => { controller.dispose(); connection.stop() })
  connection.start()
  return { connection, view, controller }
}

const phase = (connection, wanted) => until((f) => connection.onState(f), () => connection.state.phase === wanted, `the connection ${wanted}`)

test('readyModels: the models of the workers that take work, with how many serve each', () => {
  const workers = [
    { name: 'a', models: ['llama', 'echo'], state: 'ready' },
    { name: 'b', models: ['echo'], state: 'working' },
    { name: 'c', models: ['qwen'], state: 'draining' }
  ]
  assert.deepEqual(readyModels(workers), [{ model: 'echo', workers: 2 }, { model: 'llama', workers: 1 }])
})

test('a question streams into the sidebar and ends with the whole answer', async (t) => {
  const { connection, view, controller } = sidebar(t, { serverUrl: server.url, maxTokens: 64 })
  await phase(connection, 'connected')
  assert.match(view.states.at(-1).message, /^Connected to ws:\/\/127\.0\.0\.1:\d+\/default\.$/)
  assert.equal(view.states.at(-1).identity, 'firefox')
  const models = await until((f) => connection.onWorkers(f), () => view.models.at(-1)?.length > 0, 'the models of the workers')
  assert.ok(models, 'models drawn')
  assert.deepEqual(view.models.at(-1).map((m) => m.model), ['echo'])

  const prompt = 'the quick brown fox jumps over the lazy dog and keeps on running'
  const answer = controller.ask({ prompt: `  ${prompt}\n`, model: 'echo' })
  const done = await within(controller.finished(answer.key), 'the answer')
  assert.equal(done.phase, 'succeeded')
  assert.equal(done.text, `echo: ${prompt}`)
  assert.equal(done.prompt, prompt)
  assert.ok(done.worker, 'the worker is named')
  assert.equal(typeof done.timings?.tokens_per_s, 'number')
  const drawn = view.drawn(answer.key)
  const streamed = [...new Set(drawn.filter((a) => a.phase === 'streaming').map((a) => a.text))]
  assert.ok(streamed.length >= 3, `streamed in ${streamed.length} step(s)`)
  for (let i = 1; i < streamed.length; i++) assert.ok(streamed[i].startsWith(streamed[i - 1]) && streamed[i].length > streamed[i - 1].length)
  assert.equal(drawn[0].phase, 'queued')
  assert.equal(drawn.at(-1).text, `echo: ${prompt}`)
  assert.throws(() => controller.ask({ prompt: '   ' }), /Write a question first/)
})

test('cancel stops an answer that is still coming', async (t) => {
  const { connection, view, controller } = sidebar(t, { serverUrl: server.url, maxTokens: 1000 })
  await phase(connection, 'connected')
  const words = Array.from({ length: 300 }, (_, i) => `w${i}`).join(' ')
  const answer = controller.ask({ prompt: words })
  await until((f) => { const id = setInterval(f, 20); return () => clearInterval(id) },
    () => view.drawn(answer.key).some((a) => a.phase === 'streaming' && a.text.length > 20), 'some text')
  controller.cancel(answer.key)
  const done = await within(controller.finished(answer.key), 'the cancelled answer')
  assert.equal(done.phase, 'cancelled')
  assert.ok(done.text.length < `echo: ${words}`.length)
})

test('a question asked before the server is up waits, then goes; the state says so', async (t) => {
  const port = await freePort()
  const { connection, view, controller } = sidebar(t, { serverUrl: `ws://127.0.0.1:${port}` })
  await phase(connection, 'reconnecting')
  assert.match(connection.state.message, new RegExp(`^Cannot reach ws://127\\.0\\.0\\.1:${port}/default \\(.+\\); retrying…$`))
  const answer = controller.ask({ prompt: 'asked while the server was down' })
  assert.equal(view.drawn(answer.key).at(-1).phase, 'waiting')
  const late = await startServer(['--port', String(port)])
  t.after(() => late.stop())
  await phase(connection, 'connected')
  const done = await within(controller.finished(answer.key), 'the answer after the server came up')
  assert.equal(done.text, 'echo: asked while the server was down')
})

test('after a server restart the sidebar says it lost the connection, reconnects and answers', async (t) => {
  const port = await freePort()
  let mesh = await startServer(['--port', String(port)])
  t.after(() => mesh.stop())
  const { connection, controller } = sidebar(t, { serverUrl: mesh.url })
  await phase(connection, 'connected')
  const first = await within(controller.finished(controller.ask({ prompt: 'before' }).key), 'the first answer')
  assert.equal(first.text, 'echo: before')
  await mesh.stop()
  await phase(connection, 'reconnecting')
  assert.match(connection.state.message, /^Lost the connection to ws:\/\/127\.0\.0\.1:\d+\/default; reconnecting…$/)
  mesh = await startServer(['--port', String(port)])
  await phase(connection, 'connected')
  const second = await within(controller.finished(controller.ask({ prompt: 'after the restart' }).key), 'the answer after the restart')
  assert.equal(second.text, 'echo: after the restart')
})

test('a refused token says so and stops retrying; a good token connects', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'kanbanmesh-firefox-'))
  const secretFile = join(dir, 'secret')
  writeFileSync(secretFile, 's'.repeat(40))
  const secure = await startServer(['--auth-secret-file', secretFile])
  t.after(() => secure.stop())
  const { connection, view } = sidebar(t, { serverUrl: secure.url, token: 'not-a-token' })
  await phase(connection, 'refused')
  assert.match(connection.state.message, /^The server refused the token: .+\. Set another one in the options\.$/)

  connection.update({ ...connection.settings, token: '' })
  await until((f) => connection.onState(f), () => connection.state.phase === 'refused' && /wants an access token/.test(connection.state.message), 'the no-token refusal')

  const python = process.env.KANBANMESH_PYTHON ?? fileURLToPath(new URL('../../../.venv/bin/python', import.meta.url))
  const token = execFileSync(python, ['-m', 'kanbanmesh', 'token', 'create', '--role', 'client', '--subject', 'alice',
    '--boards', 'default', '--auth-secret-file', secretFile], { encoding: 'utf8' }).trim()
  connection.update({ ...connection.settings, token })
  await phase(connection, 'connected')
  assert.equal(view.states.at(-1).identity, 'alice (client)')
  // the options page's "Test connection" tells the same apart
  assert.deepEqual(await checkServer({ ...DEFAULTS, serverUrl: secure.url, token }), { ok: true, message: 'Reached board “default” as alice (client).' })
  const bad = await checkServer({ ...DEFAULTS, serverUrl: secure.url, token: 'not-a-token' })
  assert.equal(bad.ok, false)
  assert.match(bad.message, /^The server refused the token: .+\.$/)
  assert.match((await checkServer({ ...DEFAULTS, serverUrl: secure.url })).message, /^This server wants an access token/)
})

test('a server the browser may not reach is named as such', async (t) => {
  const port = await freePort()
  const { connection } = sidebar(t, { serverUrl: `ws://127.0.0.1:${port}` }, { mayReach: async () => false })
  await phase(connection, 'reconnecting')
  assert.match(connection.state.message, /Firefox does not let the extension reach 127\.0\.0\.1: open the options and save them to allow it\./)
})
