"""`kanbanmesh chat`: an interactive terminal chat that continues one conversation."""

from __future__ import annotations

import uuid

import anyio
import click

from client_sdk import AsyncClient
from kanbanmesh.errors import TaskCancelledError, TaskFailedError
from kanbanmesh.settings import Settings


async def chat_async(settings: Settings, conversation: str | None, model: str, max_tokens: int | None) -> None:
    conversation = conversation or f"chat-{uuid.uuid4().hex[:8]}"
    async with AsyncClient(settings.url, settings.board, token=settings.token, owner=settings.owner) as client:
        earlier = await client.conversation(conversation)
        click.echo(f"conversation {conversation} ({len(earlier)} earlier turns); an empty line or "
                   f"Ctrl-D ends it, continue it later with --conversation {conversation}", err=True)
        while True:
            try:
                line = await anyio.to_thread.run_sync(lambda: input("you> "))
            except EOFError:
                break
            if not line.strip():
                break
            params = {"max_tokens": max_tokens} if max_tokens else {}
            task = await client.submit(line, conversation=conversation, model=model, params=params)
            click.echo("mesh> ", nl=False)
            try:
                async for piece in task.stream():
                    click.echo(piece, nl=False)
                await task.result()
            except (TaskFailedError, TaskCancelledError) as exc:
                click.echo(f"\n[{exc}]", err=True)
            click.echo()


def run_chat(settings: Settings, conversation: str | None, model: str, max_tokens: int | None) -> None:
    anyio.run(chat_async, settings, conversation, model, max_tokens)


async def conversations_async(settings: Settings, action: str, conversation: str | None) -> None:
    async with AsyncClient(settings.url, settings.board, token=settings.token, owner=settings.owner) as client:
        if action == "list":
            for summary in await client.conversations():
                click.echo(f"{summary.conversation}\t{summary.turns} turns")
        elif action == "show" and conversation:
            for turn in await client.conversation(conversation):
                click.echo(f"{turn.role}> {turn.content}")
        elif action == "delete" and conversation:
            click.echo(f"deleted {await client.delete_conversation(conversation)} turns")


def run_conversations(settings: Settings, action: str, conversation: str | None) -> None:
    anyio.run(conversations_async, settings, action, conversation)
