"""The extension in a real headless Firefox (Debian's firefox-esr, over WebDriver BiDi: see
bidi.py) against a real server with echo workers: set the server on the options page, then
a prompt sent from the sidebar streams its answer into the page, and the sidebar rides
through a server restart.

The pages are opened in tabs of the installed add-on (`moz-extension://`): the same page,
scripts and permissions as in the sidebar panel, which BiDi cannot reach."""

from __future__ import annotations

import itertools

import anyio
import pytest

from tests.conftest import ServerProcess, WorkerPool
from tests.firefox.bidi import Firefox
from tests.firefox.conftest import page_url

pytestmark = pytest.mark.anyio

# Records every text the answer cards show, as the page draws them.
RECORD_ANSWERS = """() => {
  window.seen = {}
  const record = () => {
    for (const card of document.querySelectorAll('article.answer')) {
      const texts = (window.seen[card.querySelector('.question').textContent] ??= [])
      const text = card.querySelector('.text').textContent
      if (texts.at(-1) !== text) texts.push(text)
    }
  }
  new MutationObserver(record).observe(document.body, { subtree: true, childList: true, characterData: true })
  return true
}"""

SET_VALUE = "(id, value) => { const el = document.getElementById(id); el.value = value; el.dispatchEvent(new Event('input')); return true }"
CLICK = "(id) => { document.getElementById(id).click(); return true }"


async def configure(firefox: Firefox, server_url: str) -> None:
    """Point the extension at `server_url` through its options page, as a user would."""
    options = await firefox.open_tab(page_url("options"))
    await firefox.wait_for(options, "() => document.getElementById('serverUrl').value === 'ws://127.0.0.1:8765'", "the defaults")
    await firefox.call(options, SET_VALUE, "serverUrl", server_url)
    await firefox.call(options, CLICK, "save")
    said = await firefox.wait_for(options, "() => document.getElementById('result').textContent.startsWith('Saved.') && document.getElementById('result').textContent", "the options to be saved")
    assert said == "Saved. Reached board “default”: the server runs without tokens.", said


async def open_sidebar(firefox: Firefox) -> str:
    sidebar = await firefox.open_tab(page_url("sidebar"))
    await firefox.set_viewport(sidebar, 380, 760)  # a sidebar's width
    return sidebar


async def pill(firefox: Firefox, sidebar: str, state: str) -> None:
    await firefox.wait_for(sidebar, f"() => document.getElementById('connection').dataset.state === {state!r}", f"the sidebar {state}")


async def ask(firefox: Firefox, sidebar: str, prompt: str) -> str:
    """Send `prompt` from the sidebar's form; the text of its answer once it succeeded."""
    await firefox.call(sidebar, SET_VALUE, "prompt", prompt)
    await firefox.call(sidebar, CLICK, "ask")
    done = f"""() => [...document.querySelectorAll('article.answer[data-phase="succeeded"]')]
      .find((card) => card.querySelector('.question').textContent === {prompt!r})?.querySelector('.text').textContent"""
    return str(await firefox.wait_for(sidebar, done, f"the answer to {prompt!r}"))


async def test_a_prompt_sent_from_the_sidebar_streams_its_answer(
    server_url: str, workers: WorkerPool, firefox: Firefox
) -> None:
    await workers.start(delay_ms=40, name="echo-firefox")
    await configure(firefox, server_url)
    sidebar = await open_sidebar(firefox)
    await pill(firefox, sidebar, "connected")
    assert "Connected to" in await firefox.call(sidebar, "() => document.getElementById('identity').textContent")
    # the model list follows the ready workers
    await firefox.wait_for(sidebar, "() => [...document.getElementById('model').options].some((o) => o.value === 'echo')", "the echo model")
    label = await firefox.call(sidebar, "() => [...document.getElementById('model').options].map((o) => o.text)")
    assert label == ["any model", "echo (1 worker)"], label
    await firefox.call(sidebar, SET_VALUE, "model", "echo")
    await firefox.call(sidebar, RECORD_ANSWERS)

    prompt = "tell the fox to stream this answer word by word into the sidebar"
    assert await ask(firefox, sidebar, prompt) == f"echo: {prompt}"
    texts = await firefox.call(sidebar, f"() => window.seen[{prompt!r}]")
    growing = [t for t in texts if t]
    assert len(growing) >= 3, f"the answer did not stream: {texts}"
    assert all(b.startswith(a) and len(b) > len(a) for a, b in itertools.pairwise(growing)), texts
    details = await firefox.call(sidebar, "() => document.querySelector('article.answer .details').textContent")
    assert "echo" in details and "tok/s" in details, details
    # the prompt box is ready for the next question
    assert await firefox.call(sidebar, "() => document.getElementById('prompt').value") == ""


@pytest.mark.slow
async def test_the_sidebar_rides_through_a_server_restart(server_process: ServerProcess, firefox: Firefox) -> None:
    await anyio.to_thread.run_sync(server_process.start)
    await configure(firefox, server_process.url)
    sidebar = await open_sidebar(firefox)
    await pill(firefox, sidebar, "connected")
    await anyio.to_thread.run_sync(server_process.stop)  # SIGTERM: flush, exit
    await pill(firefox, sidebar, "reconnecting")
    message = await firefox.call(sidebar, "() => document.getElementById('connection-message').textContent")
    assert message.startswith("Lost the connection to ws://127.0.0.1:"), message
    # asked while the server is away: sent once it is back
    await firefox.call(sidebar, SET_VALUE, "prompt", "asked while the server was away")
    await firefox.call(sidebar, CLICK, "ask")
    await anyio.to_thread.run_sync(server_process.start)
    await pill(firefox, sidebar, "connected")
    async with anyio.create_task_group() as tg:
        await WorkerPool(server_process.url, tg).start(delay_ms=10)
        done = """() => document.querySelector('article.answer[data-phase="succeeded"] .text')?.textContent"""
        assert await firefox.wait_for(sidebar, done, "the answer after the restart") == "echo: asked while the server was away"
        assert await ask(firefox, sidebar, "after the restart") == "echo: after the restart"
        tg.cancel_scope.cancel()
