"""A headless Debian firefox-esr driven over WebDriver BiDi, the protocol Firefox speaks by
itself (`--remote-debugging-port`): no geckodriver (not packaged by Debian bookworm), no
Playwright build of Firefox (Playwright drives only its own patched one), nothing downloaded.

Only what the extension's tests need: install an add-on temporarily, open its pages in tabs
(a page may not navigate to `moz-extension://`, so the tab is opened from the browser's own
chrome scope, which `--remote-allow-system-access` allows), run script in a page, wait for a
condition in the page (a MutationObserver, bounded), take a screenshot.
"""

from __future__ import annotations

import base64
import json
import re
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import Process
from websockets.asyncio.client import ClientConnection, connect

LISTENING = re.compile(r"WebDriver BiDi listening on (ws://\S+)")
# A quiet profile: no first-run pages, updates, telemetry or remote settings traffic.
PREFS = {
    "browser.shell.checkDefaultBrowser": False,
    "browser.startup.homepage_override.mstone": "ignore",
    "browser.startup.page": 0,
    "app.update.enabled": False,
    "datareporting.policy.dataSubmissionEnabled": False,
    "toolkit.telemetry.reportingpolicy.firstRun": False,
    "extensions.autoDisableScopes": 0,
    "browser.newtabpage.enabled": False,
}

# Resolves with COND's first truthy value, re-checked on every change of the page's DOM (and
# every 100 ms: a form field's value changes no attribute an observer would see).
WAIT_FOR = """(cond, what, ms) => new Promise((resolve, reject) => {
  let observer
  const stop = () => { observer.disconnect(); clearTimeout(timer); clearInterval(ticker) }
  const timer = setTimeout(() => { stop(); reject(new Error('timed out waiting for ' + what)) }, ms)
  const check = () => {
    let value
    try { value = cond() } catch (err) { value = undefined }
    if (value) { stop(); resolve(value) }
  }
  const ticker = setInterval(check, 100)
  observer = new MutationObserver(check)
  observer.observe(document, { subtree: true, childList: true, characterData: true, attributes: true })
  check()
})"""


# Resolves once the page has loaded (scripts and styles included).
LOADED = """() => document.readyState === 'complete' ||
  new Promise((resolve) => window.addEventListener('load', () => resolve(true), { once: true }))"""


class BidiError(RuntimeError):
    """Firefox answered a command with an error, or a script in a page threw."""


