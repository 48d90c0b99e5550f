// @ts-check
// The live board page: connects with the JS library, draws the board at the browser's pace,
// submits and cancels tasks, asks for a token when the server wants one, and reconnects by
// itself (saying so) when the connection drops.

import { AuthError, connect, listCollections } from '../src/index.js'
import { BoardView } from './render.js'
import { boardName, forgetToken, ownerName, saveToken, serverUrl, storedToken } from './session.js'

/** @typedef {import('../src/index.js').Board} Board */

const RETRY_MS = [500, 1000, 2000, 4000, 5000] // between attempts to reach the server
const RECONNECTED_NOTICE_MS = 3000

/** @template {HTMLElement} T @param {string} id @returns {T} */
function byId (id) {
  const node = document.getElementById(id)
  if (node === null) throw new Error(`the page lacks #${id}`)
  return /** @type {T} */ (node)
}

class Page {
  constructor () {
    this.board = boardName()
    /** @type {Board | null} */
    this.connection = null
    this.attempt = 0
    this.drawPending = false
    this.view = new BoardView((id) => this.connection?.task(id).cancel())
    this.banner = byId('banner')
    this.pill = byId('connection')
    this.form = /** @type {HTMLFormElement} */ (byId('submit-form'))
    this.formError = byId('form-error')
    this.dialog = /** @type {HTMLDialogElement} */ (byId('token-dialog'))
    /** @type {ReturnType<typeof setTimeout> | undefined} */
    this.noticeTimer = undefined
    byId('board-name').textContent = this.board
    document.title = `${this.board} · kanbanmesh`
    this.bindForm()
    this.bindToken()
    // Tokens/s is about the last minute: let it decay when nothing happens.
    setInterval(() => { if (this.connection) this.view.renderThroughput(this.connection.snapshot().done) }, 2000)
  }

  async start () {
    this.setPill('connecting', 'connecting…')
    const token = storedToken()
    byId('forget-token').hidden = token === undefined
    let board
    try {
      board = await connect(serverUrl(), this.board, { token, owner: ownerName(), timeoutMs: 10000 })
    } catch (err) {
      if (err instanceof AuthError) return this.askToken(err, token)
      const wait = RETRY_MS[Math.min(this.attempt++, RETRY_MS.length - 1)]
      this.setPill('reconnecting', 'reconnecting…')
      this.say(`Cannot reach the server (${/** @type {Error} */ (err).message}); trying again…`)
      setTimeout(() => { void this.start() }, wait)
      return
    }
    this.attempt = 0
    this.connection = board
    byId('identity').textContent = board.identity.auth
      ? `signed in as ${board.owner} (${board.identity.role})`
      : `as ${board.owner} (server without tokens)`
    board.onBoardChange(() => this.draw())
    board.onWorkersChange((workers) => this.view.renderWorkers(workers))
    board.onStatus((status) => this.onStatus(status))
    board.onRefused((error) => {
      // The library started over with a fresh copy of the board (the refused change is gone).
      this.notice(`The server refused a change: ${error.message}. Carrying on with a fresh copy of the board.`)
    })
    this.onStatus(board.status)
    this.view.renderWorkers(board.workers())
    this.draw()
    void this.offerCollections(token)
  }

  /**
   * Offer the server's retrieval collections in the form's RAG field (still free text: a
   * collection ingested later can be typed). Quietly nothing when they cannot be listed.
   * @param {string | undefined} token
   */
  async offerCollections (token) {
    let collections
    try {
      collections = await listCollections(serverUrl(), this.board, token)
    } catch {
      return
    }
    byId('rag-collections').replaceChildren(...collections.map((collection) => {
      const option = document.createElement('option')
      option.value = collection.name
      option.label = `${collection.name} (${collection.chunks} chunks)`
      return option
    }))
  }

