// The kanbanmesh server the tests talk to: KANBANMESH_URL when set (the Python suite starts a
// server with echo workers and passes it), else a `kanbanmesh up` with echo workers started
// here for the run (KANBANMESH_PYTHON, default ../.venv/bin/python).

import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const here = dirname(fileURLToPath(import.meta.url))

/** Resolve with `{ url, stop() }`. */
export async function startServer () {
  if (process.env.KANBANMESH_URL) return { url: process.env.KANBANMESH_URL, stop: async () => {} }
  const python = process.env.KANBANMESH_PYTHON ?? join(here, '..', '..', '.venv', 'bin', 'python')
  const child = spawn(python, [
    '-m', 'kanbanmesh', 'up', '--port', '0', '--no-persist',
    '--backend', 'echo', '--echo-delay', '20', '--workers', '1', '--slots', '2'
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
