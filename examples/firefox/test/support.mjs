// What the extension's tests share: a fake of the few WebExtension APIs the extension uses
// (storage, permissions, menus, sidebarAction), a view that records what the sidebar draws,
// and the real kanbanmesh servers of the library's tests (web/test/support.mjs).

import { once } from 'node:events'
import { createServer } from 'node:net'

export { TIMEOUT_MS, startServer, within } from '../../../web/test/support.mjs'

/** One `storage` area with `get`/`set`/`remove`, reporting changes like Firefox does. */
class FakeArea {
  constructor (name, changed) {
    this.name = name
    this.items = {}
    this._changed = changed
  }

  async get (key) {
    return key in this.items ? { [key]: structuredClone(this.items[key]) } : {}
  }

  async set (items) {
    const changes = {}
    for (const [key, value] of Object.entries(items)) {
      changes[key] = { oldValue: this.items[key], newValue: structuredClone(value) }
      this.items[key] = structuredClone(value)
    }
    this._changed(changes, this.name)
  }

  async remove (key) {
    if (!(key in this.items)) return
    const changes = { [key]: { oldValue: this.items[key] } }
    delete this.items[key]
    this._changed(changes, this.name)
  }
}

/**
 * A `browser` object for the extension's modules. `granted` are the origins the extension may
 * reach (its `host_permissions`); `allowRequests` is what the user answers to a permission
 * prompt. Every call is recorded in `calls`, in order.
 */
export function fakeBrowser ({ granted = ['http://127.0.0.1/*', 'http://localhost/*'], allowRequests = true, userInput = true } = {}) {
  const calls = []
  const storageListeners = new Set()
  const changed = (changes, area) => {
    calls.push(`storage.${area}.changed`)
    // Firefox tells listeners after the write, from the event loop
    setTimeout(() => { for (const listener of storageListeners) listener(changes, area) }, 0)
  }
  const menuListeners = new Set()
  const installedListeners = new Set()
  const origins = new Set(granted)
  const api = {
    calls,
    menuItems: [],
    storage: {
      local: new FakeArea('local', changed),
      session: new FakeArea('session', changed),
      onChanged: {
        addListener: (listener) => storageListeners.add(listener),
        removeListener: (listener) => storageListeners.delete(listener)
      }
    },
    permissions: {
      async request ({ origins: wanted }) {
        calls.push(`permissions.request ${wanted.join(' ')}`)
        if (!userInput) throw new Error('permissions.request may only be called from a user input handler')
        if (wanted.every((origin) => origins.has(origin))) return true
        if (!allowRequests) return false
        for (const origin of wanted) origins.add(origin)
        return true
      },
      async contains ({ origins: wanted }) {
        return wanted.every((origin) => origins.has(origin))
      }
    },
    menus: {
      create (properties) {
        calls.push(`menus.create ${properties.id}`)
        api.menuItems.push(properties)
        return properties.id
      },
      onClicked: { addListener: (listener) => menuListeners.add(listener) }
    },
    runtime: {
      onInstalled: { addListener: (listener) => installedListeners.add(listener) }
    },
    sidebarAction: {
      async open () {
        calls.push('sidebarAction.open')
      }
    },
    /** What Firefox does once the extension is installed. */
    install () {
      for (const listener of installedListeners) listener({ reason: 'install' })
    },
    /** What Firefox does on a click on a menu entry. */
    click (info, tab) {
      for (const listener of menuListeners) listener(info, tab)
    }
  }
  return api
}

/** A SidebarView that keeps everything it was told to draw. */
export function recordingView () {
  return {
    states: [],
    models: [],
    answers: [],
    showConnection (state) { this.states.push(state) },
    showModels (models) { this.models.push(models) },
    showAnswer (answer) { this.answers.push(answer) },
    /** Every drawing of the answer with `key`, in order. */
    drawn (key) { return this.answers.filter((answer) => answer.key === key) }
  }
}

/** Resolve once `check()` is truthy on one of `emitter`'s events; bounded by TIMEOUT_MS. */
export function until (subscribe, check, what, timeoutMs = 30000) {
  return new Promise((resolve, reject) => {
    let off = () => {}
    const timer = setTimeout(() => { off(); reject(new Error(`timed out waiting for ${what}`)) }, timeoutMs)
    const test = (...args) => {
      const value = check(...args)
      if (value) { clearTimeout(timer); off(); resolve(value) }
    }
    off = subscribe(test)
    test()
  })
}

/** A TCP port nobody listens on now. */
export async function freePort () {
  const server = createServer()
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  const { port } = server.address()
  server.close()
  await once(server, 'close')
  return port
}
