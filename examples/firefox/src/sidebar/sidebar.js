// @ts-check
// The sidebar page: draws what the SidebarController says, sends what the user writes, and
// asks the questions the context menu leaves for this window.

import { Connection } from '../lib/connection.js'
import { PENDING_KEY, takePendingAsk } from '../lib/menu.js'
import { loadSettings, mayReach, onSettingsChange } from '../lib/settings.js'
import { SidebarController } from '../lib/sidebar.js'

/** @typedef {import('../lib/sidebar.js').Answer} Answer */
/** @typedef {import('../lib/sidebar.js').ModelChoice} ModelChoice */
/** @typedef {import('../lib/sidebar.js').SidebarView} SidebarView */
/** @typedef {import('../lib/connection.js').ConnectionState} ConnectionState */

const PHASE_LABELS = {
  waiting: 'waiting for the server',
  queued: 'queued',
  streaming: 'answering',
  succeeded: 'done',
  failed: 'failed',
  cancelled: 'cancelled'
}
const PILL_LABELS = {
  connecting: 'connecting…',
  connected: 'connected',
  reconnecting: 'reconnecting…',
  refused: 'refused',
  stopped: 'disconnected'
}

/** @template {HTMLElement} T @param {string} id @returns {T} */
function byId (id) {
  const node = document.getElementById(id)
  if (node === null) throw new Error(`the sidebar lacks #${id}`)
  return /** @type {T} */ (node)
}

/** @implements {SidebarView} */
class DomView {
  /** @param {(key: number) => void} onCancel */
  constructor (onCancel) {
    this.onCancel = onCancel
    this.pill = byId('connection')
    this.message = byId('connection-message')
    this.identity = byId('identity')
    this.list = byId('answers')
    this.empty = byId('empty')
    this.select = /** @type {HTMLSelectElement} */ (byId('model'))
    this.modelsNote = byId('models-note')
    this.template = /** @type {HTMLTemplateElement} */ (byId('answer-template'))
    /** @type {Map<number, HTMLElement>} */
    this.cards = new Map()
  }

  /** @param {ConnectionState} state */
  showConnection (state) {
    this.pill.dataset.state = state.phase
    this.pill.textContent = PILL_LABELS[state.phase]
    this.message.textContent = state.phase === 'connected' ? '' : state.message
    this.identity.textContent = state.phase === 'connected' ? `${state.message.replace(/\.$/, '')} as ${state.identity}` : ''
  }

  /** The model list follows the workers; the user's choice stays, even with no worker for it. @param {ModelChoice[]} models */
  showModels (models) {
    const chosen = this.select.value
    const options = [new Option('any model', '')]
    for (const { model, workers } of models) {
      options.push(new Option(`${model} (${workers} ${workers === 1 ? 'worker' : 'workers'})`, model))
    }
    if (chosen && !models.some((m) => m.model === chosen)) options.push(new Option(`${chosen} (no worker now)`, chosen))
    this.select.replaceChildren(...options)
    this.select.value = chosen
    this.modelsNote.textContent = models.length === 0 ? 'No worker is ready: questions wait until one is.' : ''
  }

  /** @param {Answer} answer */
  showAnswer (answer) {
    let card = this.cards.get(answer.key)
    const stick = this.list.scrollHeight - this.list.scrollTop - this.list.clientHeight < 24
    if (card === undefined) {
      card = /** @type {HTMLElement} */ (/** @type {DocumentFragment} */ (this.template.content.cloneNode(true)).firstElementChild)
      const key = answer.key
      const cancel = /** @type {HTMLButtonElement} */ (card.querySelector('.cancel'))
      cancel.addEventListener('click', () => this.onCancel(key))
      this.cards.set(key, card)
      this.empty.hidden = true
      this.list.append(card)
    }
    card.dataset.phase = answer.phase
    if (answer.taskId) card.dataset.task = answer.taskId
    text(card, '.question', answer.prompt)
    text(card, '.source', answer.source ? `from ${answer.source}` : '')
    text(card, '.phase', PHASE_LABELS[answer.phase])
    text(card, '.details', details(answer))
    text(card, '.text', answer.text)
    text(card, '.error', answer.error ?? '')
    const cancel = /** @type {HTMLButtonElement} */ (card.querySelector('.cancel'))
    cancel.hidden = !(answer.phase === 'queued' || answer.phase === 'streaming')
    if (stick) this.list.scrollTop = this.list.scrollHeight
  }

  /** The model the user picked ('' = any). */
  selectedModel () {
    return this.select.value
  }
}

/** @param {HTMLElement} card @param {string} selector @param {string} value */
function text (card, selector, value) {
  const node = /** @type {HTMLElement} */ (card.querySelector(selector))
  if (node.textContent !== value) node.textContent = value
}

/** The small print under a question: model, worker, timings. @param {Answer} answer */
function details (answer) {
  const parts = [answer.model || 'any model']
  if (answer.worker) parts.push(`on ${answer.worker}`)
  const t = answer.timings
  if (t) parts.push(`first token ${Math.round(t.ttft_ms)} ms`, `${Math.round(t.total_ms)} ms`, `${t.tokens_per_s.toFixed(1)} tok/s`)
  return `· ${parts.join(' · ')}`
}

async function main () {
  const settings = await loadSettings(browser)
  const connection = new Connection(settings, { owner: 'firefox', mayReach: (url) => mayReach(browser, url) })
  const view = new DomView((key) => controller.cancel(key))
  const controller = new SidebarController(connection, view)
  onSettingsChange(browser, (changed) => connection.update(changed))
  connection.start()

  const form = /** @type {HTMLFormElement} */ (byId('ask-form'))
  const prompt = /** @type {HTMLTextAreaElement} */ (byId('prompt'))
  const formError = byId('form-error')
  form.addEventListener('submit', (event) => {
    event.preventDefault()
    try {
      controller.ask({ prompt: prompt.value, model: view.selectedModel() })
    } catch (err) {
      formError.textContent = /** @type {Error} */ (err).message
      return prompt.focus()
    }
    formError.textContent = ''
    prompt.value = ''
    prompt.focus()
  })
  prompt.addEventListener('keydown', (event) => {
    if (event.key === 'Enter' && (event.ctrlKey || event.metaKey)) {
      event.preventDefault()
      form.requestSubmit()
    }
  })
  byId('open-options').addEventListener('click', () => { void browser.runtime.openOptionsPage() })

  // Questions from the context menu: one may wait already (the click opened this sidebar),
  // later ones arrive while it is open. Each is asked once.
  const windowId = (await browser.windows.getCurrent()).id ?? -1
  const asked = new Set()
  const takeAsk = async () => {
    const pending = await takePendingAsk(browser, windowId)
    if (pending === null || asked.has(pending.id)) return
    asked.add(pending.id)
    controller.ask({ prompt: pending.prompt, model: view.selectedModel(), source: pending.source })
  }
  browser.storage.onChanged.addListener((changes, area) => {
    if (area === 'session' && changes[PENDING_KEY]?.newValue !== undefined) void takeAsk()
  })
  await takeAsk()
  window.addEventListener('pagehide', () => { controller.dispose(); connection.stop() })
}

main().catch((err) => {
  byId('connection-message').textContent = `The sidebar could not start: ${err.message}`
  console.error(err)
})
