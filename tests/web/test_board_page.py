"""The board page in a real headless Chromium against a real server with echo workers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from client_sdk import AsyncClient
from kanbanmesh.auth import Identity, create_token
from kanbanmesh.board.roles import TokenRole
from kanbanmesh.peer import BoardPeer
from kanbanmesh.server.runner import serve
from kanbanmesh.settings import Settings
from tests.conftest import ServerProcess, WorkerPool
from tests.rag.fixtures import DOCS_COLLECTION
from tests.web.conftest import OpenPage, http_url
from worker import Worker, WorkerSettings
from worker.backends import EchoBackend

pytestmark = pytest.mark.anyio

# Records, for every card, the columns it was drawn in and the lengths its streamed text had,
# as the page draws them (a MutationObserver sees every frame the page renders).
RECORD_CARDS = """() => {
  window.seen = {}
  const record = () => {
    for (const card of document.querySelectorAll('li.card')) {
      const seen = (window.seen[card.dataset.id] ??= { columns: [], lengths: [] })
      if (seen.columns.at(-1) !== card.dataset.column) seen.columns.push(card.dataset.column)
      const length = card.querySelector('.output').textContent.length
      if (card.dataset.column === 'doing' && seen.lengths.at(-1) !== length) seen.lengths.push(length)
    }
  }
  new MutationObserver(record).observe(document.body, { subtree: true, childList: true, characterData: true, attributes: true })
  record()
}"""

# The errors a browser logs by itself while a server is away; nothing else may show up.
NETWORK_NOISE = ("WebSocket connection to", "net::ERR_CONNECTION_REFUSED", "net::ERR_CONNECTION_RESET")


def card(page: Any, task_id: str) -> Any:
    return page.locator(f'li.card[data-id="{task_id}"]')


async def card_id(page: Any, text: str) -> str:
    """The id of the card asking `text` (waits for it to appear)."""
    found = page.locator("li.card", has=page.locator(".asked", has_text=text))
    await found.wait_for()
    return str(await found.get_attribute("data-id"))


async def submit(page: Any, prompt: str, *, max_tokens: int = 200, rag: str = "", keyboard: bool = False) -> str:
    await page.fill("#prompt", prompt)
    await page.fill("#max-tokens", str(max_tokens))
    await page.fill("#rag", rag)
    if keyboard:
        await page.press("#prompt", "Control+Enter")
    else:
        await page.click("#submit")
    return await card_id(page, prompt)


async def wait_done(page: Any, task_id: str, status: str | None = "succeeded") -> Any:
    """The task's card once it is in done (with `status`, unless None)."""
    with_status = f'[data-status="{status}"]' if status else ""
    done = page.locator(f'.column[data-column="done"] li.card[data-id="{task_id}"]{with_status}')
    await done.wait_for()
    return done


async def connected(page: Any) -> None:
    await page.locator('#connection[data-state="connected"]').wait_for()


async def task_entry(ws_url: str, task_id: str) -> dict[str, Any]:
    async with httpx.AsyncClient() as http:
        reply = await http.get(f"http{ws_url[2:]}/boards/default/tasks/{task_id}")
    return dict(reply.json()["entry"])


async def test_a_prompt_moves_through_the_columns_and_streams(
    server_url: str, workers: WorkerPool, open_page: OpenPage
) -> None:
    await workers.start(delay_ms=40, name="echo-web")
    page, problems = await open_page(http_url(server_url))
    await connected(page)
    await page.locator(".worker-name", has_text="echo-web").wait_for()
    await page.evaluate(RECORD_CARDS)
    # The first task keeps the only slot busy, so the second one is seen waiting in todo.
    first = await submit(page, "first " + " ".join(f"word{i}" for i in range(25)), keyboard=True)
    prompt = "second one streams in word by word for everybody to see"
    second = await submit(page, prompt, max_tokens=100)
    assert await page.evaluate("document.activeElement.id") == "prompt"  # ready for the next one
    done = await wait_done(page, second)
    await wait_done(page, first)

    seen = await page.evaluate(f"window.seen[{second!r}]")
    columns = seen["columns"]
    assert columns[0] == "todo" and columns[-1] == "done" and "doing" in columns, columns
    order = ["todo", "prepared", "doing", "done"]
    assert columns == sorted(columns, key=order.index), f"moved backwards: {columns}"
    assert len(seen["lengths"]) >= 3, f"the text did not stream: {seen['lengths']}"
    assert await done.locator(".output").inner_text() == "echo: " + prompt
    assert await done.locator(".status").inner_text() == "SUCCEEDED"  # uppercased by CSS
    timings = await done.locator(".timings").inner_text()
    assert "first token" in timings and "tok/s" in timings and "tokens" in timings, timings
    assert await page.locator("#count-done").inner_text() == "2"
    assert await page.locator("#count-todo").inner_text() == "0"
    assert float(await page.locator("#tokens-per-s").inner_text()) > 0
    entry = await task_entry(server_url, second)
    assert entry["params"]["max_tokens"] == 100 and entry.get("rag") is None
    assert str(entry["owner"]).startswith("web-")  # the page's own name, kept in the browser
    # The RAG collection field: what the task asks for (whether it exists is the server's call).
    with_rag = await submit(page, "answer from my notes", rag="notes")
    await wait_done(page, with_rag, status=None)
    assert (await task_entry(server_url, with_rag))["rag"] == {"collection": "notes", "k": 4}
    assert problems.errors == []


