"""The extension's plain-Python side (no LibreOffice): prompts, settings, text pieces, the
streaming job against a real server, and what the built .oxt carries."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from collections.abc import AsyncGenerator
from pathlib import Path

import anyio
import pytest
from kanbanmesh_office import (
    PARAGRAPH_BREAK,
    AnswerJob,
    OfficeError,
    OfficeSettings,
    Preset,
    SettingsError,
    answer_pieces,
    build_messages,
    describe_board,
    instruction_for,
    selection_text,
)
from kanbanmesh_office.settings import BOARD_NAME_PATTERN as OFFICE_BOARD_PATTERN

from kanbanmesh.board.constants import BOARD_NAME_PATTERN
from kanbanmesh.errors import BackendError
from tests.conftest import WorkerPool, free_port
from tests.e2e.backend_workers import running_worker
from tests.libreoffice.conftest import EXAMPLE
from worker.backends.base import GenerationEvent, GenerationRequest
from worker.backends.echo import EchoBackend


def test_answer_pieces_turn_newlines_into_paragraph_breaks() -> None:
    assert answer_pieces("one\ntwo\r\n\nthree") == ["one", PARAGRAPH_BREAK, "two", PARAGRAPH_BREAK, PARAGRAPH_BREAK, "three"]
    assert answer_pieces("\n") == [PARAGRAPH_BREAK]
    assert answer_pieces("word ") == ["word "]
    assert selection_text("a\r\nb\rc") == "a\nb\nc"


def test_instructions() -> None:
    assert instruction_for(Preset.TRANSLATE, " German ") == "Translate the following text to German."
    assert instruction_for(Preset.ASK, "Make it rhyme.") == "Make it rhyme."
    with pytest.raises(SettingsError, match="language"):
        instruction_for(Preset.TRANSLATE, "  ")
    with pytest.raises(SettingsError, match="instruction"):
        instruction_for(Preset.ASK)
    system, user = build_messages("Summarize.", "Some text")
    assert system["role"] == "system" and user == {"role": "user", "content": "Summarize.\n\nSome text"}


def test_settings_are_checked_before_anything_is_sent() -> None:
    assert OFFICE_BOARD_PATTERN == BOARD_NAME_PATTERN  # the extension keeps its own copy
    fixed = OfficeSettings(url=" ws://host:8765/ ", board=" team ", model=" ").validated()
    assert (fixed.url, fixed.board, fixed.model) == ("ws://host:8765", "team", "")
    for bad, message in [
        (OfficeSettings(url="http://host:8765"), "must look like ws://HOST:PORT"),
        (OfficeSettings(url="ws://host:8765/default"), "put the board name in the Board field"),
        (OfficeSettings(board="no spaces"), "is not valid"),
        (OfficeSettings(max_tokens=0), "between 1 and"),
    ]:
        with pytest.raises(SettingsError, match=message):
            bad.validated()


@pytest.mark.anyio
async def test_a_job_streams_the_answer_and_the_check_lists_the_models(server_url: str, workers: WorkerPool) -> None:
    await workers.start(delay_ms=10)
    chunks: list[str] = []
    job = AnswerJob(OfficeSettings(url=server_url), build_messages("Rewrite.", "one two three"), on_chunk=chunks.append)
    with anyio.fail_after(30):
        outcome = await anyio.to_thread.run_sync(job.run)
        line, models = await anyio.to_thread.run_sync(lambda: describe_board(OfficeSettings(url=server_url)))
    assert outcome.status.value == "succeeded" and len(chunks) > 1
    assert "".join(chunks) == outcome.text == "echo: Rewrite.\n\none two three"
    assert models == ["echo"] and line == "Connected to board 'default': 1 worker, models: echo."


class OutOfMemory(EchoBackend):
    """A backend that fails every request, as a worker short of memory would."""

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationEvent, None]:
        raise BackendError("backend_error", "out of memory")
        yield  # an async generator all the same


@pytest.mark.anyio
async def test_a_failed_task_is_explained_with_the_workers_error(server_url: str) -> None:
    job = AnswerJob(OfficeSettings(url=server_url), build_messages("Summarize.", "x"), on_chunk=lambda _: None)
    async with running_worker(server_url, OutOfMemory()):
        with anyio.fail_after(30), pytest.raises(OfficeError) as caught:
            await anyio.to_thread.run_sync(job.run)
    assert caught.value.title == "kanbanmesh: the task failed"
    assert caught.value.message == "The mesh could not answer: out of memory (backend_error)"


@pytest.mark.anyio
async def test_an_unreachable_server_is_explained() -> None:
    settings = OfficeSettings(url=f"ws://127.0.0.1:{free_port()}")
    job = AnswerJob(settings, build_messages("Summarize.", "x"), on_chunk=lambda _: None)
    with anyio.fail_after(30), pytest.raises(OfficeError, match="Cannot reach the kanbanmesh server") as caught:
        await anyio.to_thread.run_sync(job.run)
    assert caught.value.title == "kanbanmesh: server unreachable"


def test_the_oxt_carries_the_sdk_and_not_the_server(oxt: Path) -> None:
    with zipfile.ZipFile(oxt) as archive:
        names = set(archive.namelist())
    assert {"META-INF/manifest.xml", "kanbanmesh_writer.py", "registry/Addons.xcu",
            "pythonpath/client_sdk/__init__.py", "pythonpath/kanbanmesh/peer.py",
            "pythonpath/kanbanmesh_office/lo/dispatch.py"} <= names
    assert any(name.startswith("pythonpath/pycrdt/") and name.endswith(".so") for name in names)
    for absent in ("pythonpath/kanbanmesh/server/app.py", "pythonpath/broker/", "pythonpath/worker/",
                   "pythonpath/rag/", "pythonpath/starlette/", "pythonpath/uvicorn/"):
        assert not any(name.startswith(absent) for name in names), absent
    assert not any("__pycache__" in name for name in names)


def test_the_build_refuses_a_python_too_old_for_the_sdk(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLE / "build.py"), "--out", str(tmp_path / "x.oxt"), "--python-version", "3.8"],
        capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1 and "needs 3.11 or newer" in done.stderr
    assert not (tmp_path / "x.oxt").exists()