  /** @param {import('../src/board.js').Status} status */
  onStatus ({ status, error }) {
    if (status === 'connected') {
      this.setPill('connected', 'live')
      if (this.banner.dataset.kind === 'trouble') this.notice('Reconnected.')
    } else if (status === 'reconnecting') {
      this.setPill('reconnecting', 'reconnecting…')
      this.say('Connection to the server lost; reconnecting…')
    } else if (status === 'refused') {
      this.connection = null
      if (error instanceof AuthError) return this.askToken(error, storedToken())
      // Closed for good (a fatal close code, or an expired token): connect again afresh.
      this.setPill('reconnecting', 'refused')
      this.say(`The server closed the connection: ${error?.message}. Connecting again…`)
      setTimeout(() => { void this.start() }, RETRY_MS[1])
    }
  }

  /** Redraw at most once per frame: a streaming board changes far more often than that. */
  draw () {
    if (this.drawPending) return
    this.drawPending = true
    window.requestAnimationFrame(() => {
      this.drawPending = false
      if (this.connection) this.view.render(this.connection.snapshot(), this.connection.owner)
    })
  }

  bindForm () {
    const prompt = /** @type {HTMLTextAreaElement} */ (byId('prompt'))
    prompt.addEventListener('keydown', (event) => {
      if (event.key === 'Enter' && (event.ctrlKey || event.metaKey)) {
        event.preventDefault()
        this.form.requestSubmit()
      }
    })
    this.form.addEventListener('submit', (event) => {
      event.preventDefault()
      this.submit(prompt)
    })
  }

  /** @param {HTMLTextAreaElement} prompt */
  submit (prompt) {
    const data = new FormData(this.form)
    const text = String(data.get('prompt') ?? '').trim()
    const maxTokens = Number(data.get('max_tokens'))
    const rag = String(data.get('rag') ?? '').trim()
    let problem = ''
    if (!text) problem = 'Write a prompt first.'
    else if (!Number.isInteger(maxTokens) || maxTokens < 1 || maxTokens > 1_000_000) problem = 'Max tokens: a whole number from 1 to 1,000,000.'
    else if (this.connection === null) problem = 'Not connected to the server yet.'
    this.formError.textContent = problem
    if (problem || this.connection === null) return prompt.focus()
    try {
      this.connection.submit({
        prompt: text,
        model: String(data.get('model') ?? '').trim(),
        params: { max_tokens: maxTokens },
        ...(rag ? { rag: { collection: rag, k: 4 } } : {})
      })
    } catch (err) {
      this.formError.textContent = `Not submitted: ${/** @type {Error} */ (err).message}`
      return
    }
    prompt.value = ''
    prompt.focus()
  }

  bindToken () {
    const input = /** @type {HTMLInputElement} */ (byId('token-input'))
    byId('token-form').addEventListener('submit', () => {
      if (!input.value.trim()) return
      saveToken(input.value)
      input.value = ''
      void this.start()
    })
    // Without a token there is nothing to show: keep the dialog until one is entered.
    this.dialog.addEventListener('cancel', (event) => event.preventDefault())
    byId('forget-token').addEventListener('click', () => {
      forgetToken()
      this.connection?.close()
      this.connection = null
      void this.start()
    })
  }

  /** @param {AuthError} error @param {string | undefined} token */
  askToken (error, token) {
    this.setPill('refused', 'no access')
    const reason = token === undefined
      ? 'This server wants an access token.'
      : `The server refused the stored token: ${error.message}.`
    byId('token-reason').textContent = reason
    this.say(reason)
    if (!this.dialog.open) this.dialog.showModal()
  }

  /** @param {string} state @param {string} label */
  setPill (state, label) {
    this.pill.dataset.state = state
    this.pill.textContent = label
  }

  /** A lasting message in the banner (connection trouble). @param {string} text */
  say (text) {
    clearTimeout(this.noticeTimer)
    this.banner.dataset.kind = 'trouble'
    this.banner.textContent = text
  }

  /** A short message that goes away by itself. @param {string} text */
  notice (text) {
    this.banner.dataset.kind = 'notice'
    this.banner.textContent = text
    clearTimeout(this.noticeTimer)
    this.noticeTimer = setTimeout(() => { this.banner.textContent = ''; delete this.banner.dataset.kind }, RECONNECTED_NOTICE_MS)
  }
}

void new Page().start()