async def test_a_task_from_the_python_sdk_appears_live_on_a_phone(
    server_url: str, workers: WorkerPool, open_page: OpenPage
) -> None:
    await workers.start(delay_ms=20)
    page, problems = await open_page(http_url(server_url), width=390, height=844)
    await connected(page)
    async with AsyncClient(server_url, owner="python") as client:
        task = await client.submit("hello from python", params={"max_tokens": 20})
        await card(page, task.id).wait_for()
        done = await wait_done(page, task.id)
        assert (await client.task(task.id).result(timeout_s=20)).result == "echo: hello from python"
    assert await done.locator(".output").inner_text() == "echo: hello from python"
    assert "python" in await done.locator(".owner").inner_text()
    assert not await done.locator(".cancel").is_visible()  # not ours: no cancel button
    # Readable at phone width: nothing wider than the screen.
    assert await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    assert problems.errors == []


async def test_cancel_from_the_page_with_the_keyboard(
    server_url: str, workers: WorkerPool, open_page: OpenPage
) -> None:
    await workers.start(delay_ms=60)
    page, problems = await open_page(http_url(server_url))
    await connected(page)
    task_id = await submit(page, "cancel me " + " ".join(f"w{i}" for i in range(200)), max_tokens=1000)
    doing = page.locator(f'.column[data-column="doing"] li.card[data-id="{task_id}"]')
    await doing.locator(".output", has_text="cancel me w0 w1").wait_for()
    await doing.locator(".cancel").focus()
    await page.keyboard.press("Enter")
    done = await wait_done(page, task_id, status="cancelled")
    text = await done.locator(".output").inner_text()
    assert text.startswith("echo: cancel me") and len(text) < 500
    assert (await task_entry(server_url, task_id))["status"] == "cancelled"
    assert problems.errors == []


async def test_the_page_rides_through_a_server_restart(
    server_process: ServerProcess, open_page: OpenPage
) -> None:
    await anyio.to_thread.run_sync(server_process.start)
    page, problems = await open_page(http_url(server_process.url))
    await connected(page)
    # No worker yet: this task waits in todo, on disk, through the restart.
    before = await submit(page, "submitted before the restart")
    await anyio.to_thread.run_sync(server_process.stop)  # SIGTERM: flush, exit
    await page.locator('#connection[data-state="reconnecting"]').wait_for()
    assert "reconnecting" in (await page.locator("#banner").inner_text()).lower()
    await anyio.to_thread.run_sync(server_process.start)
    await connected(page)
    await page.locator("#banner", has_text="Reconnected").wait_for()
    async with anyio.create_task_group() as tg:
        await WorkerPool(server_process.url, tg).start(delay_ms=10)
        await wait_done(page, before)
        after = await submit(page, "submitted after the restart")
        done = await wait_done(page, after)
        assert await done.locator(".output").inner_text() == "echo: submitted after the restart"
        tg.cancel_scope.cancel()
    assert [e for e in problems.errors if not any(noise in e for noise in NETWORK_NOISE)] == []


SECRET = "w" * 40


def token(role: TokenRole, subject: str) -> str:
    return create_token(SECRET, Identity(subject=subject, role=role, boards=["default"]), 600)


@pytest.fixture
async def secure_mesh(tmp_path: Path) -> AsyncIterator[str]:
    """A server with auth on and one echo worker holding a worker token."""
    settings = Settings(port=0, data_dir=tmp_path, auth_secret=SECRET, orphan_grace_s=0.5)  # type: ignore[arg-type]
    async with anyio.create_task_group() as tg:
        url: str = await tg.start(serve, settings)
        peer = BoardPeer(url, token=token(TokenRole.WORKER, "worker-host"))
        await tg.start(peer.start)
        await tg.start(Worker(peer, EchoBackend(delay_ms=10), WorkerSettings(name="secure")).run)
        yield url
        tg.cancel_scope.cancel()


