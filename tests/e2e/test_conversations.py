"""Conversation history: a follow-up sends only its new turn, the worker gets the earlier ones."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from client_sdk import AsyncClient
from kanbanmesh.auth import Identity, create_token
from kanbanmesh.board.roles import TokenRole
from kanbanmesh.peer import BoardPeer
from kanbanmesh.server.runner import serve
from kanbanmesh.settings import Settings
from tests.e2e.backend_workers import RecordingBackend
from worker.service import Worker, WorkerSettings

pytestmark = pytest.mark.anyio
SECRET = "c" * 40


def token(role: TokenRole, subject: str) -> str:
    return create_token(SECRET, Identity(subject=subject, role=role, boards=["default"]), 600)


async def test_three_turns_and_nobody_else_reads_them(tmp_path: Path) -> None:
    settings = Settings(port=0, data_dir=tmp_path, auth_secret=SECRET)  # type: ignore[arg-type]
    backend = RecordingBackend()
    async with anyio.create_task_group() as tg:
        url = await tg.start(serve, settings)
        peer = BoardPeer(url, token=token(TokenRole.WORKER, "host"))
        await tg.start(peer.start)
        await tg.start(Worker(peer, backend, WorkerSettings()).run)
        async with AsyncClient(url, token=token(TokenRole.CLIENT, "alice")) as alice:
            with anyio.fail_after(20):
                for text in ("my name is Ada", "I like tea", "what is my name?"):
                    await (await alice.submit(text, conversation="c1")).result()
                turns = await alice.conversation("c1")
                listed = await alice.conversations()
        async with AsyncClient(url, token=token(TokenRole.CLIENT, "mallory")) as mallory:
            stolen = await mallory.conversation("c1")
            theirs = await mallory.conversations()
            deleted_by_other = await mallory.delete_conversation("c1")
        async with AsyncClient(url, token=token(TokenRole.CLIENT, "alice")) as alice:
            deleted = await alice.delete_conversation("c1")
            after = await alice.conversation("c1")
        tg.cancel_scope.cancel()
    third = backend.requests[2].messages
    assert third is not None
    assert [(m.role, m.content) for m in third] == [
        ("user", "my name is Ada"), ("assistant", "echo: my name is Ada"),
        ("user", "I like tea"), ("assistant", "echo: I like tea"),
        ("user", "what is my name?"),
    ]
    assert [t.content for t in turns][::2] == ["my name is Ada", "I like tea", "what is my name?"]
    assert [c.conversation for c in listed] == ["c1"] and listed[0].turns == 6
    assert stolen == [] and theirs == [] and deleted_by_other == 0
    assert deleted == 6 and after == []
