// @ts-check
// What the page keeps in the browser between visits (localStorage, per server origin): the
// access token, entered once, and a name for our tasks when the server runs without tokens.

const TOKEN_KEY = 'kanbanmesh.token'
const NAME_KEY = 'kanbanmesh.name'

/** The stored token, or undefined. A `?token=` in the page's address is stored first. */
export function storedToken () {
  const url = new URL(window.location.href)
  const given = url.searchParams.get('token')
  if (given) {
    saveToken(given)
    url.searchParams.delete('token') // keep the secret out of the history and of screenshots
    window.history.replaceState(null, '', url)
  }
  return window.localStorage.getItem(TOKEN_KEY) || undefined
}

/** @param {string} token */
export function saveToken (token) {
  window.localStorage.setItem(TOKEN_KEY, token.trim())
}

export function forgetToken () {
  window.localStorage.removeItem(TOKEN_KEY)
}

/**
 * The owner our tasks carry on a server without tokens (with tokens the server wants the
 * token's subject): stable across reloads, so "your own tasks" stay yours.
 */
export function ownerName () {
  let name = window.localStorage.getItem(NAME_KEY)
  if (!name) {
    name = `web-${Math.random().toString(36).slice(2, 8)}`
    window.localStorage.setItem(NAME_KEY, name)
  }
  return name
}

/** The board this page shows: `?board=NAME`, else `default`. */
export function boardName () {
  return new URL(window.location.href).searchParams.get('board') || 'default'
}

/** The websocket URL of the server that served this page. */
export function serverUrl () {
  return window.location.origin.replace(/^http/, 'ws')
}
