// Build the extension into dist/extension/: background, sidebar and options scripts bundled
// by esbuild with the kanbanmesh library (web/src), yjs and y-websocket (no remote code, no
// network at run time), plus the manifest, pages, styles and icon as they are.
//
//   npm run build          the unpacked extension (about:debugging → Load Temporary Add-on)
//   npm run package        dist/kanbanmesh.xpi (web-ext build)
//   npm run lint           web-ext lint on the build

import { copyFile, cp, mkdir, readFile, rm, writeFile } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import * as esbuild from 'esbuild'

const here = dirname(fileURLToPath(import.meta.url))
const src = join(here, 'src')
const out = join(here, 'dist', 'extension')

await rm(out, { recursive: true, force: true })
await mkdir(out, { recursive: true })
await esbuild.build({
  entryPoints: {
    background: join(src, 'background.js'),
    sidebar: join(src, 'sidebar', 'sidebar.js'),
    options: join(src, 'options', 'options.js')
  },
  outdir: out,
  bundle: true,
  format: 'iife', // classic scripts: what background.scripts and a plain <script> load
  platform: 'browser',
  target: ['firefox140'],
  minify: false, // readable for reviewers (addons.mozilla.org reads the code it signs)
  legalComments: 'inline',
  logLevel: 'warning'
})
const pkg = JSON.parse(await readFile(join(here, 'package.json'), 'utf8'))
const manifest = JSON.parse(await readFile(join(src, 'manifest.json'), 'utf8'))
manifest.version = pkg.version
await writeFile(join(out, 'manifest.json'), JSON.stringify(manifest, null, 2) + '\n')
for (const page of ['sidebar', 'options']) {
  await mkdir(join(out, page), { recursive: true })
  await copyFile(join(src, page, `${page}.html`), join(out, page, `${page}.html`))
  await copyFile(join(src, page, `${page}.css`), join(out, page, `${page}.css`))
}
await copyFile(join(src, 'common.css'), join(out, 'common.css'))
await cp(join(src, 'icons'), join(out, 'icons'), { recursive: true })
console.log(`built the extension into ${out}`)
