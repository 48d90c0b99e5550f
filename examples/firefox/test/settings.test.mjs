// The options store: validation, storage, the host permission asked before saving, and the
// options page's "Test connection" against real servers.

import assert from 'node:assert/strict'
import { after, before, test } from 'node:test'

import { DEFAULTS, SETTINGS_KEY, SettingsError, checkServer, loadSettings, mayReach, normalizeServerUrl, onSettingsChange, originsFor, saveSettings, validateSettings } from '../src/lib/settings.js'
import { fakeBrowser, freePort, startServer, until } from './support.mjs'

let server

before(async () => { server = await startServer() })
after(async () => { await server?.stop() })

test('server addresses are tidied into ws:// or wss:// with host and port only', () => {
  assert.equal(normalizeServerUrl(' ws://127.0.0.1:8765/ '), 'ws://127.0.0.1:8765')
  assert.equal(normalizeServerUrl('http://mesh.lan:8765'), 'ws://mesh.lan:8765')
  assert.equal(normalizeServerUrl('https://mesh.example.org'), 'wss://mesh.example.org')
  assert.equal(normalizeServerUrl('mesh.lan:9000'), 'ws://mesh.lan:9000')
  const refused = (input, pattern) => assert.throws(() => normalizeServerUrl(input), (err) => err instanceof SettingsError && err.field === 'serverUrl' && pattern.test(err.message))
  refused('', /Enter the server’s address/)
  refused('ftp://mesh.lan', /must start with ws:\/\/ or wss:\/\//)
  refused('ws://mesh.lan:8765/default', /no path/)
  refused('ws://me:secret@mesh.lan', /token field/)
  refused('ws://exa mple', /not an address/)
})

test('validateSettings names the field that is wrong', () => {
  assert.deepEqual(validateSettings({ serverUrl: 'ws://h:1', board: '', token: ' t0k ', maxTokens: '256' }),
    { serverUrl: 'ws://h:1', board: 'default', token: 't0k', maxTokens: 256 })
  const field = (input) => { try { validateSettings({ ...DEFAULTS, ...input }) } catch (err) { return err.field } }
  assert.equal(field({ board: 'no/slash' }), 'board')
  assert.equal(field({ token: 'two words' }), 'token')
  assert.equal(field({ maxTokens: '1.5' }), 'maxTokens')
  assert.equal(field({ maxTokens: 0 }), 'maxTokens')
  assert.equal(field({ maxTokens: 2_000_000 }), 'maxTokens')
})

test('saving asks for the host permission first, then stores; a declined permission saves nothing', async () => {
  const browser = fakeBrowser()
  assert.deepEqual(await loadSettings(browser), DEFAULTS)
  const saved = await saveSettings(browser, { serverUrl: 'http://mesh.lan:8765', board: 'team', token: 'abc', maxTokens: 100 })
  assert.deepEqual(saved, { serverUrl: 'ws://mesh.lan:8765', board: 'team', token: 'abc', maxTokens: 100 })
  assert.deepEqual(browser.calls, ['permissions.request http://mesh.lan/*', 'storage.local.changed'])
  assert.deepEqual(await loadSettings(browser), saved)
  assert.equal(await mayReach(browser, saved.serverUrl), true)
  assert.deepEqual(originsFor('wss://mesh.example.org:443'), ['https://mesh.example.org/*'])

  const stingy = fakeBrowser({ allowRequests: false })
  await assert.rejects(saveSettings(stingy, { ...DEFAULTS, serverUrl: 'ws://elsewhere:1' }), (err) => err instanceof SettingsError && /not allowed to reach elsewhere/.test(err.message))
  assert.deepEqual(stingy.storage.local.items, {})
  // the default server is in the manifest's host_permissions: no prompt needed
  await saveSettings(stingy, DEFAULTS)
  assert.deepEqual(stingy.storage.local.items[SETTINGS_KEY], DEFAULTS)

  // saved by a script, not a click: Firefox refuses to prompt; a granted origin still saves
  const scripted = fakeBrowser({ userInput: false })
  await saveSettings(scripted, { ...DEFAULTS, serverUrl: 'ws://localhost:9000' })
  await assert.rejects(saveSettings(scripted, { ...DEFAULTS, serverUrl: 'ws://elsewhere:1' }), SettingsError)
  assert.equal(scripted.storage.local.items[SETTINGS_KEY].serverUrl, 'ws://localhost:9000')
})

test('a broken stored value falls back to the defaults; changes reach listeners', async () => {
  const browser = fakeBrowser()
  await browser.storage.local.set({ [SETTINGS_KEY]: { serverUrl: 'gopher://x', board: 'b' } })
  assert.deepEqual(await loadSettings(browser), DEFAULTS)
  const seen = []
  const off = onSettingsChange(browser, (settings) => seen.push(settings))
  await saveSettings(browser, { ...DEFAULTS, board: 'other' })
  await until((f) => { const id = setInterval(f, 10); return () => clearInterval(id) }, () => seen.some((settings) => settings.board === 'other'), 'the change')
  off()
})

test('Test connection: a server reached, one that cannot be', async (t) => {
  const ok = await checkServer({ ...DEFAULTS, serverUrl: server.url })
  assert.deepEqual(ok, { ok: true, message: 'Reached board “default”: the server runs without tokens.' })
  const port = await freePort()
  const down = await checkServer({ ...DEFAULTS, serverUrl: `ws://127.0.0.1:${port}` })
  assert.equal(down.ok, false)
  assert.match(down.message, new RegExp(`^Cannot reach ws://127\\.0\\.0\\.1:${port}: `))
})
