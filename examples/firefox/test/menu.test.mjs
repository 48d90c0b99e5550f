// "Ask kanbanmesh" on selected text: the background page's handler with a fake `browser`,
// then the question it hands over asked by a sidebar against a real server.

import assert from 'node:assert/strict'
import { after, before, test } from 'node:test'
import WebSocket from 'ws'

import { Connection } from '../src/lib/connection.js'
import { MAX_SELECTION, MENU_ID, PENDING_KEY, handleMenuClick, takePendingAsk, wireMenu } from '../src/lib/menu.js'
import { DEFAULTS } from '../src/lib/settings.js'
import { SidebarController } from '../src/lib/sidebar.js'
import { fakeBrowser, recordingView, startServer, within } from './support.mjs'

let server

before(async () => { server = await startServer() })
after(async () => { await server?.stop() })

const TAB = { windowId: 7, title: 'A page about foxes', url: 'https://example.org/foxes' }

test('the entry is offered on selected text only, created when the extension is installed', () => {
  const browser = fakeBrowser()
  wireMenu(browser)
  assert.deepEqual(browser.menuItems, [])
  browser.install()
  assert.deepEqual(browser.menuItems, [{ id: MENU_ID, title: 'Ask kanbanmesh', contexts: ['selection'] }])
})

test('a click opens the sidebar before anything else and leaves the question for that window', async () => {
  const browser = fakeBrowser()
  const pending = await handleMenuClick(browser, { menuItemId: MENU_ID, selectionText: '  What do foxes eat?  ' }, TAB)
  // Firefox opens a sidebar only from the click's own handler: open() comes first.
  assert.deepEqual(browser.calls, ['sidebarAction.open', 'storage.session.changed'])
  assert.equal(pending.prompt, 'What do foxes eat?')
  assert.equal(pending.source, 'A page about foxes')
  assert.deepEqual(browser.storage.session.items[PENDING_KEY], pending)
  assert.equal(await takePendingAsk(browser, 8), null, "another window's sidebar leaves it")
  assert.deepEqual(await takePendingAsk(browser, 7), pending)
  assert.equal(await takePendingAsk(browser, 7), null, 'taken once')
})

test('other entries and empty selections are ignored; huge selections are cut', async () => {
  const browser = fakeBrowser()
  assert.equal(await handleMenuClick(browser, { menuItemId: 'other', selectionText: 'x' }, TAB), null)
  assert.equal(await handleMenuClick(browser, { menuItemId: MENU_ID, selectionText: '   ' }, TAB), null)
  assert.deepEqual(browser.calls, [])
  const long = await handleMenuClick(browser, { menuItemId: MENU_ID, selectionText: 'x'.repeat(MAX_SELECTION + 5) }, undefined)
  assert.equal(long.prompt.length, MAX_SELECTION)
  assert.equal(long.windowId, -1)
  assert.equal(long.source, undefined)
})

test('selected text asked from the context menu streams its answer into the sidebar', async (t) => {
  const browser = fakeBrowser()
  wireMenu(browser) // the background page
  const connection = new Connection({ ...DEFAULTS, serverUrl: server.url }, { WebSocket })
  const view = recordingView()
  const controller = new SidebarController(connection, view)
  t.after(() => { controller.dispose(); connection.stop() })
  connection.start()
  // the sidebar page's wiring: ask what the menu leaves for this window
  const asked = new Promise((resolve) => {
    browser.storage.onChanged.addListener(async (changes, area) => {
      if (area !== 'session' || changes[PENDING_KEY]?.newValue === undefined) return
      const pending = await takePendingAsk(browser, TAB.windowId)
      if (pending) resolve(controller.ask({ prompt: pending.prompt, source: pending.source }))
    })
  })
  browser.click({ menuItemId: MENU_ID, selectionText: 'Foxes are small omnivores.' }, TAB)
  const answer = await within(asked, 'the sidebar to take the question')
  const done = await within(controller.finished(answer.key), 'the answer')
  assert.equal(done.text, 'echo: Foxes are small omnivores.')
  assert.equal(done.source, 'A page about foxes')
  assert.ok(view.drawn(answer.key).some((a) => a.phase === 'streaming'), 'it streamed')
})
