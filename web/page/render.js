// @ts-check
// Drawing the board: columns of cards and the workers panel. Cards are kept by task id and
// updated in place (text only where it changed), so streaming text does not flicker and a
// focused button keeps its focus while the board changes around it.

import { COLUMNS } from '../src/index.js'

/** @typedef {import('../src/tasks.js').Task} Task */
/** @typedef {import('../src/board.js').Worker} Worker */
/** @typedef {import('../src/tasks.js').Snapshot} Snapshot */

/** Cards drawn per column; the count in the header still says how many there are. */
const MAX_CARDS = 60
const THROUGHPUT_WINDOW_MS = 60_000

/** @param {string} id */
function byId (id) {
  const el = document.getElementById(id)
  if (el === null) throw new Error(`the page lacks #${id}`)
  return el
}

/**
 * An element with a class and, optionally, text.
 * @template {keyof HTMLElementTagNameMap} K
 * @param {K} tag @param {string} className @param {string} [text]
 * @returns {HTMLElementTagNameMap[K]}
 */
function el (tag, className, text) {
  const node = document.createElement(tag)
  node.className = className
  if (text !== undefined) node.textContent = text
  return node
}

/** Set text only when it changed (no relayout, no lost selection). @param {Element} node @param {string} text */
function setText (node, text) {
  if (node.textContent !== text) node.textContent = text
}

/** @param {HTMLElement} node @param {boolean} shown */
function show (node, shown) {
  if (node.hidden === shown) node.hidden = !shown
}

