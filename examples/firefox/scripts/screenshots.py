"""Take the README's screenshots (examples/firefox/docs/*.png): the extension's sidebar and
options page in a headless Debian firefox-esr, against a throwaway mesh with an echo worker.

Firefox rather than Chromium: it is the browser the extension is for, and the one its tests
drive (tests/firefox/bidi.py, over WebDriver BiDi, nothing downloaded).

    .venv/bin/python examples/firefox/scripts/screenshots.py     (after npm run build)
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import anyio

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from tests.firefox.bidi import launch
from tests.firefox.conftest import ADDON_ID, ADDON_UUID, BUILT, page_url

DOCS = ROOT / "examples" / "firefox" / "docs"
SET_VALUE = "(id, value) => { document.getElementById(id).value = value; return true }"
CLICK = "(id) => { document.getElementById(id).click(); return true }"
FINISHED = "Summarise in one sentence why a kanban board helps a team see its work in progress"
STREAMING = ("Explain how kanbanmesh hands a prompt from the sidebar to a worker: the task goes into "
             "todo, the broker assigns it, the worker streams its answer into the task's output, "
             "and the sidebar shows each word as it arrives")


async def main() -> None:
    mesh = subprocess.Popen(  # noqa: ASYNC220 - a one-off script; nothing else runs meanwhile
        [sys.executable, "-m", "kanbanmesh", "up", "--port", "0", "--no-persist", "--backend", "echo",
         "--echo-delay", "150", "--workers", "1", "--slots", "2"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert mesh.stdout is not None
        url = next(m.group(1) for line in mesh.stdout if (m := re.search(r"server on (ws://\S+)", line)))
        async with launch("firefox-esr", addon_uuids={ADDON_ID: ADDON_UUID}) as firefox:
            await firefox.install_addon(BUILT)
            options = await firefox.open_tab(page_url("options"))
            await firefox.set_viewport(options, 760, 700)
            await firefox.wait_for(options, "() => document.getElementById('serverUrl').value", "the settings")
            await firefox.call(options, SET_VALUE, "serverUrl", url)
            await firefox.call(options, CLICK, "save")
            await firefox.wait_for(options, "() => document.getElementById('result').textContent.startsWith('Saved.')", "saved")
            await firefox.screenshot(options, DOCS / "options.png")

            sidebar = await firefox.open_tab(page_url("sidebar"))
            await firefox.set_viewport(sidebar, 380, 760)
            await firefox.wait_for(sidebar, "() => document.getElementById('connection').dataset.state === 'connected'", "connected")
            await firefox.wait_for(sidebar, "() => document.getElementById('model').options.length > 1", "a model")
            await firefox.call(sidebar, SET_VALUE, "model", "echo")
            for prompt, phase in ((FINISHED, "succeeded"), (STREAMING, "streaming")):
                await firefox.call(sidebar, SET_VALUE, "prompt", prompt)
                await firefox.call(sidebar, CLICK, "ask")
                await firefox.wait_for(sidebar, f"() => document.querySelectorAll('article.answer[data-phase=\"{phase}\"]').length", phase, timeout_s=60)
            await firefox.wait_for(sidebar, "() => document.querySelector('article.answer[data-phase=\"streaming\"] .text')?.textContent.length > 90", "some text")
            await firefox.call(sidebar, SET_VALUE, "prompt", "What does the broker do when a worker disappears?")
            await firefox.screenshot(sidebar, DOCS / "sidebar.png")
    finally:
        mesh.terminate()
        mesh.wait(20)
    print(f"wrote {DOCS / 'options.png'} and {DOCS / 'sidebar.png'}")


if __name__ == "__main__":
    anyio.run(main)
