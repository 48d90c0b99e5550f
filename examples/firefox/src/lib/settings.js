// @ts-check
// The options store: which server, board and token the extension talks to, kept in
// `browser.storage.local` (never synced: the token is a secret of this machine). Validation is
// plain code, so the options page and the tests share it.

import { AuthError, whoami } from '../../../../web/src/index.js'

/**
 * @typedef {object} Settings
 * @property {string} serverUrl  `ws://HOST:PORT` or `wss://HOST:PORT`, no path
 * @property {string} board  the board's name
 * @property {string} token  an access token, or '' on a server without tokens
 * @property {number} maxTokens  the longest answer asked for, in tokens
 */
/**
 * The parts of the WebExtension API this module uses (`browser` in Firefox; a fake in tests).
 * @typedef {object} SettingsApi
 * @property {{ local: { get: (keys: string) => Promise<Record<string, any>>, set: (items: Record<string, any>) => Promise<void> },
 *   onChanged: { addListener: (listener: StorageListener) => void, removeListener: (listener: StorageListener) => void } }} storage
 * @property {{ request: (permissions: { origins: string[] }) => Promise<boolean>,
 *   contains: (permissions: { origins: string[] }) => Promise<boolean> }} permissions
 */
/** @typedef {(changes: Record<string, { oldValue?: any, newValue?: any }>, area: string) => void} StorageListener */

/** Where the settings live in `storage.local`. */
export const SETTINGS_KEY = 'settings'

/** @type {Readonly<Settings>} what `kanbanmesh up` serves out of the box */
export const DEFAULTS = Object.freeze({ serverUrl: 'ws://127.0.0.1:8765', board: 'default', token: '', maxTokens: 512 })

const BOARD_NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/ // BOARD_NAME_PATTERN, kanbanmesh/settings.py
const MAX_TOKENS_LIMIT = 1_000_000 // the server's schema: max_tokens 1..1 000 000

/** A setting the user typed that cannot be used; `field` names the input it came from. */
export class SettingsError extends Error {
  /** @param {keyof Settings} field @param {string} message */
  constructor (field, message) {
    super(message)
    this.name = 'SettingsError'
    this.field = field
  }
}

/**
 * The server URL as the library wants it: `ws://` or `wss://`, scheme and host only.
 * `http(s)://` (the board page's address) is accepted and turned into `ws(s)://`, a bare
 * `HOST:PORT` gets `ws://`.
 * @param {string} input
 * @returns {string}
 */
