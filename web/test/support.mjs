// What the tests share: the kanbanmesh server they talk to, and bounded waits.
//
// The server: KANBANMESH_URL when set (the Python suite starts one with echo workers and
// passes it), else a `kanbanmesh up` with echo workers started here (KANBANMESH_PYTHON,
// default ../.venv/bin/python); always one of our own when a test needs special options.

import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const here = dirname(fileURLToPath(import.meta.url))

export const TIMEOUT_MS = 30000 // a loaded 2-core machine is slow; every wait is bounded by this

/** Resolve with `{ url, stop() }`; `options` are more `kanbanmesh up` flags. */
export async function startServer (options = []) {
  if (process.env.KANBANMESH_URL && options.length === 0) return { url: process.env.KANBANMESH_URL, stop: async () => {} }
  const python = process.env.KANBANMESH_PYTHON ?? join(here, '..', '..', '.venv', 'bin', 'python')
  const child = spawn(python, [
    '-m', 'kanbanmesh', 'up', '--port', '0', '--no-persist',
    '--backend', 'echo', '--echo-delay', '20', '--workers', '1', '--slots', '2', ...options
  ], { stdio: ['ignore', 'pipe', 'inherit'], env: { ...process.env, KANBANMESH_URL: undefined } })
  const url = await new Promise((resolve, reject) => {
    let seen = ''
    const timer = setTimeout(() => reject(new Error(`kanbanmesh up said no URL within 30 s: ${seen}`)), 30000)
    child.stdout.on('data', (data) => {
      seen += data
      const match = /server on (ws:\/\/\S+)/.exec(seen)
      if (match) { clearTimeout(timer); resolve(match[1]) }
    })
    child.once('exit', (code) => reject(new Error(`kanbanmesh up exited with ${code}: ${seen}`)))
  })
  child.stdout.resume()
  return {
    url,
    stop: async () => {
      child.kill('SIGTERM')
      await once(child, 'exit')
    }
  }
}

/** Resolve with `check()`'s first truthy value, re-checked after every change of `board`. */
export function until (board, check, what) {
  return new Promise((resolve, reject) => {
    const offs = []
    const done = (value) => { clearTimeout(timer); offs.forEach((off) => off()); resolve(value) }
    const timer = setTimeout(() => { offs.forEach((off) => off()); reject(new Error(`timed out waiting for ${what}`)) }, TIMEOUT_MS)
    const test = () => { const value = check(); if (value) done(value) }
    offs.push(board.onBoardChange(test), board.onWorkersChange(test), board.onStatus(test))
    test()
  })
}

/** Bound a promise by TIMEOUT_MS. */
export function within (promise, what) {
  let timer
  const timeout = new Promise((resolve, reject) => { timer = setTimeout(() => reject(new Error(`timed out: ${what}`)), TIMEOUT_MS) })
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer))
}
