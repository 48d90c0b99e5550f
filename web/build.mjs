// Build the board page into kanbanmesh/server/static/, where the server serves it from:
// page/main.js with the library, yjs and y-websocket bundled into one ES module (no CDN, no
// network at run time), plus the HTML and CSS as they are.
//
//   npm run build          (scripts/install.sh runs it)

import { copyFile, mkdir } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import * as esbuild from 'esbuild'

const here = dirname(fileURLToPath(import.meta.url))
const out = join(here, '..', 'kanbanmesh', 'server', 'static')

await mkdir(out, { recursive: true })
await esbuild.build({
  entryPoints: [join(here, 'page', 'main.js')],
  outfile: join(out, 'board.js'),
  bundle: true,
  format: 'esm',
  platform: 'browser',
  target: ['es2022'], // every browser of the last few years; keeps the code readable in devtools
  minify: true,
  sourcemap: 'linked',
  logLevel: 'warning'
})
await copyFile(join(here, 'page', 'index.html'), join(out, 'index.html'))
await copyFile(join(here, 'page', 'board.css'), join(out, 'board.css'))
console.log(`built the board page into ${out}`)
