"""The extension in a real, headless LibreOffice Writer against a real kanbanmesh server with
echo workers: each test runs a Mesh menu command on a document and reads the saved file back."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from kanbanmesh_office import Preset, build_messages, instruction_for

from kanbanmesh.auth import Identity, create_token
from kanbanmesh.board.roles import TokenRole
from kanbanmesh.peer import BoardPeer
from kanbanmesh.server.runner import serve
from kanbanmesh.settings import Settings
from tests.conftest import WorkerPool, free_port
from tests.e2e.test_security import SECRET, token
from tests.libreoffice.conftest import Office
from worker.backends.echo import EchoBackend
from worker.service import Worker, WorkerSettings

pytestmark = pytest.mark.anyio

FOX = "The quick brown fox jumps over the lazy dog."
SECOND = "A second paragraph stays where it was."


def echo_answer(preset: Preset, text: str, argument: str = "") -> str:
    """What the echo backend answers: "echo: " and the task's user turn."""
    return "echo: " + build_messages(instruction_for(preset, argument), text)[-1]["content"]


async def test_summarize_inserts_the_streamed_answer_after_the_selection(
    office: Office, server_url: str, workers: WorkerPool
) -> None:
    await workers.start(delay_ms=20)
    report = await office.run({
        "paragraphs": [FOX, SECOND],
        "select": {"paragraph": 0, "start": 4, "end": 19},  # "quick brown fox"
        "settings": {"url": server_url, "board": "default", "token": "", "model": "", "max_tokens": 512},
        "command": "Summarize",
    })
    expected = echo_answer(Preset.SUMMARIZE, "quick brown fox")
    assert report["state"] == "success", report
    assert report["result"]["status"] == "succeeded"
    assert report["result"]["result"] == report["result"]["inserted"] == expected
    # The selection ended inside the paragraph: the answer gets paragraphs of its own
    # between the two halves, and the rest of the document is untouched.
    assert report["paragraphs"] == ["The quick brown fox", *expected.split("\n"), " jumps over the lazy dog.", SECOND]
    assert report["result"]["batches"] > 1, "the answer must be inserted as it streams"
    assert report["selection"] == "quick brown fox", "the user's selection must not grow over the answer"


def settings_for(url: str, **changes: object) -> dict[str, object]:
    return {"url": url, "board": "default", "token": "", "model": "", "max_tokens": 512, **changes}


async def test_ask_answers_the_paragraph_at_the_cursor_with_the_users_instruction(
    office: Office, server_url: str, workers: WorkerPool
) -> None:
    await workers.start()
    instruction = "Turn this into a question."
    report = await office.run({
        "paragraphs": [FOX, SECOND],
        "select": {"paragraph": 1, "start": 5, "end": None},  # the cursor only, in paragraph 2
        "settings": settings_for(server_url, model="echo"),
        "command": "Ask",
        "args": {"Instruction": instruction},
    })
    expected = echo_answer(Preset.ASK, SECOND, instruction)
    assert report["state"] == "success", report
    assert report["result"]["result"] == expected
    assert report["paragraphs"] == [FOX, SECOND, *expected.split("\n")]


async def test_stop_cancels_the_task_and_keeps_what_was_written(
    office: Office, server_url: str, workers: WorkerPool
) -> None:
    await workers.start(delay_ms=150)
    long_text = " ".join(f"word{i}" for i in range(200))
    report = await office.run({
        "paragraphs": [long_text],
        "select": {"paragraph": 0, "start": 0, "end": len(long_text)},
        "settings": settings_for(server_url),
        "command": "Rewrite",
        "stop_after": 3,
    })
    assert report["state"] == "success", report
    result = report["result"]
    assert result["status"] == "cancelled"
    full = echo_answer(Preset.REWRITE, long_text)
    assert result["inserted"] == result["result"] and full.startswith(result["result"])
    assert 0 < len(result["result"]) < len(full)
    assert report["paragraphs"] == [long_text, *result["result"].split("\n")]


@pytest.mark.parametrize(
    "case, expected",
    [
        ("server down", "Cannot reach the kanbanmesh server"),
        ("no worker", "No worker is connected to board 'default'"),
        ("unknown model", "No worker on board 'default' serves the model 'llama-9000'"),
        ("bad url", "The server URL must look like ws://HOST:PORT"),
    ],
)
async def test_failures_are_reported_and_leave_the_document_alone(
    office: Office, server_url: str, workers: WorkerPool, case: str, expected: str
) -> None:
    settings = settings_for(server_url)
    if case == "server down":
        settings["url"] = f"ws://127.0.0.1:{free_port()}"
    elif case == "unknown model":
        await workers.start()
        settings["model"] = "llama-9000"
    elif case == "bad url":
        settings["url"] = server_url.replace("ws://", "http://")
    report = await office.run({
        "paragraphs": [FOX], "select": {"paragraph": 0, "start": 0, "end": 9},
        "settings": settings, "command": "Summarize",
    })
    assert report["state"] == "failure", report
    assert expected in report["result"]["error"]
    assert report["paragraphs"] == [FOX]


async def test_a_refused_token_is_reported(office: Office, tmp_path: Path) -> None:
    settings = Settings(port=0, data_dir=tmp_path, auth_secret=SECRET, orphan_grace_s=0.5)  # type: ignore[arg-type]
    wrong = create_token("w" * 40, Identity(subject="alice", role=TokenRole.CLIENT, boards=["default"]), 600)
    async with anyio.create_task_group() as tg:
        url = await tg.start(serve, settings)
        report = await office.run({
            "paragraphs": [FOX], "select": {"paragraph": 0, "start": 0, "end": 9},
            "settings": settings_for(url, token=wrong), "command": "Summarize",
        })
        tg.cancel_scope.cancel()
    assert report["state"] == "failure", report
    assert report["result"]["title"] == "kanbanmesh: access refused"
    assert f"The server at {url} refused the token" in report["result"]["error"]
    assert report["paragraphs"] == [FOX]


async def test_a_token_opens_a_server_with_auth_on(office: Office, tmp_path: Path) -> None:
    settings = Settings(port=0, data_dir=tmp_path, auth_secret=SECRET, orphan_grace_s=0.5)  # type: ignore[arg-type]
    async with anyio.create_task_group() as tg:
        url = await tg.start(serve, settings)
        peer = BoardPeer(url, token=token(TokenRole.WORKER, "worker-host"))
        await tg.start(peer.start)
        await tg.start(Worker(peer, EchoBackend(), WorkerSettings(name="secure")).run)
        report = await office.run({
            "paragraphs": [FOX], "select": {"paragraph": 0, "start": 0, "end": len(FOX)},
            "settings": settings_for(url, token=token(TokenRole.CLIENT, "alice")),
            "command": "Translate", "args": {"Language": "French"},
        })
        tg.cancel_scope.cancel()
    expected = echo_answer(Preset.TRANSLATE, FOX, "French")
    assert report["state"] == "success", report
    assert report["paragraphs"] == [FOX, *expected.split("\n")]