export function normalizeServerUrl (input) {
  let text = input.trim()
  if (!text) throw new SettingsError('serverUrl', 'Enter the server’s address, like ws://127.0.0.1:8765.')
  if (!/^[a-z][a-z0-9+.-]*:\/\//i.test(text)) text = `ws://${text}`
  let url
  try {
    url = new URL(text)
  } catch {
    throw new SettingsError('serverUrl', `“${input.trim()}” is not an address: try ws://HOST:PORT.`)
  }
  const scheme = { 'ws:': 'ws:', 'wss:': 'wss:', 'http:': 'ws:', 'https:': 'wss:' }[url.protocol]
  if (scheme === undefined) throw new SettingsError('serverUrl', `The address must start with ws:// or wss:// (not ${url.protocol}//).`)
  if (url.pathname !== '/' || url.search || url.hash) {
    throw new SettingsError('serverUrl', 'Give the server’s address only (no path): the board is set below.')
  }
  if (url.username || url.password) throw new SettingsError('serverUrl', 'Put the token in the token field, not in the address.')
  return `${scheme}//${url.host}`
}

/**
 * Check and tidy what the user typed; throws SettingsError naming the first bad field.
 * @param {Partial<Record<keyof Settings, unknown>>} input
 * @returns {Settings}
 */
export function validateSettings (input) {
  const serverUrl = normalizeServerUrl(String(input.serverUrl ?? ''))
  const board = String(input.board ?? '').trim() || DEFAULTS.board
  if (!BOARD_NAME.test(board)) {
    throw new SettingsError('board', 'A board name is 1 to 64 letters, digits, “_”, “.” or “-”, starting with a letter or digit.')
  }
  const token = String(input.token ?? '').trim()
  if (/\s/.test(token)) throw new SettingsError('token', 'A token has no spaces in it: paste it again.')
  const maxTokens = input.maxTokens === undefined || input.maxTokens === '' ? DEFAULTS.maxTokens : Number(input.maxTokens)
  if (!Number.isInteger(maxTokens) || maxTokens < 1 || maxTokens > MAX_TOKENS_LIMIT) {
    throw new SettingsError('maxTokens', 'Max tokens: a whole number from 1 to 1,000,000.')
  }
  return { serverUrl, board, token, maxTokens }
}

/**
 * The host permission the extension needs to talk to `serverUrl` (its HTTP side answers who
 * a token is; match patterns ignore the port).
 * @param {string} serverUrl  a normalized `ws(s)://` URL
 * @returns {string[]}
 */
export function originsFor (serverUrl) {
  const { hostname, protocol } = new URL(serverUrl)
  const http = protocol === 'wss:' ? 'https' : 'http'
  return [`${http}://${hostname}/*`]
}

/**
 * The stored settings, defaults filled in (a broken stored value falls back to the default).
 * @param {SettingsApi} api
 * @returns {Promise<Settings>}
 */
export async function loadSettings (api) {
  const stored = (await api.storage.local.get(SETTINGS_KEY))[SETTINGS_KEY] ?? {}
  try {
    return validateSettings({ ...DEFAULTS, ...stored })
  } catch {
    return { ...DEFAULTS }
  }
}

/**
 * Validate and store settings. Asks for the host permission first (Firefox shows the prompt
 * only when the call comes straight from a click, so this must be the first thing a click
 * handler awaits). Throws SettingsError on bad input or when the permission is declined.
 * @param {SettingsApi} api
 * @param {Partial<Record<keyof Settings, unknown>>} input
 * @returns {Promise<Settings>}
 */
export async function saveSettings (api, input) {
  const settings = validateSettings(input)
  const origins = originsFor(settings.serverUrl)
  let granted
  try {
    granted = await api.permissions.request({ origins })
  } catch {
    // not called from a click (a script, a test): enough if the permission is there already
    granted = await api.permissions.contains({ origins })
  }
  if (!granted) {
    throw new SettingsError('serverUrl', `Firefox was not allowed to reach ${new URL(settings.serverUrl).hostname}: the settings were not saved.`)
  }
  await api.storage.local.set({ [SETTINGS_KEY]: settings })
  return settings
}

/**
 * Whether the extension may reach `serverUrl` (it may not when the permission was withdrawn
 * in about:addons, or never granted for a server set by hand).
 * @param {SettingsApi} api
 * @param {string} serverUrl
 */
export function mayReach (api, serverUrl) {
  return api.permissions.contains({ origins: originsFor(serverUrl) })
}

/**
 * Call `listener(settings)` whenever the stored settings change.
 * @param {SettingsApi} api
 * @param {(settings: Settings) => void} listener
 * @returns {() => void} unsubscribe
 */
export function onSettingsChange (api, listener) {
  /** @type {StorageListener} */
  const changed = (changes, area) => {
    if (area === 'local' && SETTINGS_KEY in changes) void loadSettings(api).then(listener)
  }
  api.storage.onChanged.addListener(changed)
  return () => api.storage.onChanged.removeListener(changed)
}

/**
 * @typedef {object} ServerCheck  What the options page's "Test connection" says.
 * @property {boolean} ok
 * @property {string} message
 */

/**
 * Ask the server who the token is on the board, as a sentence for the user.
 * @param {Settings} settings
 * @returns {Promise<ServerCheck>}
 */
export async function checkServer (settings) {
  try {
    const identity = await whoami(settings.serverUrl, settings.board, settings.token || undefined)
    if (!identity.auth) return { ok: true, message: `Reached board “${settings.board}”: the server runs without tokens.` }
    return { ok: true, message: `Reached board “${settings.board}” as ${identity.subject} (${identity.role}).` }
  } catch (err) {
    if (err instanceof AuthError) {
      return { ok: false, message: settings.token ? `The server refused the token: ${err.message}.` : `This server wants an access token (${err.message}).` }
    }
    return { ok: false, message: `Cannot reach ${settings.serverUrl}: ${/** @type {Error} */ (err).message}` }
  }
}
