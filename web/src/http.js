// @ts-check
// The HTTP side of the server (same host and port as the websocket): who a token is, a task
// that has left the live board for the archive, and the retrieval collections tasks may name.

import { AuthError, ConnectError } from './errors.js'

/**
 * @typedef {object} Identity  What the server makes of a token on a board.
 * @property {boolean} auth  whether the server wants tokens at all
 * @property {string | null} subject  the token's subject (the owner of its tasks), null if open
 * @property {string} role  client | worker | broker | admin
 * @property {{ status: number, reason: string } | null} refused  why the token was refused
 */

/** The HTTP base of a `ws://` or `wss://` server URL. @param {string} url */
export function httpBase (url) {
  return url.replace(/^ws(s?):\/\//, 'http$1://').replace(/\/+$/, '')
}

/**
 * GET a board route; resolves with the JSON body, or null on 404.
 * @param {string} url  the server's ws:// URL
 * @param {string} path  below /boards/<board>
 * @param {string} board
 * @param {string | undefined} token
 */
async function getJson (url, board, path, token) {
  const query = token ? `?token=${encodeURIComponent(token)}` : ''
  let reply
  try {
    reply = await fetch(`${httpBase(url)}/boards/${encodeURIComponent(board)}${path}${query}`)
  } catch (err) {
    throw new ConnectError(`cannot reach ${httpBase(url)}: ${/** @type {Error} */ (err).message}`)
  }
  const body = await reply.json().catch(() => ({}))
  if (reply.status === 401 || reply.status === 403) throw new AuthError(body.error ?? reply.statusText, reply.status)
  if (reply.status === 404) return null
  if (!reply.ok) throw new ConnectError(`${path}: HTTP ${reply.status} ${body.error ?? ''}`)
  return body
}

/**
 * Who `token` is on `board`; rejects with AuthError when the server refuses it (a browser
 * cannot read the HTTP status of a refused websocket upgrade, so ask here first).
 * @param {string} url @param {string} board @param {string | undefined} token
 * @returns {Promise<Identity>}
 */
export async function whoami (url, board, token) {
  const body = await getJson(url, board, '/whoami', token)
  if (body === null) throw new ConnectError(`no board ${JSON.stringify(board)} on ${httpBase(url)}`)
  if (body.refused) throw new AuthError(body.refused.reason, body.refused.status)
  return body
}

/**
 * A task from the live board or the archive: `{ column, entry }` or null when unknown.
 * @param {string} url @param {string} board @param {string | undefined} token @param {string} id
 * @returns {Promise<{ column: string, entry: Record<string, any> } | null>}
 */
export function lookupTask (url, board, token, id) {
  return getJson(url, board, `/tasks/${encodeURIComponent(id)}`, token)
}

/**
 * @typedef {object} RagCollection  A retrieval collection a task may name in `rag`.
 * @property {string} name
 * @property {number} chunks  how many chunks it holds
 * @property {string} model  the embedding model
 * @property {string} index  exact | hnsw
 */

/**
 * The retrieval collections of the server, as a task on `board` may name them.
 * @param {string} url @param {string} board @param {string | undefined} token
 * @returns {Promise<RagCollection[]>}
 */
export async function listCollections (url, board, token) {
  const body = await getJson(url, board, '/rag/collections', token)
  if (body === null) throw new ConnectError(`no board ${JSON.stringify(board)} on ${httpBase(url)}`)
  return body.collections
}
