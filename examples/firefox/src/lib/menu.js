// @ts-check
// "Ask kanbanmesh" on selected text: the background page's click handler opens the sidebar
// and leaves the question in `storage.session`, where the sidebar of that window picks it up
// (at once when open, on load when it was just opened).

/** The context menu entry's id. */
export const MENU_ID = 'kanbanmesh-ask'
/** Where a question waits for the sidebar, in `storage.session`. */
export const PENDING_KEY = 'pendingAsk'
/** The longest question sent from a selection (the server refuses a task above 1 MiB). */
export const MAX_SELECTION = 100_000

/**
 * @typedef {object} PendingAsk  A question from the context menu, waiting for a sidebar.
 * @property {string} id  unique, so a sidebar asks it once
 * @property {string} prompt  the selected text
 * @property {number} windowId  the window whose sidebar should ask it
 * @property {string} [source]  the page's title or address
 * @property {number} at  when it was asked (ms since the epoch)
 */
/**
 * @typedef {object} MenuClick  What `menus.onClicked` passes (the fields used here).
 * @property {string | number} menuItemId
 * @property {string} [selectionText]
 */
/**
 * @typedef {object} MenuTab  The tab of the click (the fields used here).
 * @property {number} [windowId]
 * @property {string} [title]
 * @property {string} [url]
 */
/**
 * @typedef {object} MenuApi  The parts of the WebExtension API the handler uses.
 * @property {{ create: (properties: { id: string, title: string, contexts: ['selection'] }) => unknown }} menus
 * @property {{ open: () => Promise<void> }} sidebarAction
 * @property {{ session: { set: (items: Record<string, any>) => Promise<void> } }} storage
 */

/**
 * Add the entry to the context menu of selected text (call from `runtime.onInstalled`: menus
 * persist across restarts of the background page).
 * @param {Pick<MenuApi, 'menus'>} api
 */
export function createMenu (api) {
  api.menus.create({ id: MENU_ID, title: 'Ask kanbanmesh', contexts: ['selection'] })
}

/**
 * Handle a click on the entry: open the sidebar and hand it the selected text. Returns the
 * question handed over, or null for a click on another entry or an empty selection.
 *
 * `sidebarAction.open()` is called before anything is awaited: Firefox opens a sidebar only
 * from the click's own handler.
 * @param {MenuApi} api
 * @param {MenuClick} info
 * @param {MenuTab | undefined} tab
 * @returns {Promise<PendingAsk | null>}
 */
export async function handleMenuClick (api, info, tab) {
  if (info.menuItemId !== MENU_ID) return null
  const prompt = (info.selectionText ?? '').trim().slice(0, MAX_SELECTION)
  if (!prompt) return null
  const opened = api.sidebarAction.open()
  /** @type {PendingAsk} */
  const pending = {
    id: `${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 10)}`,
    prompt,
    windowId: tab?.windowId ?? -1,
    at: Date.now()
  }
  const source = tab?.title || tab?.url
  if (source) pending.source = source
  await api.storage.session.set({ [PENDING_KEY]: pending })
  await opened
  return pending
}

/**
 * The background page's wiring: the entry is created on install and update (menus outlive
 * the event page), clicks go to `handleMenuClick`.
 * @param {MenuApi & { runtime: { onInstalled: { addListener: (listener: () => void) => void } },
 *   menus: { onClicked: { addListener: (listener: (info: MenuClick, tab?: MenuTab) => void) => void } } }} api
 */
export function wireMenu (api) {
  api.runtime.onInstalled.addListener(() => createMenu(api))
  api.menus.onClicked.addListener((info, tab) => {
    handleMenuClick(api, info, tab).catch((err) => console.error('kanbanmesh: could not hand the question to the sidebar', err))
  })
}

/**
 * The sidebar's side: take the waiting question meant for `windowId`, if any, and remove it
 * so that no other sidebar asks it again.
 * @param {{ storage: { session: { get: (key: string) => Promise<Record<string, any>>, remove: (key: string) => Promise<void> } } }} api
 * @param {number} windowId
 * @returns {Promise<PendingAsk | null>}
 */
export async function takePendingAsk (api, windowId) {
  const pending = /** @type {PendingAsk | undefined} */ ((await api.storage.session.get(PENDING_KEY))[PENDING_KEY])
  if (pending === undefined || (pending.windowId !== windowId && pending.windowId !== -1)) return null
  await api.storage.session.remove(PENDING_KEY)
  return pending
}