async def test_a_token_is_asked_once_and_kept(secure_mesh: str, open_page: OpenPage) -> None:
    page, problems = await open_page(http_url(secure_mesh))
    dialog = page.locator("#token-dialog")
    await dialog.locator("#token-reason", has_text="wants an access token").wait_for()
    await page.fill("#token-input", "not-a-token")
    await page.press("#token-input", "Enter")
    await dialog.locator("#token-reason", has_text="refused the stored token").wait_for()
    await page.fill("#token-input", token(TokenRole.CLIENT, "alice"))
    await page.press("#token-input", "Enter")
    await connected(page)
    assert "alice" in await page.locator("#identity").inner_text()
    task_id = await submit(page, "with a token")
    await wait_done(page, task_id)
    assert (await card(page, task_id).locator(".owner").inner_text()).startswith("alice")
    await page.reload()  # the token was kept: no question this time
    await connected(page)
    assert not await dialog.is_visible()
    assert problems.errors == []


async def test_the_form_offers_the_servers_rag_collections(rag_server: str, open_page: OpenPage) -> None:
    page, problems = await open_page(http_url(rag_server))
    await connected(page)
    option = page.locator(f'#rag-collections option[value="{DOCS_COLLECTION}"]')
    await option.wait_for(state="attached")
    assert "chunks" in str(await option.get_attribute("label"))
    assert problems.errors == []


async def test_a_submission_past_the_owners_limit_is_explained_and_nothing_else_is_lost(
    tmp_path: Path, open_page: OpenPage
) -> None:
    """The server refuses (4429) a task past `--max-open-tasks`: the page says why, reconnects
    with a fresh copy of the board, and the task already open is still there."""
    settings = Settings(port=0, data_dir=tmp_path, auth_secret=SECRET, max_open_tasks=1)  # type: ignore[arg-type]
    async with anyio.create_task_group() as tg:
        url: str = await tg.start(serve, settings)  # no worker: tasks stay open in todo
        page, problems = await open_page(http_url(url))
        await page.fill("#token-input", token(TokenRole.CLIENT, "bob"))
        await page.press("#token-input", "Enter")
        await connected(page)
        first = await submit(page, "the one task bob may have open")
        await page.fill("#prompt", "one too many")
        await page.click("#submit")
        await page.locator("#banner", has_text="too many open tasks").wait_for()
        await connected(page)  # back, with a fresh copy of the board
        await card(page, first).wait_for()
        assert await page.locator("li.card", has=page.locator(".asked", has_text="one too many")).count() == 0
        assert not [e for e in problems.errors if not e.startswith(NETWORK_NOISE)]
        tg.cancel_scope.cancel()


async def test_a_waiting_card_shows_what_it_waits_for(server_url: str, workers: WorkerPool, open_page: OpenPage) -> None:
    page, problems = await open_page(http_url(server_url))
    await connected(page)
    async with AsyncClient(server_url, owner="graph") as client:
        # No worker yet: the parts wait in todo, and the combining card waits for both.
        parts = [await client.submit(f"part {n}", task_id=f"part{n}") for n in (1, 2)]
        await client.submit("combine {{result:part1}} {{result:part2}}", after=parts, task_id="combine")
        waiting = card(page, "combine").locator(".meta", has_text="waits for: part1, part2")
        await waiting.wait_for()
        assert await card(page, "combine").get_attribute("data-column") == "todo"
        await workers.start(delay_ms=20)
        await wait_done(page, "part1")
        await wait_done(page, "part2")
        done = await wait_done(page, "combine")
        assert await done.locator(".output").inner_text() == "echo: combine echo: part 1 echo: part 2"
        assert "waits for" not in await done.locator(".meta").inner_text()
    assert problems.errors == []


async def test_a_card_whose_parent_was_cancelled_says_so(server_url: str, open_page: OpenPage) -> None:
    page, problems = await open_page(http_url(server_url))
    await connected(page)
    async with AsyncClient(server_url, owner="graph") as client:
        parent = await client.submit("never runs", task_id="lonely")
        await client.submit("child", after=[parent], task_id="child")
        await card(page, "child").locator(".meta", has_text="waits for: lonely").wait_for()
        await parent.cancel()
        done = await wait_done(page, "child", status="cancelled")
        assert "dependency_failed" in await done.locator(".error").inner_text()
    assert problems.errors == []