/** @param {number | undefined} ms */
export function duration (ms) {
  if (typeof ms !== 'number' || !Number.isFinite(ms)) return '–'
  return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(1)} s`
}

/** What the task asks, in one line: the prompt, or the last user turn. @param {Task} task */
export function askedText (task) {
  if (typeof task.prompt === 'string') return task.prompt
  /** @type {import('../src/tasks.js').Message[]} */
  const turns = Array.isArray(task.messages) ? task.messages : []
  const users = turns.filter((m) => m?.role === 'user')
  return String((users.at(-1) ?? turns.at(-1))?.content ?? '')
}

/**
 * The parents a task held back for its graph still waits for (protocol section 12): those of
 * its `after` not seen succeeded; [] once the server let it go.
 * @param {Task} task @param {Set<string>} succeeded
 */
export function waitsFor (task, succeeded) {
  if (task.column !== 'todo' || !Array.isArray(task.after)) return []
  if (!Array.isArray(task.enriching) || !task.enriching.includes('after')) return []
  return task.after.filter((id) => !succeeded.has(id))
}

/** Timings of a finished task, in words. @param {Task} task */
export function timingsText (task) {
  const t = task.timings
  const parts = []
  if (t) {
    parts.push(`queued ${duration(t.queued_ms)}`, `first token ${duration(t.ttft_ms)}`, `total ${duration(t.total_ms)}`)
    if (typeof t.tokens_per_s === 'number') parts.push(`${t.tokens_per_s.toFixed(1)} tok/s`)
  }
  if (typeof task.tokens === 'number') parts.push(`${task.tokens} tokens`)
  return parts.join(' · ')
}

/**
 * Completion tokens per second over the last minute, from the tasks that finished in it.
 * @param {Task[]} done @param {number} now
 */
export function throughput (done, now) {
  let tokens = 0
  for (const task of done) {
    if (typeof task.finished_at === 'number' && now - task.finished_at <= THROUGHPUT_WINDOW_MS) {
      tokens += Number(task.tokens ?? task.usage?.completion_tokens ?? 0)
    }
  }
  return tokens / (THROUGHPUT_WINDOW_MS / 1000)
}

/** One task's card; `update` redraws it from the task. */
class Card {
  /** @param {string} id @param {(id: string) => void} onCancel */
  constructor (id, onCancel) {
    this.node = el('li', 'card')
    this.node.dataset.id = id
    const head = el('div', 'card-head')
    this.status = el('span', 'status')
    this.idLabel = el('code', 'task-id', id)
    this.idLabel.title = id
    this.owner = el('span', 'owner')
    head.append(this.status, this.idLabel, this.owner)
    this.asked = el('p', 'asked')
    this.meta = el('p', 'meta')
    this.output = el('pre', 'output')
    this.output.tabIndex = 0 // long output scrolls: reachable with the keyboard
    this.error = el('p', 'error')
    this.timings = el('p', 'timings')
    this.cancel = el('button', 'cancel', 'Cancel')
    this.cancel.type = 'button'
    this.cancel.setAttribute('aria-label', `Cancel task ${id}`)
    this.cancel.addEventListener('click', () => {
      this.cancel.disabled = true
      onCancel(id)
    })
    this.node.append(head, this.asked, this.meta, this.output, this.error, this.timings, this.cancel)
  }

  /**
   * @param {Task} task
   * @param {boolean} mine
   * @param {Map<string, string>} workerNames  worker id -> name, of the workers present
   * @param {Set<string>} succeeded  ids of the tasks in done that succeeded
   */
  update (task, mine, workerNames, succeeded) {
    const done = task.column === 'done'
    this.node.dataset.column = task.column
    this.node.dataset.status = task.status ?? ''
    this.node.classList.toggle('mine', mine)
    setText(this.status, done ? String(task.status ?? '?') : task.column)
    setText(this.owner, [task.owner, task.model].filter(Boolean).join(' · '))
    setText(this.asked, askedText(task))
    const meta = []
    if (task.worker && task.column !== 'todo') meta.push(`worker ${workerNames.get(task.worker) ?? task.worker}`)
    if (Number(task.attempt ?? 1) > 1) meta.push(`attempt ${task.attempt}`)
    if (task.cancel === true && !done) meta.push('cancelling…')
    const waits = waitsFor(task, succeeded)
    if (waits.length > 0) meta.push(`waits for: ${waits.join(', ')}`)
    this.node.classList.toggle('waiting', waits.length > 0)
    setText(this.meta, meta.join(' · '))
    show(this.meta, meta.length > 0)
    const text = done ? String(task.result ?? task.output ?? '') : (task.output ?? '')
    const follow = this.output.scrollTop + this.output.clientHeight >= this.output.scrollHeight - 4
    setText(this.output, text)
    if (follow) this.output.scrollTop = this.output.scrollHeight // stay at the end while it streams
    show(this.output, task.column === 'doing' || (done && text !== ''))
    const error = task.error ? `${task.error.code}: ${task.error.message}` : ''
    setText(this.error, error)
    show(this.error, error !== '')
    const timings = done ? timingsText(task) : ''
    setText(this.timings, timings)
    show(this.timings, timings !== '')
    show(this.cancel, mine && !done)
    if (task.cancel === true) this.cancel.disabled = true
  }
}

/** The four columns, the totals and the workers panel of the page. */
export class BoardView {
  /** @param {(id: string) => void} onCancel called when a Cancel button is pressed */
  constructor (onCancel) {
    this._onCancel = onCancel
    /** @type {Map<string, Card>} */
    this._cards = new Map()
    const sections = COLUMNS.map(columnSection)
    byId('columns').replaceChildren(...sections.map(({ section }) => section))
    this._columns = Object.fromEntries(sections.map(({ column, list, count }) => [
      column, { list, count, more: el('li', 'more'), total: byId(`total-${column}`) }
    ]))
    this._tokensPerS = byId('tokens-per-s')
    this._workers = byId('workers')
    this._workersCount = byId('workers-count')
    this._noWorkers = byId('no-workers')
    this._models = byId('models')
    /** @type {Map<string, string>} */
    this._workerNames = new Map()
  }

  /** @param {Snapshot} board @param {string} owner */
  render (board, owner) {
    const live = new Set()
    const succeeded = new Set(board.done.filter((t) => t.status === 'succeeded').map((t) => t.id))
    for (const column of COLUMNS) {
      const { list, more, count, total } = this._columns[column]
      const tasks = board[column]
      setText(count, String(tasks.length))
      setText(total, String(tasks.length))
      const nodes = tasks.slice(0, MAX_CARDS).map((task) => {
        live.add(task.id)
        let card = this._cards.get(task.id)
        if (card === undefined) {
          card = new Card(task.id, this._onCancel)
          this._cards.set(task.id, card)
        }
        card.update(task, task.owner === owner, this._workerNames, succeeded)
        return card.node
      })
      if (tasks.length > MAX_CARDS) {
        setText(more, `and ${tasks.length - MAX_CARDS} more`)
        nodes.push(more)
      }
      placeInOrder(list, nodes)
    }
    for (const [id, card] of this._cards) {
      if (!live.has(id)) {
        card.node.remove()
        this._cards.delete(id)
      }
    }
    this.renderThroughput(board.done)
  }

  /** @param {Task[]} done */
  renderThroughput (done) {
    const rate = throughput(done, Date.now())
    setText(this._tokensPerS, rate >= 10 ? rate.toFixed(0) : rate.toFixed(1))
  }

  /** @param {Worker[]} workers */
  renderWorkers (workers) {
    for (const worker of workers) this._workerNames.set(worker.id, worker.name || worker.id)
    setText(this._workersCount, String(workers.length))
    show(this._noWorkers, workers.length === 0)
    this._workers.replaceChildren(...workers.map(workerItem))
    const models = [...new Set(workers.flatMap((w) => (Array.isArray(w.models) ? w.models : [])))].sort()
    this._models.replaceChildren(...models.map((model) => {
      const option = document.createElement('option')
      option.value = model
      return option
    }))
  }
}

/**
 * One column: a section titled with its name and count, holding an ordered list of cards.
 * @param {import('../src/tasks.js').Column} column
 */
function columnSection (column) {
  const section = el('section', 'column')
  section.dataset.column = column
  section.setAttribute('aria-labelledby', `title-${column}`)
  const title = el('h2', '', column[0].toUpperCase() + column.slice(1))
  title.id = `title-${column}`
  const count = el('span', 'count', '0')
  count.id = `count-${column}`
  title.append(' ', count)
  const list = el('ol', 'cards')
  section.append(title, list)
  return { column, section, list, count }
}

/** A task id short enough for a narrow panel (the whole id is in the title). @param {string} id */
function shortId (id) {
  return id.length > 14 ? `${id.slice(0, 12)}…` : id
}

/** @param {Worker} worker */
function workerItem (worker) {
  const item = el('li', 'worker')
  item.dataset.state = worker.state
  const tasks = Array.isArray(worker.tasks) ? worker.tasks : []
  const head = el('div', 'worker-head')
  head.append(el('strong', 'worker-name', worker.name || worker.id), el('span', 'state', worker.state))
  const models = el('p', 'worker-models', `${(worker.models ?? []).join(', ')}${worker.engine ? ` (${worker.engine})` : ''}`)
  const slots = el('p', 'worker-slots', `${tasks.length} of ${worker.slots} slot${worker.slots === 1 ? '' : 's'} busy`)
  const current = el('p', 'worker-tasks', tasks.length ? `running ${tasks.map(shortId).join(', ')}` : 'idle')
  current.title = tasks.join(', ')
  item.append(head, models, slots, current)
  return item
}

/**
 * Make `list`'s children exactly `nodes`, in order, moving only what is out of place.
 * @param {HTMLElement} list @param {HTMLElement[]} nodes
 */
function placeInOrder (list, nodes) {
  nodes.forEach((node, index) => {
    if (list.children[index] !== node) list.insertBefore(node, list.children[index] ?? null)
  })
  while (list.children.length > nodes.length) list.lastElementChild?.remove()
}
