// Submit a task to a kanbanmesh board and print its answer as it streams in.
// Stock Yjs only:  npm install  &&  node submit.mjs ws://127.0.0.1:8765 default "Tell me a joke"
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import WebSocket from 'ws'

const [url = 'ws://127.0.0.1:8765', board = 'default', prompt = 'Tell me a joke'] =
  process.argv.slice(2)
const token = process.env.KANBANMESH_TOKEN // only if the server asks for one

// One Y.Doc per board; y-websocket keeps it in sync with the server at ws://.../<board>.
const doc = new Y.Doc()
const provider = new WebsocketProvider(url, board, doc, {
  WebSocketPolyfill: WebSocket, // Node has no browser WebSocket; `ws` stands in
  params: token ? { token } : {}
})
const columns = ['todo', 'prepared', 'doing', 'done'].map((name) => doc.getMap(name))
const id = `js-${Date.now()}-${Math.random().toString(36).slice(2, 8)}`
// Wherever the task sits now; a copy in `done` wins over any other.
const findTask = () => [...columns].reverse().map((col) => col.get(id)).find(Boolean)
let cancelling = false // set by Ctrl-C, below

provider.once('sync', () => {
  // A task is a Y.Map in `todo`, created in ONE transaction, keyed by its id.
  doc.transact(() => {
    const task = new Y.Map()
    columns[0].set(id, task)
    task.set('id', id)
    task.set('owner', 'example-js')
    task.set('model', '') // "" = any model
    task.set('messages', [{ role: 'user', content: prompt }])
    task.set('params', { max_tokens: 128, temperature: 0.7 })
    task.set('priority', 0)
    task.set('created_at', Date.now())
  })

  // The task moves todo -> prepared -> doing -> done as a NEW copy each time, so look it up
  // by id after every change. In `doing` and `done` its `output` is a Y.Text that grows.
  let printed = ''
  doc.on('update', () => {
    const task = findTask()
    // A cancel written while the task was being moved is lost with the old copy: write it
    // again on the copy that holds the task now, until the task is done.
    if (cancelling && task && !columns[3].has(id) && task.get('cancel') !== true) {
      task.set('cancel', true)
    }
    const text = task?.get('output')?.toString() ?? ''
    // Print only new text; after a retry, wait until the output has passed what we printed.
    if (text.length > printed.length && text.startsWith(printed)) {
      process.stdout.write(text.slice(printed.length))
      printed = text
    }
    if (columns[3].has(id)) {
      const status = task.get('status') // "succeeded" | "failed" | "cancelled"
      const error = task.get('error')
      console.log(`\n[${status}]${error ? ` ${error.code}: ${error.message}` : ''}`)
      provider.destroy()
      process.exit(status === 'succeeded' ? 0 : 1)
    }
  })
})

// Ctrl-C cancels: set `cancel` on the entry wherever it sits; it then lands in `done`.
process.on('SIGINT', () => {
  const task = findTask()
  if (cancelling || !task) process.exit(130) // a second Ctrl-C just quits
  cancelling = true
  task.set('cancel', true)
})