class Firefox:
    """One BiDi session on a running Firefox."""

    def __init__(self, ws: ClientConnection, timeout_s: float) -> None:
        self._ws = ws
        self._timeout_s = timeout_s
        self._next_id = 0
        self._waiting: dict[int, anyio.abc.ObjectSendStream[dict[str, Any]]] = {}

    async def _read(self) -> None:
        async for raw in self._ws:
            message = json.loads(raw)
            waiter = self._waiting.pop(message.get("id", -1), None)
            if waiter is not None:
                await waiter.send(message)

    async def command(self, method: str, *, timeout_s: float | None = None, **params: Any) -> dict[str, Any]:
        self._next_id += 1
        send, receive = anyio.create_memory_object_stream[dict[str, Any]](1)
        self._waiting[self._next_id] = send
        with send, receive:
            await self._ws.send(json.dumps({"id": self._next_id, "method": method, "params": params}))
            with anyio.fail_after(timeout_s or self._timeout_s):
                answer = await receive.receive()
        if answer.get("type") == "error":
            raise BidiError(f"{method}: {answer.get('error')}: {answer.get('message')}")
        return dict(answer["result"])

    async def install_addon(self, path: Path) -> str:
        """Install the unpacked extension at `path` (temporarily, unsigned); returns its id."""
        result = await self.command("webExtension.install", extensionData={"type": "path", "path": str(path)})
        return str(result["extension"])

    async def open_tab(self, url: str) -> str:
        """Open `url` (a `moz-extension://` page too) in a new, selected tab; its context id."""
        chrome = (await self.command("browsingContext.getTree", **{"moz:scope": "chrome"}))["contexts"][0]["context"]
        before = {c["context"] for c in (await self.command("browsingContext.getTree"))["contexts"]}
        opener = (
            "(url) => { gBrowser.selectedTab = gBrowser.addTab(url, "
            "{ triggeringPrincipal: Services.scriptSecurityManager.getSystemPrincipal() }) }"
        )
        await self.call(chrome, opener, url)
        with anyio.fail_after(self._timeout_s):
            while True:
                for context in (await self.command("browsingContext.getTree"))["contexts"]:
                    if context["context"] not in before and context["url"] == url:
                        await self.call(context["context"], LOADED)
                        return str(context["context"])
                await anyio.sleep(0.05)  # the tab's context appears a moment after addTab

    async def call(self, context: str, function: str, *args: Any, timeout_s: float | None = None) -> Any:
        """Call the JS `function` in `context` with JSON `args`; its (awaited) value as JSON."""
        arguments = [{"type": "string", "value": json.dumps(arg)} for arg in args]
        wrapper = f"(...json) => Promise.resolve(({function})(...json.map((a) => JSON.parse(a)))).then((v) => JSON.stringify(v ?? null))"
        result = await self.command(
            "script.callFunction", functionDeclaration=wrapper, arguments=arguments,
            target={"context": context}, awaitPromise=True, timeout_s=timeout_s,
        )
        if result["type"] == "exception":
            raise BidiError(result["exceptionDetails"]["text"])
        return json.loads(result["result"]["value"])

    async def wait_for(self, context: str, condition: str, what: str, timeout_s: float | None = None) -> Any:
        """Wait until the JS function `condition` returns something truthy in the page."""
        ms = int((timeout_s or self._timeout_s) * 1000)
        # the page gives up first, with its message
        return await self.call(context, f"(what, ms) => ({WAIT_FOR})({condition}, what, ms)", what, ms, timeout_s=ms / 1000 + 10)

    async def set_viewport(self, context: str, width: int, height: int) -> None:
        await self.command("browsingContext.setViewport", context=context, viewport={"width": width, "height": height})

    async def screenshot(self, context: str, path: Path) -> None:
        result = await self.command("browsingContext.captureScreenshot", context=context)
        path.write_bytes(base64.b64decode(result["data"]))


@asynccontextmanager
async def launch(
    executable: str, *, addon_uuids: dict[str, str], timeout_s: float = 30.0
) -> AsyncIterator[Firefox]:
    """A headless Firefox with a fresh profile; `addon_uuids` fixes the `moz-extension://` host
    of each add-on id (Firefox picks a random one otherwise)."""
    with tempfile.TemporaryDirectory(prefix="kanbanmesh-firefox-") as profile:
        prefs = {**PREFS, "extensions.webextensions.uuids": json.dumps(addon_uuids)}
        lines = [f"user_pref({json.dumps(name)}, {json.dumps(value)});" for name, value in prefs.items()]
        (Path(profile) / "user.js").write_text("\n".join(lines) + "\n")
        command = [
            executable, "--headless", "--no-remote", "--profile", profile,
            "--remote-debugging-port", "0", "--remote-allow-system-access",
        ]
        async with await anyio.open_process(command, stdin=None, stdout=None) as process, anyio.create_task_group() as tg:
            try:
                found: list[str] = []
                listening = anyio.Event()
                tg.start_soon(_drain_stderr, process, found, listening)
                with anyio.fail_after(timeout_s):
                    await listening.wait()
                if not found:
                    raise RuntimeError(f"firefox exited before listening (code {await process.wait()})")
                async with connect(found[0] + "/session", max_size=None) as ws, anyio.create_task_group() as session:
                    firefox = Firefox(ws, timeout_s)
                    session.start_soon(firefox._read)
                    await firefox.command("session.new", capabilities={})
                    yield firefox
                    session.cancel_scope.cancel()
            finally:
                process.terminate()
                with anyio.move_on_after(10, shield=True):
                    await process.wait()
                if process.returncode is None:
                    process.kill()
                tg.cancel_scope.cancel()


async def _drain_stderr(process: Process, found: list[str], listening: anyio.Event) -> None:
    """Read Firefox's stderr (it must never fill up) and note where BiDi listens."""
    assert process.stderr is not None
    seen = ""
    async for chunk in process.stderr:
        if not found:
            seen += chunk.decode(errors="replace")
            match = LISTENING.search(seen)
            if match:
                found.append(match.group(1))
                listening.set()
    listening.set()
